"""A JIT wallet channel migrates into the client's factory channel (client/migration.py), on real
lightningd and bitcoind (regtest profile): a fresh client gets a JIT channel from the LSP's wallet,
then joins the LSP's next laddered factory, which gives it its JIT balance as extra inbound; its JIT
balance moves into the factory channel by one circular payment and the JIT channel is closed
mutually. Not a msat is lost on the way."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.chain.exits import CLOSING_STATES
from superscalar.cln.node import msat

from .test_close_rollover import no_broken, record, wallet_sat
from .test_lsps2 import plain_payer

pytestmark = pytest.mark.lightningd
RECEIVE_MSAT = 120_000_000
JOIN_INBOUND_SAT = 300_000


def network(node_factory: Any, bitcoind: Any, plugin_path: Path) -> tuple[Any, Any, Any]:
    """(lsp, client, payer): the client runs the plugin and joins the LSP, and has nothing yet; the payer
    is a plain CLN node with an announced channel to the LSP."""
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-ladder": "true",
                                         "superscalar-ladder-interval-blocks": "0", "superscalar-batch-size": "1"},
                                may_reconnect=True)
    client = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True)
    lsp.fundwallet(10_000_000)
    lsp.fundwallet(10_000_000)  # one coin for the JIT channel, one for the factory (its change is unconfirmed)
    payer = plain_payer(node_factory, bitcoind, lsp)
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    return lsp, client, payer


def bought_jit_channel(lsp: Any, client: Any, payer: Any) -> dict[str, Any]:
    """The fresh client's JIT channel, once the plain payer paid its JIT invoice: it holds the payment
    less the opening fee."""
    inv = client.rpc.call("superscalar-jit-invoice", {"lsp_id": lsp.info["id"], "amount_msat": RECEIVE_MSAT,
                                                      "description": "first coins"})
    payer.rpc.xpay(inv["bolt11"])
    wait_for(lambda: [c for c in client.rpc.listpeerchannels()["channels"] if not c["htlcs"]])
    [jit] = client.rpc.listpeerchannels()["channels"]
    assert msat(jit["to_us_msat"]) == RECEIVE_MSAT - inv["opening_fee_msat"]
    return dict(jit)


def joined_ladder(lsp: Any, client: Any, bitcoind: Any) -> tuple[str, str]:
    """The client asks for a place in the LSP's next factory; the batch (one client) is full at the next
    block and the ladder starts it. Its id and the client's leaf outpoint."""
    client.rpc.call("superscalar-join-next", {"id": lsp.info["id"], "inbound_sat": JOIN_INBOUND_SAT})
    bitcoind.generate_block(1)
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 1)
    [fid] = lsp.rpc.call("superscalar-ladder")["started"]
    [leaf] = [ch["funding_outpoint"] for ch in record(lsp, fid)["channels"]]
    return fid, leaf


def logged_moves(client: Any) -> list[tuple[int, int]]:
    """(amount, fee) msat of every completed move, as the client logged it: "moved <amount> msat into
    factory channel <scid> (fee <fee> msat): complete"."""
    client.daemon.logs_catchup()
    moves = [re.search(r"moved (\d+) msat into factory channel \S+ \(fee (\d+) msat\): complete", line)
             for line in client.daemon.logs]
    return [(int(m.group(1)), int(m.group(2))) for m in moves if m]


