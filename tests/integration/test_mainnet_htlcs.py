"""Factory channels with the mainnet profile (its timelocks, on regtest) carry ordinary payments
between factory clients and a plain Core Lightning node that runs no plugin, with CLN's defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.factory.params import FactoryParams
from superscalar.htlc_timing import invoice_final_cltv
from superscalar.cln.node import msat

from .test_factory_plugin import channel_with

pytestmark = pytest.mark.lightningd

BALANCE_SAT, INBOUND_SAT = 50_000, 400_000


def test_plain_node_and_mainnet_factory_pay_each_other(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    plugin = {"plugin": str(plugin_path)}  # the mainnet profile is the default
    lsp = node_factory.get_node(options={**plugin, "superscalar-lsp": "true"})
    clients = node_factory.get_nodes(4, opts={**plugin, "superscalar-join": lsp.info["id"]})
    plain = node_factory.get_node()  # no plugin: CLN's defaults (pyln-testing's cltv-final is 5)
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    # The plain node has an ordinary public channel to the LSP.
    plain.fundwallet(5_000_000)
    lsp.fundwallet(10_000_000)
    plain.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    plain.rpc.fundchannel(lsp.info["id"], 2_000_000, push_msat=500_000_000)
    bitcoind.generate_block(6)
    sync_blockheight(bitcoind, [lsp, plain, *clients])
    scid = channel_with(plain, lsp)["short_channel_id"]

    spec = [{"id": c.info["id"], "balance_sat": BALANCE_SAT, "inbound_sat": INBOUND_SAT} for c in clients]
    lsp.rpc.call("superscalar-create", {"clients": spec})
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, plain, *clients])
    client = clients[2]
    [view] = client.rpc.call("superscalar-list")["factories"]
    [entry] = client.rpc.call("listdatastore", {"key": ["superscalar", "factories", view["factory_id"], "factory"]})["datastore"]
    params = FactoryParams.deserialize(json.loads(entry["string"])["data"]["params"].encode())
    assert params.step_blocks == 144 and params.states_per_layer == 4  # mainnet timelocks
    ewt = view["channels"][0]["early_warning_blocks"]
    assert ewt == params.longest_exit_blocks == 6 + 432 + 12  # static root, then the leaf's kickoff and state
    # Route hints need each side's channel_update, and the client's payment needs the LSP-plain channel
    # in its gossip.
    wait_for(lambda: "remote" in channel_with(client, lsp).get("updates", {}))
    wait_for(lambda: len(client.rpc.listchannels(scid)["channels"]) == 2)

    # The plain node pays the client's invoice, made with no extra argument, within LDK's 1,008-block cap.
    inv = client.rpc.invoice(30_000_000, "from-plain", "from a plain node")["bolt11"]
    decoded = client.rpc.decode(inv)
    assert decoded["min_final_cltv_expiry"] == invoice_final_cltv(ewt, params.confirm_blocks) == 474
    assert view["channels"][0]["invoice_final_cltv"] == 474
    assert [h[0]["pubkey"] for h in decoded["routes"]] == [lsp.info["id"]]  # the factory channel's hint
    res = plain.rpc.call("xpay", {"invstring": inv, "maxdelay": 1008})
    assert res["amount_msat"] == 30_000_000
    wait_for(lambda: not channel_with(client, lsp)["htlcs"])
    assert msat(channel_with(client, lsp)["to_us_msat"]) == (BALANCE_SAT + 30_000) * 1000

    # The client pays the plain node's default invoice with plain xpay: the LSP forwards it although the
    # HTLC has far less CLTV than the client's exit takes (bounded by its short-HTLC exposure options).
    inv = plain.rpc.invoice(12_000_000, "from-client", "from a factory client")["bolt11"]
    res = client.rpc.xpay(inv)
    assert res["amount_msat"] == 12_000_000
    fee = msat(res["amount_sent_msat"]) - 12_000_000
    wait_for(lambda: not channel_with(client, lsp)["htlcs"])
    assert msat(channel_with(client, lsp)["to_us_msat"]) == (BALANCE_SAT + 30_000 - 12_000) * 1000 - fee
