"""A factory's phases and deadlines (factory/lifecycle.py), the LSP's sweeps signed with its key, the
per-block view every step shares (chain/blocks.py) and what `superscalar-list` shows of a life."""

from __future__ import annotations

import pytest

from superscalar.crypto.bip340 import schnorr_verify
from superscalar.bitcoin.encoding import ser_compact_size
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.chain.blocks import Blocks, BlockView
from superscalar.chain.lifecycle import describe_life, facts_of, new_record
from superscalar.factory.errors import FactoryError
from superscalar.factory.graph import lstock_sweep, timeout_sweep
from superscalar.factory.lifecycle import (Facts, Phase, client_online_deadline, dying_warning_interval,
                                           exit_start_height, next_phase, phase, sign_script_spend, timeline)
from superscalar.factory.params import FactoryParams, regtest_params

from ...factory_kit import make_kit

P = regtest_params(4, 100)  # expiry 130, distribution 140, timeouts: depth 1 at 145, depth 0 at 148


def test_phase_follows_the_heights_while_nothing_happened() -> None:
    assert (P.expiry_height, P.distribution_height, P.timeout(1), P.timeout(0)) == (130, 140, 145, 148)
    nothing = Facts()
    assert phase(P, 100, nothing) == Phase.ACTIVE
    assert phase(P, 129, nothing) == Phase.ACTIVE
    assert phase(P, 130, nothing) == Phase.DYING
    assert phase(P, 139, nothing) == Phase.DYING
    assert phase(P, 140, nothing) == Phase.DISTRIBUTING
    assert phase(P, 10_000, nothing) == Phase.DISTRIBUTING
    assert next_phase(P, 100, Phase.ACTIVE) == (Phase.DYING, 130)
    assert next_phase(P, 131, Phase.DYING) == (Phase.DISTRIBUTING, 140)
    assert next_phase(P, 140, Phase.DISTRIBUTING) is None


@pytest.mark.parametrize("facts,height,expected", [
    (Facts(close_status="signed"), 120, Phase.CLOSING),
    (Facts(close_status="broadcast"), 135, Phase.CLOSING),
    (Facts(close_status="broadcast"), 141, Phase.CLOSING),  # a close beats the distribution once it confirms
    (Facts(close_status="confirmed"), 120, Phase.CLOSED),
    (Facts(distribution_confirmed_height=141), 141, Phase.DISTRIBUTED),
    (Facts(tree_confirmed_height=110), 110, Phase.EXITING),
    (Facts(exit_recorded=True), 105, Phase.EXITING),
    (Facts(close_status="signed", exit_recorded=True), 120, Phase.EXITING),  # a tree tx beats an unconfirmed close
    (Facts(close_status="confirmed", exit_recorded=True), 120, Phase.CLOSED),  # the close won: the exit conflicted
    (Facts(distribution_confirmed_height=141, exit_recorded=True), 150, Phase.DISTRIBUTED),
])
def test_phase_reads_the_recorded_facts_first(facts: Facts, height: int, expected: Phase) -> None:
    assert phase(P, height, facts) == expected


def test_client_must_be_online_before_distribution_then_before_timeout() -> None:
    ewt = 9  # static root, the leaf's kickoff and state (wait 6), one block each
    assert client_online_deadline(P, ewt, tree_on_chain=False) == 139
    assert client_online_deadline(P, ewt, tree_on_chain=True) == 145 - 9
    assert exit_start_height(P, ewt) == 145 - 9 - 2
    assert timeline(P) == {"expiry_height": 130, "distribution_height": 140, "timeout_heights": {"0": 148, "1": 145}}
    assert dying_warning_interval(P) == 1
    assert dying_warning_interval(FactoryParams(n_clients=4, start_height=0)) == 36  # mainnet: 432 / 12


