"""A client pays a plain payee through its LSP: the payee's invoice gives a few blocks of final CLTV,
so the HTLC the LSP receives from the client's factory channel has less headroom than the channel's
early-warning time. The LSP takes such HTLCs within `superscalar-lsp-short-htlc-max-msat-per-client`
and fails them above it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.client import RpcError
from pyln.testing.utils import wait_for

from superscalar.cln.node import msat

from .test_factory_plugin import channel_with, create_factory, start_network

pytestmark = pytest.mark.lightningd

PER_CLIENT_MSAT = 15_000_000
FINAL_CLTV = 5


def invoice(payee: Any, amount_sat: int, label: str) -> str:
    wait_for(lambda: all("remote" in c.get("updates", {}) for c in payee.rpc.listpeerchannels()["channels"]))
    return str(payee.rpc.call("invoice", {
        "amount_msat": amount_sat * 1000, "label": label, "description": label, "cltv": FINAL_CLTV,
        "exposeprivatechannels": [c.get("short_channel_id") or c["alias"]["local"]
                                  for c in payee.rpc.listpeerchannels()["channels"]]})["bolt11"])


def settled(lsp: Any, payer: Any, balance: int) -> None:
    """xpay returns once it has the preimage; both sides' commitments settle a moment later."""
    wait_for(lambda: channel_with(lsp, payer)["htlcs"] == [] and channel_with(payer, lsp)["htlcs"] == []
             and msat(channel_with(payer, lsp)["to_us_msat"]) == balance)


def test_lsp_carries_short_htlcs_within_its_bound(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    # Mainnet timelocks (EWT 450 blocks): CLN's cltv-delta and a 5-block final CLTV are far below it.
    lsp, clients = start_network(node_factory, plugin_path, 3, profile="mainnet")
    lsp.stop()
    lsp.daemon.opts["superscalar-lsp-short-htlc-max-msat-per-client"] = str(PER_CLIENT_MSAT)
    lsp.start()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    create_factory(lsp, clients, bitcoind)
    payee = node_factory.get_node()  # a plain node, no plugin
    lsp.rpc.connect(payee.info["id"], "localhost", payee.port)
    lsp.rpc.fundchannel(payee.info["id"], 1_000_000, announce=False)
    bitcoind.generate_block(6)
    wait_for(lambda: channel_with(lsp, payee)["state"] == "CHANNELD_NORMAL")
    payer = clients[0]

    # The HTLC the LSP gets from the client is far below the channel's early-warning time.
    ewt = lsp.rpc.call("superscalar-list")["factories"][0]["channels"][0]["early_warning_blocks"]
    delta = lsp.rpc.listconfigs("cltv-delta")["configs"]["cltv-delta"]["value_int"]
    assert FINAL_CLTV + delta < ewt, (FINAL_CLTV, delta, ewt)

    # Within the bound: paid (twice: the first one no longer counts once it settled).
    balance = msat(channel_with(payer, lsp)["to_us_msat"])
    for i in range(2):
        res = payer.rpc.xpay(invoice(payee, 10_000, f"short-{i}"))
        assert res["amount_msat"] == 10_000_000
        balance -= msat(res["amount_sent_msat"])
        settled(lsp, payer, balance)
    # Above it: failed by the LSP, nothing moves.
    with pytest.raises(RpcError):
        payer.rpc.xpay(invoice(payee, 20_000, "too-much"))
    lsp.daemon.wait_for_log("superscalar-lsp-short-htlc-max-msat-per-client=15000000")
    settled(lsp, payer, balance)
