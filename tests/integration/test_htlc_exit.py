"""A client holding the preimage of an HTLC pending in its factory channel, with the LSP gone: its
plugin starts the factory exit an early-warning time plus the commitment/HTLC allowance before the
HTLC expires (not before, and not when lightningd would give up), and the HTLC's amount reaches the
client's wallet with its balance.

What Core Lightning does here (v26.06, observed in this test's logs): our exit puts the leaf on chain
and closes the channel (a unilateral close: the LSP is gone) well before lightningd's own deadline for
the HTLC; onchaind then claims the HTLC with its preimage (OUR_HTLC_SUCCESS_TX) from the confirmed
commitment. With anchor channels that transaction carries no fee of its own: lightningd adds a coin of
the node's wallet to pay it ("We want to bump HTLC fee, but no funds!" otherwise, and after the HTLC's
expiry onchaind gives the output up as THEIR_HTLC_TIMEOUT_TO_THEM). So a client needs an on-chain coin
to enforce an HTLC; this one gets one. At pyln-testing's default feerates lightningd spent 38,183 sat
of a 100,000-sat HTLC on those fees and refused to claim a 10,000-sat one ("Not spending 16500sat in fees
to get an HTLC worth 10000sat!"); the test sets the client's feerates to 1 sat/vB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from .test_factory_plugin import BALANCE_SAT, create_factory

pytestmark = pytest.mark.lightningd

ALLOWANCE = 4  # superscalar-htlc-exit-allowance-blocks for this test
AMOUNT_SAT = 100_000  # lightningd will not spend more in fees than an HTLC is worth
FEES_SAT = 10_000  # upper bound: the HTLC-success fee and the commitment CPFP at the feerates set below


def wallet_sat(node: Any) -> int:
    return sum(o["amount_msat"] // 1000 for o in node.rpc.listfunds()["outputs"] if o["status"] == "confirmed")


def exit_record(node: Any, factory_id: str) -> Any:
    found = node.rpc.listdatastore(["superscalar", "factories", factory_id, "exit"])["datastore"]
    return json.loads(found[0]["string"])["data"] if found else None


def test_client_exits_in_time_for_an_htlc_it_can_claim(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=False)
    # The client drops the connection instead of sending its update_fulfill_htlc, and never reconnects:
    # it knows the preimage, the HTLC stays in its channel, and the LSP never settles it.
    client = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"],
                                            "superscalar-htlc-exit-allowance-blocks": ALLOWANCE},
                                   may_reconnect=False, disconnect=["-WIRE_UPDATE_FULFILL_HTLC"])
    lsp.fundwallet(5_000_000)
    client.fundwallet(200_000)  # pays the fee of the HTLC-success transaction (anchor channels)
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    res = create_factory(lsp, [client], bitcoind)
    fid = res["factory_id"]
    client.set_feerates((1000, 1000, 1000, 1000), False)
    [view] = client.rpc.call("superscalar-list")["factories"]
    ewt = view["channels"][0]["early_warning_blocks"]

    # The LSP pays the client's invoice; its final CLTV leaves room for the exit plus a margin.
    margin = 6
    inv = client.rpc.call("invoice", {"amount_msat": AMOUNT_SAT * 1000, "label": "held", "description": "held",
                                      "cltv": ewt + ALLOWANCE + margin})
    [ch] = lsp.rpc.listpeerchannels(client.info["id"])["channels"]
    route = [{"id": client.info["id"], "channel": ch["alias"]["local"], "amount_msat": AMOUNT_SAT * 1000,
              "delay": ewt + ALLOWANCE + margin}]
    lsp.rpc.sendpay(route, inv["payment_hash"], payment_secret=inv["payment_secret"])
    client.daemon.wait_for_log("dev_disconnect: -WIRE_UPDATE_FULFILL_HTLC")
    lsp.stop()
    [htlc] = client.rpc.listpeerchannels(lsp.info["id"])["channels"][0]["htlcs"]
    assert htlc["direction"] == "in" and htlc["payment_hash"] == inv["payment_hash"]
    assert client.rpc.listinvoices("held")["invoices"][0]["status"] == "paid"  # it holds the preimage
    exit_height = htlc["expiry"] - (ewt + ALLOWANCE)
    before = wallet_sat(client)

    # Up to one block before that height: no exit.
    height = client.rpc.getinfo()["blockheight"]
    assert height < exit_height - 1
    bitcoind.generate_block(exit_height - 1 - height)
    sync_blockheight(bitcoind, [client])
    client.daemon.wait_for_log(f"HTLC watch at height {exit_height - 1}: 1 factory HTLCs pending")
    assert exit_record(client, fid) is None
    assert client.rpc.call("superscalar-list")["factories"][0]["exit_progress"]["status"] == "none"

    # At that height the exit starts, and its record says why.
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [client])
    wait_for(lambda: exit_record(client, fid) is not None)
    [why] = exit_record(client, fid)["reasons"]
    assert why["reason"] == f"htlc {inv['payment_hash']} expires at {htlc['expiry']}"
    assert why["height"] == why["exit_height"] == exit_height
    assert why["early_warning_blocks"] == ewt and why["allowance_blocks"] == ALLOWANCE

    # The path confirms, the channel closes on chain, and onchaind claims the HTLC with its preimage.
    for _ in range(200):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [client])
        if wallet_sat(client) - before >= BALANCE_SAT + AMOUNT_SAT - FEES_SAT and \
                not any(o["status"] != "confirmed" for o in client.rpc.listfunds()["outputs"]):
            break
    gained = wallet_sat(client) - before
    assert BALANCE_SAT + AMOUNT_SAT - FEES_SAT <= gained <= BALANCE_SAT + AMOUNT_SAT, gained
    # The HTLC was claimed on chain with the preimage, and before it expired.
    assert client.daemon.is_in_log("Resolved OUR_UNILATERAL/THEIR_HTLC by our proposal OUR_HTLC_SUCCESS_TX")
    success = client.daemon.is_in_log("Resolved OUR_UNILATERAL/THEIR_HTLC by our proposal OUR_HTLC_SUCCESS_TX")
    assert success
