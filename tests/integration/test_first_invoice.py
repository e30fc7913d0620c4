"""A factory client's first invoices, made the moment its factory exists, are paid by a plain node with
a channel to the LSP: the invoice carries a route hint through the LSP whether or not the client knows
the LSP from gossip yet (lightningd leaves out hints through peers it cannot place in the graph)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyln.testing.utils import sync_blockheight, wait_for
from superscalar.cln.node import msat

from .test_close_rollover import channels_in, no_broken
from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, start_network

pytestmark = pytest.mark.lightningd

ANNOUNCE_DEPTH = 6  # BOLT-7: a channel is announced once its funding has 6 confirmations
FUNDING_CONFIRMS = 3  # lightningd's default minimum depth


def unannounced_payer(node_factory: Any, bitcoind: Any, lsp: Any) -> Any:
    """A plain CLN node (no plugin) with a normal 5,000,000-sat channel to `lsp`, to be announced but
    not yet deep enough for it: for now nobody but the two of them can place the LSP in the graph."""
    payer = node_factory.get_node(may_reconnect=True)
    payer.fundwallet(10_000_000)
    payer.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    payer.rpc.fundchannel(lsp.info["id"], 5_000_000)
    bitcoind.generate_block(FUNDING_CONFIRMS)
    wait_for(lambda: all(c["state"] == "CHANNELD_NORMAL" for c in payer.rpc.listpeerchannels()["channels"]))
    return payer


def new_factory(lsp: Any, clients: list[Any], bitcoind: Any, nodes: list[Any]) -> None:
    """superscalar-create with `clients` (one more factory of `lsp`), its funding confirmed, every
    client's leaf channel normal on its side. Nothing waits for gossip or the LSP's channel_update."""
    sync_blockheight(bitcoind, nodes)  # a client counts its funding deadline from its own height
    spec = [{"id": c.info["id"], "balance_sat": BALANCE_SAT, "inbound_sat": INBOUND_SAT} for c in clients]
    res = lsp.rpc.call("superscalar-create", {"clients": spec})
    bitcoind.generate_block(1, wait_for_mempool=res["funding_txid"])
    sync_blockheight(bitcoind, nodes)
    for c in clients:
        wait_for(lambda: [ch["state"] for ch in channels_in(c, lsp)] == ["CHANNELD_NORMAL"])


def knows_lsp(client: Any, lsp: Any) -> bool:
    """Has `client` learnt of a public channel of `lsp` from gossip?"""
    return bool(client.rpc.listchannels(source=lsp.info["id"])["channels"])


def balance(client: Any, lsp: Any) -> int:
    return sum(msat(c["to_us_msat"]) for c in channels_in(client, lsp))


def test_first_invoice_is_paid_whatever_the_gossip(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """Three factories of two fresh clients each: the first made while the LSP's only public channel is
    not announced yet (no client can know it from gossip), two more right after it is. Each client
    invoices at once, twice; the plain node pays every invoice with xpay, and the client's balance grows
    by the amount, to the msat. Every invoice carries the hint: the LSP, the alias it gave the channel."""
    lsp, first = start_network(node_factory, plugin_path, 2)
    payer = unannounced_payer(node_factory, bitcoind, lsp)
    rounds, paid, unknown, hinted = [first], 0, 0, 0
    for k in range(3):
        clients = rounds[-1]
        new_factory(lsp, clients, bitcoind, [lsp, payer, *clients])
        if k == 0:
            assert not any(knows_lsp(c, lsp) for c in clients)
        for i in range(2):
            for j, c in enumerate(clients):
                amount = 3_000_000 + 1_111 * (2 * j + i) + 7 * k
                unknown += not knows_lsp(c, lsp)
                inv = c.rpc.call("invoice", {"amount_msat": amount, "label": f"first-{k}-{j}-{i}",
                                             "description": "my first sats"})
                [[hint]] = payer.rpc.decode(inv["bolt11"])["routes"]
                [ch] = channels_in(c, lsp)
                assert hint["pubkey"] == lsp.info["id"] and hint["short_channel_id"] == ch["alias"]["remote"]
                before = balance(c, lsp)
                res = payer.rpc.xpay(inv["bolt11"])
                assert msat(res["amount_msat"]) == amount
                wait_for(lambda: not any(ch["htlcs"] for ch in channels_in(c, lsp)))
                assert balance(c, lsp) == before + amount
                paid += 1
                ours = c.daemon.is_in_log(f"invoice first-{k}-{j}-{i}: lightningd gave it no route hint")
                assert ours or k > 0  # lightningd could not place the LSP in the graph: the hint is the plugin's
                hinted += bool(ours)
        if k == 0:  # the LSP's channel with the payer is announced from here on
            bitcoind.generate_block(ANNOUNCE_DEPTH - FUNDING_CONFIRMS)
        if k < 2:
            rounds.append(node_factory.get_nodes(2, opts={"may_reconnect": True, "plugin": str(plugin_path),
                                                          "superscalar-profile": "regtest",
                                                          "superscalar-join": lsp.info["id"]}))
            for c in rounds[-1]:
                c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    print(f"{paid} first invoices paid, {unknown} made by a client that did not know the LSP from gossip, "
          f"{hinted} hinted by the plugin (lightningd gave none)")
    assert paid == 12 and unknown >= 4
    no_broken([lsp, payer, *(c for r in rounds for c in r)])