def test_sweeps_are_signed_by_the_lsp_key_only() -> None:
    kit = make_kit(regtest_params(4, 100))
    f = kit.factory
    graph = f.graph(OutPoint(bytes(range(32)), 0))
    dest = f.scripts.lsp_payout
    lsp_xonly = f.keys.lsp_xonly
    leaf = f.topology.leaf_of_client[0]
    lstock = lstock_sweep(f, leaf, *graph.lstock(leaf), dest)
    for spend, locktime, sequence in ((timeout_sweep(graph, leaf, dest), f.params.timeout(1), 0xFFFFFFFE),
                                      (lstock, 0, f.params.lstock_csv_blocks)):
        tx = sign_script_spend(spend, kit.seckeys[0], bytes(32))
        sig, script, control = tx.inputs[0].witness
        assert schnorr_verify(spend.sighash, lsp_xonly, sig)
        assert script == spend.leaf.script and control[1:33] == spend.taproot.internal_key
        assert tx.locktime == locktime and tx.inputs[0].sequence == sequence
        assert tx.outputs == (TxOut(spend.prevout.value - f.params.fee(tx.vsize), dest),)
        assert tx.txid == spend.tx.txid  # signing adds only the witness
        with pytest.raises(FactoryError, match="not the one the sweep's leaf names"):
            sign_script_spend(spend, kit.seckeys[1], bytes(32))  # a client's key


def _block(txs: list[Tx]) -> bytes:
    return bytes(80) + ser_compact_size(len(txs)) + b"".join(t.serialize() for t in txs)


def test_a_block_is_fetched_and_parsed_once_for_every_step() -> None:
    a = Tx(2, (TxIn(OutPoint(bytes([1]) * 32, 3)),), (TxOut(1000, b"\x51"),))
    b = Tx(2, (TxIn(a.outpoint(0)), TxIn(OutPoint(bytes([2]) * 32, 0))), (TxOut(900, b"\x51"),))
    raw = {7: _block([a, b]).hex(), 8: _block([b]).hex()}
    calls: list[int] = []
    blocks = Blocks(lambda h: calls.append(h) or raw[h], keep=4)
    view = blocks.at(7)
    assert isinstance(view, BlockView) and set(view.by_txid) == {a.txid, b.txid}
    assert view.spent == {f"{'01' * 32}:3": a.txid, f"{a.txid}:0": b.txid, f"{'02' * 32}:0": b.txid}
    assert blocks.at(7) is view and blocks.transactions(7) == (a, b) and calls == [7]
    blocks.at(8)
    blocks.new_tip(8)  # a block arrived at 8 again (a reorganisation): fetched anew, 7 is kept
    blocks.at(8)
    blocks.at(7)
    assert calls == [7, 8, 8]


def test_list_shows_phase_heights_and_online_deadline() -> None:
    rec = {"role": "client", "params": P.serialize().decode(), "early_warning_blocks": 9}
    view = describe_life(rec, None, None, 131)
    assert view["phase"] == "dying" and view["next_phase"] == {"phase": "distributing", "height": 140}
    assert view["must_be_online_by_height"] == 139 and view["timeout_heights"] == {"0": 148, "1": 145}
    life = new_record()
    life["funding_spent"] = {"height": 133, "txid": "ab" * 32, "by": "tree"}
    view = describe_life(rec, life, None, 134)
    assert view["phase"] == "exiting" and view["must_be_online_by_height"] == 136 and view["next_phase"] is None
    life["funding_spent"] = {"height": 141, "txid": "cd" * 32, "by": "distribution"}
    life["distribution"] = {"status": "confirmed", "confirmed_height": 141}
    view = describe_life(rec, life, None, 150)
    assert view["phase"] == "distributed" and "must_be_online_by_height" not in view
    # A cooperative close recorded by the close ceremony (the record contract), then seen confirmed.
    closing = {**rec, "close": {"tx": "00", "status": "broadcast", "confirmed_height": None}}
    assert describe_life(closing, None, None, 135)["phase"] == "closing"
    life = new_record()
    life["funding_spent"] = {"height": 136, "txid": "ef" * 32, "by": "close"}
    assert facts_of(closing, life, None).close_status == "confirmed"
    assert describe_life(closing, life, None, 137)["phase"] == "closed"
    assert describe_life(rec, None, {"status": "publishing"}, 120)["phase"] == "exiting"
    assert describe_life(rec, None, {"status": "cancelled"}, 120)["phase"] == "active"
