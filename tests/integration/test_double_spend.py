"""A signer never signs two different spends of one output (factory/spends.py), on real lightningd and
bitcoind (regtest profile): an LSP that keeps a fully signed sale to itself cannot get another sale of
the same L-stock signed; an honest LSP whose sale round failed after a client had signed signs that
same sale again before the next; a client withholding its partial signature of a close freezes the
others only until their bound, then they exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.client import RpcError
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx
from superscalar.chain.exits import CLOSING_STATES
from superscalar.client.policy import ClientPolicy
from superscalar.factory.params import FactoryParams
from superscalar.factory.spends import LEDGER_KEY

from .test_close_rollover import (channels_in, mine_until, network as close_network, no_broken, pay_msat, payments,
                                  record)
from .test_factory_plugin import create_factory
from .test_lsps_sale import network, sell, spendable_msat

pytestmark = pytest.mark.lightningd


def signed_of(node: Any, fid: str, kind: str) -> list[str]:
    """The txids of spends of `kind` in the node's ledger for factory `fid`."""
    return [kinds[kind]["txid"] for kinds in record(node, fid).get(LEDGER_KEY, {}).values() if kind in kinds]


def normal_again(lsp: Any, clients: list[Any]) -> None:
    for c in clients:
        wait_for(lambda: bool(c.rpc.connect(lsp.info["id"], "localhost", lsp.port)))
    try:  # (a channel that was closed, e.g. one that no signed sale backs, stays listed as closing)
        wait_for(lambda: all(ch["peer_connected"] and ch["state"] == "CHANNELD_NORMAL" for c in clients
                             for ch in channels_in(lsp, c) if ch["state"] not in CLOSING_STATES))
    except ValueError:
        print("channels:", [(ch["state"], ch["peer_connected"], ch.get("funding_txid"))
                            for c in clients for ch in channels_in(lsp, c)])
        raise