def test_jit_channel_migrates_into_the_factory(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, client, payer = network(node_factory, bitcoind, plugin_path)
    jit = bought_jit_channel(lsp, client, payer)
    jit_before = msat(jit["to_us_msat"])
    fid, leaf = joined_ladder(lsp, client, bitcoind)
    held_sat = jit_before // 1000

    def channel(node: Any, peer: Any, outpoint: str) -> dict[str, Any]:
        return next(c for c in node.rpc.listpeerchannels(peer.info["id"])["channels"]
                    if f"{c.get('funding_txid')}:{c.get('funding_outnum')}" == outpoint)

    jit_outpoint = f"{jit['funding_txid']}:{jit['funding_outnum']}"
    # The move waits for the factory's funding to confirm; then one payment per block at most, and the
    # JIT channel is closed once nothing worth an HTLC is left in it.
    for _ in range(12):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, client])
        if channel(client, lsp, jit_outpoint)["state"] in CLOSING_STATES:
            break
        wait_for(lambda: not any(c["htlcs"] for c in client.rpc.listpeerchannels()["channels"]))
    assert record(client, fid)["funding"]["status"] == "confirmed"
    closed = channel(client, lsp, jit_outpoint)
    assert closed["state"] in CLOSING_STATES and closed["closer"] == "local"
    left = msat(closed["to_us_msat"])
    factory = channel(client, lsp, leaf)
    # the ladder gave the factory channel the inbound asked for plus the JIT balance, and after the move
    # the client still has at least the inbound it asked for
    assert msat(factory["total_msat"]) == (JOIN_INBOUND_SAT + held_sat) * 1000
    moved = msat(factory["to_us_msat"])
    assert msat(factory["total_msat"]) - moved >= JOIN_INBOUND_SAT * 1000
    moves_msat = logged_moves(client)
    assert moves_msat and sum(a for a, _ in moves_msat) == moved > 0
    fees = sum(f for _, f in moves_msat)
    assert all(f == 1 + a * 10 // 1_000_000 for a, f in moves_msat)  # the LSP's forwarding fee (CLN's default)
    assert left == jit_before - moved - fees and left < 1_000_000 + msat(closed["their_reserve_msat"])
    assert client.daemon.is_in_log(r"balance moved into our factory channel; closed mutually")
    # The JIT channel's mutual close pays the client what was left (the reserve the LSP asked it to keep)
    # and the LSP its side, as wallet coins.
    wallet_before = wallet_sat(client)
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, client])
    wait_for(lambda: wallet_sat(client) - wallet_before == left // 1000)
    [mine] = [o for o in client.rpc.listfunds()["outputs"] if msat(o["amount_msat"]) == left // 1000 * 1000]
    close_tx = bitcoind.rpc.getrawtransaction(mine["txid"], True)
    assert [f"{i['txid']}:{i['vout']}" for i in close_tx["vin"]] == [jit_outpoint]
    lsp_outs = {(o["txid"], o["output"]) for o in lsp.rpc.listfunds()["outputs"]}
    other = [v for v in close_tx["vout"] if v["n"] != mine["output"]]
    assert len(other) == 1 and (mine["txid"], other[0]["n"]) in lsp_outs
    capacity_sat = msat(jit["total_msat"]) // 1000
    close_fee = capacity_sat - sum(int(round(v["value"] * 100_000_000)) for v in close_tx["vout"])
    assert 0 < close_fee < 10_000
    assert [b for b in client.rpc.call("superscalar-jit-list", {})["bought"] if b.get("migrated") == "closed"]
    print(f"JIT channel migrated: {jit_before} msat in it, {moved} msat moved into the factory channel in "
          f"{len(moves_msat)} payment(s), {fees} msat forwarding fee, {left} msat left and paid on chain "
          f"({left // 1000} sat) by the mutual close, which paid the LSP {int(round(other[0]['value'] * 100_000_000))} sat "
          f"(closing fee {close_fee} sat, paid by the LSP as opener)")
    no_broken([lsp, client, payer])



def test_rollover_gives_jit_balance_inbound_then_migrates(node_factory: Any, bitcoind: Any,
                                                           plugin_path: Path) -> None:
    """A factory client whose L-stock cannot fund its JIT channel gets one from the LSP's wallet; at the
    rollover its channel in the next factory is its old capacity plus that JIT balance, and once the
    rollover's close confirmed the balance moves in and the JIT channel is closed."""
    from .test_close_rollover import mine_until
    from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, create_factory

    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    client = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True)
    for _ in range(2):
        lsp.fundwallet(10_000_000)
    payer = plain_payer(node_factory, bitcoind, lsp)
    sync_blockheight(bitcoind, [lsp, client, payer])
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    res = create_factory(lsp, [client], bitcoind)
    fid = res["factory_id"]
    [leaf] = [ch["funding_outpoint"] for ch in res["channels"]]
    # 60,000 sat: the JIT channel (payment + 1 % + 50,000 sat) is more than the leaf's 100,000-sat L-stock
    inv = client.rpc.call("superscalar-jit-invoice", {"lsp_id": lsp.info["id"], "amount_msat": 60_000_000,
                                                      "description": "bigger than the L-stock"})
    payer.rpc.xpay(inv["bolt11"])
    wait_for(lambda: not any(c["htlcs"] for c in client.rpc.listpeerchannels()["channels"]))
    assert "sales" not in record(lsp, fid) or not record(lsp, fid)["sales"]  # from the wallet
    [jit] = [c for c in client.rpc.listpeerchannels()["channels"] if f"{c['funding_txid']}:{c['funding_outnum']}" != leaf]
    held = msat(jit["to_us_msat"])
    assert held == 60_000_000 - inv["opening_fee_msat"]
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, client])
    a_balance = next(msat(c["to_us_msat"]) for c in client.rpc.listpeerchannels()["channels"]
                     if f"{c['funding_txid']}:{c['funding_outnum']}" == leaf)

    out = lsp.rpc.call("superscalar-rollover", {"factory_id": fid})
    nxt = out["next_factory"]
    [b_leaf] = [ch["funding_outpoint"] for ch in record(lsp, nxt)["channels"]]
    [b] = [c for c in client.rpc.listpeerchannels()["channels"] if f"{c['funding_txid']}:{c['funding_outnum']}" == b_leaf]
    assert msat(b["total_msat"]) == (BALANCE_SAT + INBOUND_SAT + held // 1000) * 1000
    assert msat(b["to_us_msat"]) == a_balance
    nodes = [lsp, client]
    mine_until(bitcoind, nodes, lambda: record(client, fid)["close"]["status"] == "confirmed"
               and not record(client, nxt).get("frozen"))
    jit_outpoint = f"{jit['funding_txid']}:{jit['funding_outnum']}"

    def jit_state() -> str:
        return str(next(c["state"] for c in client.rpc.listpeerchannels()["channels"]
                        if f"{c['funding_txid']}:{c['funding_outnum']}" == jit_outpoint))
    mine_until(bitcoind, nodes, lambda: jit_state() in CLOSING_STATES or jit_state() == "CLOSED")
    [b] = [c for c in client.rpc.listpeerchannels()["channels"] if f"{c['funding_txid']}:{c['funding_outnum']}" == b_leaf]
    moved = msat(b["to_us_msat"]) - a_balance
    assert 0 < moved <= held and msat(b["total_msat"]) - msat(b["to_us_msat"]) >= INBOUND_SAT * 1000 - a_balance + \
        BALANCE_SAT * 1000
    print(f"rollover with a JIT channel: next channel {msat(b['total_msat']) // 1000} sat "
          f"({BALANCE_SAT + INBOUND_SAT} + {held // 1000} of JIT balance), carried {a_balance} msat, then "
          f"{moved} msat moved in from the JIT channel of {held} msat; inbound left {msat(b['total_msat']) - msat(b['to_us_msat'])} msat")
    no_broken([lsp, client, payer])


def test_lsp_refusing_migration_loses_nothing(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """An LSP that will not forward the client's circular payment: every move fails on both hops, the JIT
    channel stays open with the client's whole balance in it, and the move goes through once the LSP
    forwards again."""
    lsp, client, payer = network(node_factory, bitcoind, plugin_path)
    jit = bought_jit_channel(lsp, client, payer)
    jit_before = msat(jit["to_us_msat"])
    jit_outpoint = f"{jit['funding_txid']}:{jit['funding_outnum']}"
    refuser = str(Path(__file__).parent / "refuse_forwards_plugin.py")
    lsp.rpc.plugin_start(refuser)
    fid, leaf = joined_ladder(lsp, client, bitcoind)

    def channel(outpoint: str) -> dict[str, Any]:
        return next(c for c in client.rpc.listpeerchannels(lsp.info["id"])["channels"]
                    if f"{c.get('funding_txid')}:{c.get('funding_outnum')}" == outpoint)

    def quiet() -> None:
        sync_blockheight(bitcoind, [lsp, client])
        wait_for(lambda: not any(c["htlcs"] for c in client.rpc.listpeerchannels()["channels"]))

    refused = 0
    for _ in range(12):  # the factory's funding confirms, then a move is tried on every block
        bitcoind.generate_block(1)
        quiet()
        lsp.daemon.logs_catchup()
        refused = len([line for line in lsp.daemon.logs if "refusing to forward" in line])
        if refused >= 3:
            break
    assert record(client, fid)["funding"]["status"] == "confirmed"
    assert refused >= 3, "the client never tried to move its JIT balance"
    wait_for(lambda: client.daemon.is_in_log(r"JIT channel \S+: moved \d+ msat into factory channel \S+ \(fee \d+ msat\): failed")
             or client.daemon.is_in_log(r"JIT channel \S+: migration: "))
    # Every refused move failed on both hops: the balance is where it was, nothing is in flight.
    assert channel(jit_outpoint)["state"] == "CHANNELD_NORMAL"
    assert msat(channel(jit_outpoint)["to_us_msat"]) == jit_before
    assert msat(channel(leaf)["to_us_msat"]) == 0
    assert not [b for b in client.rpc.call("superscalar-jit-list", {})["bought"] if b.get("migrated")]

    lsp.rpc.plugin_stop(refuser)  # the LSP forwards again: the next block's move goes through
    for _ in range(8):
        bitcoind.generate_block(1)
        quiet()
        if channel(jit_outpoint)["state"] in CLOSING_STATES:
            break
    closed, factory = channel(jit_outpoint), channel(leaf)
    assert closed["state"] in CLOSING_STATES
    moves_msat = logged_moves(client)
    moved, fees = sum(a for a, _ in moves_msat), sum(f for _, f in moves_msat)
    assert moved == msat(factory["to_us_msat"]) > 0
    assert msat(closed["to_us_msat"]) == jit_before - moved - fees
    print(f"LSP refused {refused} forwards of the migration; balance kept in the JIT channel ({jit_before} msat); "
          f"then {moved} msat moved in {len(moves_msat)} payment(s), {fees} msat fee, "
          f"{msat(closed['to_us_msat'])} msat left for the close")
    no_broken([lsp, client, payer])