def test_withheld_sale_blocks_a_second_sale(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The LSP collects every partial signature of sale S1, keeps it (nothing stored, no final signature
    sent) and drops the clients; then it proposes S2 on the same L-stock, without S1. Both clients refuse:
    S2's channel could never hold money that the LSP then takes by publishing S1."""
    lsp, clients = network(node_factory, plugin_path, 2, lsp_fail="lsp-sale-withhold")
    buyer, mate = clients
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    with pytest.raises(RpcError, match="sale round failed"):
        sell(lsp, fid, buyer, 40_000)
    assert lsp.daemon.is_in_log("dev: withholding signed sale")
    # Each client entered S1 in its ledger before its partial signature went out; none holds S1 signed.
    withheld = {txid for c in clients for txid in signed_of(c, fid, "sale")}
    assert len(withheld) == 1 and all("sales" not in record(c, fid) for c in clients)
    normal_again(lsp, clients)

    with pytest.raises(RpcError, match=f"already signed {withheld.pop()}"):
        sell(lsp, fid, buyer, 30_000)
    for c in clients:
        assert "sales" not in record(c, fid)
        assert c.daemon.is_in_log("proposal refused: we already signed")
    # S2's open was cancelled; S1's channel, completed before anyone signed and backed by no sale the
    # LSP admits to, was closed
    wait_for(lambda: len([ch for ch in channels_in(lsp, buyer) if ch["state"] not in CLOSING_STATES]) == 1)
    assert len([ch for ch in channels_in(buyer, lsp) if ch["state"] not in CLOSING_STATES]) == 1
    no_broken([lsp, *clients])


def test_failed_sale_is_signed_again_then_chained(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The leaf-mate drops the connection instead of signing S1 (the buyer had signed): the LSP keeps S1
    as unfinished with the buyer's channel (completed before anyone signed), and the next sale first gets
    S1 signed again, unchanged, which backs that channel, then S2 chained off its output 1; the buyer's
    new channels carry a payment larger than its leaf channel's inbound."""
    lsp, clients = network(node_factory, plugin_path, 2, mate_fail="sale-aggnonces-disconnect")
    buyer, mate = clients
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    with pytest.raises(RpcError, match="sale round failed"):
        sell(lsp, fid, buyer, 40_000)
    unfinished = record(lsp, fid)["unfinished_sales"]
    [(leaf, pending)] = unfinished.items()
    s1 = Tx.from_hex(pending["tx"])
    assert signed_of(buyer, fid, "sale") == [s1.txid]
    normal_again(lsp, clients)

    second = sell(lsp, fid, buyer, 30_000)
    sales = record(lsp, fid)["sales"]
    assert [s["txid"] for s in sales] == [s1.txid, second["sale_txid"]]
    assert sales[0]["status"] == "open" and sales[1]["status"] == "open"
    assert sales[0]["channel_id"] == pending["channel_id"]
    assert record(lsp, fid)["unfinished_sales"] == {}
    chained = Tx.from_hex(sales[1]["tx"])
    assert chained.inputs[0].prevout.txid_hex == s1.txid and chained.inputs[0].prevout.vout == 1
    assert second["lstock_before_sat"] == params.lstock_sat - 40_000 - params.anchor_sat - sales[0]["fee_sat"]
    for c in clients:
        assert [s["txid"] for s in record(c, fid)["sales"]] == [s1.txid, second["sale_txid"]]
        assert [s["mine"] for s in record(c, fid)["sales"]] == [c is buyer, c is buyer]
    wait_for(lambda: channels_in(buyer, lsp, second["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL")
    assert len(channels_in(buyer, lsp)) == 3
    leaf = next(ch["funding_outpoint"] for ch in res["channels"] if ch["peer_id"] == buyer.info["id"])
    pay_msat(lsp, buyer, spendable_msat(lsp, buyer, leaf) + 20_000_000, "through-the-sales")  # beyond the leaf
    no_broken([lsp, *clients])


def withholding_network(node_factory: Any, bitcoind: Any, plugin_path: Path) -> tuple[Any, list[Any], str]:
    """An LSP and three clients in a factory with payments made; client 2 withholds its partial
    signature of any close."""
    lsp, clients = close_network(node_factory, plugin_path, 3, {3: "client-close-withhold"})
    fid = create_factory(lsp, clients, bitcoind)["factory_id"]
    payments(lsp, clients)
    return lsp, clients, fid


def test_withheld_close_signature_freezes_boundedly(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """Client 2 sends its nonce but never its partial signature of the close: nobody can hold the close.
    Clients 0 and 1 signed, so they stay frozen (the LSP could be lying about the failure), for at most
    max_close_wait_blocks: then each starts its own exit, the tree spends the funding output, and their
    channels are backed by the tree again (unfrozen)."""
    lsp, clients, fid = withholding_network(node_factory, bitcoind, plugin_path)
    nodes = [lsp, *clients]
    with pytest.raises(RpcError):
        lsp.rpc.call("superscalar-close", {"factory_id": fid})
    honest, withholder = clients[:2], clients[2]
    for c in honest:
        freeze = record(c, fid)["frozen"]
        assert freeze["partial_signed"] and "close" not in record(c, fid)
        assert signed_of(c, fid, "close") == [freeze["close_txid"]]
    wait_for(lambda: not record(withholder, fid).get("frozen"))
    # (each client counts from the height its own lightningd had when it signed: they may differ by one)
    signed = {c.info["id"]: int(record(c, fid)["frozen"]["partial_signed_height"]) for c in honest}
    bound = ClientPolicy.for_profile("regtest").max_close_wait_blocks
    height = bitcoind.rpc.getblockcount()
    if height < min(signed.values()) + bound - 1:
        bitcoind.generate_block(min(signed.values()) + bound - 1 - height)
        sync_blockheight(bitcoind, nodes)
    assert all(record(c, fid)["frozen"].get("exit_started_height") is None for c in honest)
    txid, vout = record(lsp, fid)["funding_outpoint"].split(":")
    mine_until(bitcoind, nodes, lambda: bitcoind.rpc.gettxout(txid, int(vout)) is None, blocks=12)
    for c in honest:
        assert c.daemon.is_in_log("nobody completed in .* blocks: starting our exit")
        started = int(record(c, fid).get("frozen", {}).get("exit_started_height") or 0) or None
        assert started is None or started >= signed[c.info["id"]] + bound
    # The tree spent the funding output: the close can never confirm; the honest clients are unfrozen.
    mine_until(bitcoind, nodes, lambda: all(not record(c, fid).get("frozen") for c in honest), blocks=6)
    for c in honest:
        assert record(c, fid)["close"]["status"] == "conflicted"
    no_broken(nodes)


def test_failed_close_is_signed_again_unchanged(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """Client 2 drops the connection instead of signing the close, after clients 0 and 1 signed: the
    LSP keeps that close (the factory stays frozen) and the next superscalar-close proposes it unchanged;
    the clients that signed sign it again, client 2 signs it, it confirms, and nobody had to exit."""
    lsp, clients = close_network(node_factory, plugin_path, 3, {3: "client-close-aggnonces-disconnect"})
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    payments(lsp, clients)
    with pytest.raises(RpcError, match="the factory stays frozen"):
        lsp.rpc.call("superscalar-close", {"factory_id": fid})
    unfinished = record(lsp, fid)["unfinished_close"]
    assert record(lsp, fid)["frozen"]
    for c in clients[:2]:
        assert signed_of(c, fid, "close") == [Tx.from_hex(unfinished["tx"]).txid]
    clients[2].rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: all(ch["peer_connected"] for c in clients for ch in channels_in(lsp, c)))
    out = lsp.rpc.call("superscalar-close", {"factory_id": fid})
    assert out["close_txid"] == Tx.from_hex(unfinished["tx"]).txid
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    assert all(not c.daemon.is_in_log("starting our exit") for c in clients)
    assert "unfinished_close" not in record(lsp, fid)
    no_broken(nodes)


def failing_buyer(node_factory: Any, bitcoind: Any, plugin_path: Path, fail: str) -> tuple[Any, list[Any], dict[str, Any]]:
    """An LSP and two clients in a factory; the first (the buyer) misbehaves at `fail`."""
    lsp, clients = network(node_factory, plugin_path, 2)
    clients[0].daemon.opts["superscalar-dev-fail-at"] = fail
    clients[0].restart()
    clients[0].rpc.connect(lsp.info["id"], "localhost", lsp.port)
    return lsp, clients, create_factory(lsp, clients, bitcoind)


def test_buyer_dropping_after_done_keeps_its_channel(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The buyer drops the connection right after its Done: its channel was completed before anyone
    signed, so the sale is open on it and nothing is lost; back online, the channel carries a payment."""
    lsp, clients, res = failing_buyer(node_factory, bitcoind, plugin_path, "sale-done-disconnect")
    buyer, mate = clients
    fid = res["factory_id"]
    out = sell(lsp, fid, buyer, 90_000)
    [sale] = record(lsp, fid)["sales"]
    assert sale["status"] == "open" and sale["channel_id"] == out["channel_id"]
    normal_again(lsp, clients)
    wait_for(lambda: channels_in(buyer, lsp, out["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL")
    leaf = next(ch["funding_outpoint"] for ch in res["channels"] if ch["peer_id"] == buyer.info["id"])
    pay_msat(lsp, buyer, spendable_msat(lsp, buyer, leaf) + 20_000_000, "after-the-drop")  # beyond the leaf
    no_broken([lsp, *clients])


def test_buyer_dropping_before_signing_costs_nothing(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The buyer drops the connection instead of sending its nonce, after the LSP started its channel:
    the round fails before the channel is completed and before the aggregate nonces, so nobody signed
    anything (no ledger entry, no sale kept), the open is cancelled, and the next sale to it succeeds on
    the same L-stock."""
    lsp, clients, res = failing_buyer(node_factory, bitcoind, plugin_path, "sale-nonces-disconnect")
    buyer, mate = clients
    fid = res["factory_id"]
    with pytest.raises(RpcError):
        sell(lsp, fid, buyer, 30_000)
    rec = record(lsp, fid)
    assert not rec.get("sales") and not rec.get("unfinished_sales") and not rec.get("opening_sales")
    for n in [lsp, *clients]:
        assert signed_of(n, fid, "sale") == []
    normal_again(lsp, clients)
    wait_for(lambda: len([c for c in channels_in(lsp, buyer) if c["state"] == "CHANNELD_NORMAL"]) == 1)
    out = sell(lsp, fid, buyer, 30_000)
    assert out["lstock_before_sat"] == FactoryParams.deserialize(rec["params"].encode()).lstock_sat
    no_broken([lsp, *clients])

def test_withheld_rollover_close_stops_rollovers(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """Client 2 withholds its partial signature of a rollover's close after clients 0 and 1 signed it.
    They refuse any other close of the factory, so the LSP records the close as abandoned and tries no
    other rollover or close (each would complete channels of a next factory that stay behind for good):
    a second superscalar-rollover is refused before anything is opened. The clients that signed exit
    after their bound."""
    lsp, clients, fid = withholding_network(node_factory, bitcoind, plugin_path)
    nodes = [lsp, *clients]
    with pytest.raises(RpcError):
        lsp.rpc.call("superscalar-rollover", {"factory_id": fid})
    abandoned = record(lsp, fid)["abandoned_close"]
    for c in clients[:2]:
        assert signed_of(c, fid, "close") == [abandoned["txid"]]
    wait_for(lambda: not record(lsp, fid).get("frozen"))
    channels_before = len(lsp.rpc.listpeerchannels()["channels"])
    with pytest.raises(RpcError, match="would refuse any other close"):
        lsp.rpc.call("superscalar-rollover", {"factory_id": fid})
    with pytest.raises(RpcError, match="would refuse any other close"):
        lsp.rpc.call("superscalar-close", {"factory_id": fid})
    assert len(lsp.rpc.listpeerchannels()["channels"]) == channels_before
    signed_at = max(int(record(c, fid)["frozen"]["partial_signed_height"]) for c in clients[:2])
    bound = ClientPolicy.for_profile("regtest").max_close_wait_blocks
    height = bitcoind.rpc.getblockcount()
    if height < signed_at + bound:
        bitcoind.generate_block(signed_at + bound - height)
        sync_blockheight(bitcoind, nodes)
    for c in clients[:2]:
        c.daemon.wait_for_log("nobody completed in .* blocks: starting our exit")
    no_broken(nodes)
