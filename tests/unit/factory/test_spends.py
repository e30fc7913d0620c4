"""A signer never signs two different spends of one output (factory/spends.py), and every client round
(the Participant) applies that rule: a sale proposal that spends an L-stock this client already signed
a different sale of is refused; the same sale again is signed; a newer DW state is a chain, not a
double spend."""

from __future__ import annotations

from typing import Any

from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.factory.graph import TreeTx, cooperative_close, liquidity_sale
from superscalar.factory.params import regtest_params
from superscalar.factory.spends import conflict, entries, ledger_of, record_signing
from superscalar.protocol import memlink
from superscalar.protocol.ceremony import Completed, Coordinator, Failed, Participant
from superscalar.protocol.rounds import Expectation, Kind, close_round, sale_round
from superscalar.protocol.wire import AbortCode

from ...factory_kit import make_kit

FUNDING = OutPoint(bytes(range(32)), 0)
FID, SID = b"\x11" * 32, b"\x22" * 32
SPENT = OutPoint(b"\x01" * 32, 1)


def spend(sequence: int, value: int = 1_000, name: str = "state/3") -> TreeTx:
    tx = Tx(3, (TxIn(SPENT, sequence=sequence),), (TxOut(value, b"\x51"),))
    return TreeTx(name, tx, TxOut(value + 1, b"\x51"), None)  # type: ignore[arg-type]


def test_same_spend_again_is_allowed_a_different_one_is_not() -> None:
    first = spend(0xFFFFFFFD, name="sale/3")
    ledger = entries([first])
    assert conflict(ledger, [first]) is None
    why = conflict(ledger, [spend(0xFFFFFFFD, 999, name="sale/3")])
    assert why is not None and first.tx.txid in why and f"{SPENT.txid_hex}:1" in why
    other = TreeTx("sale/3", Tx(3, (TxIn(OutPoint(b"\x02" * 32, 0)),), (TxOut(5, b"\x51"),)), TxOut(6, b"\x51"),
                   None)  # type: ignore[arg-type]
    assert conflict(ledger, [other]) is None


def test_the_rule_holds_per_kind_of_spend() -> None:
    """The funding output is spent by the root, the distribution and one close: alternatives by design."""
    root, distribution = spend(0xFFFFFFFE, 10, "node/0"), spend(0xFFFFFFFE, 20, "distribution")
    ledger = entries([root, distribution])
    assert set(ledger[f"{SPENT.txid_hex}:1"]) == {"node", "distribution"}
    close = spend(0xFFFFFFFD, 30, "close")
    assert conflict(ledger, [close]) is None
    record = record_signing({}, ledger)
    record_signing(record, entries([close]))
    assert conflict(ledger_of(record), [spend(0xFFFFFFFD, 31, "close")]) is not None
    assert conflict(ledger_of(record), [close]) is None


def test_only_a_shorter_relative_lock_of_the_same_unit_chains() -> None:
    older = spend(288)  # a DW state: 288 blocks
    ledger = entries([older])
    assert conflict(ledger, [spend(144)]) is None  # the newer state waits less: it confirms first
    assert conflict(ledger, [spend(432)]) is not None  # an older state is a double spend
    assert conflict(ledger, [spend(288, 7)]) is not None  # same wait, other outputs
    assert conflict(ledger, [spend((1 << 22) | 100)]) is not None  # a time-based lock is another unit
    assert conflict(ledger, [spend(0xFFFFFFFD)]) is not None  # no relative lock at all
    assert conflict(entries([spend(0xFFFFFFFD)]), [spend(100)]) is not None


def test_record_signing_keeps_earlier_entries() -> None:
    rec: dict[str, Any] = {"role": "client"}
    other = TreeTx("sale/1", Tx(3, (TxIn(OutPoint(b"\x02" * 32, 0)),), (TxOut(5, b"\x51"),)), TxOut(6, b"\x51"),
                   None)  # type: ignore[arg-type]
    record_signing(rec, entries([spend(288)]))
    record_signing(rec, entries([other]))
    assert set(ledger_of(rec)) == {f"{SPENT.txid_hex}:1", "02" * 32 + ":0"}
    record_signing(rec, entries([spend(144)]))  # the newer state replaces the older entry
    assert ledger_of(rec)[f"{SPENT.txid_hex}:1"]["state"]["sequence"] == 144
    assert ledger_of(None) == {}


def _sale_participants(kit: Any, leaf: int, ledgers: dict[int, Any]) -> dict[int, Participant]:
    f = kit.factory
    return {c: Participant(Expectation(Kind.SALE, f.keys.pubkeys[c + 1]), kit.seckeys[c + 1], ledger=ledgers.get(c))
            for c in f.topology.nodes[leaf].clients}


def test_a_client_signs_one_sale_of_an_lstock_and_that_sale_again() -> None:
    kit = make_kit(regtest_params(4, 100))
    f = kit.factory
    graph = f.graph(FUNDING)
    leaf = f.topology.leaf_of_client[0]
    lstock = graph.lstock(leaf)
    s1 = liquidity_sale(f, leaf, lstock, 20_000, b"\x00\x20" + b"\x77" * 32)
    s2 = liquidity_sale(f, leaf, lstock, 30_000, b"\x00\x20" + b"\x88" * 32)
    # S1: each client's `signing` record carries the ledger entry, before its partial signature.
    participants = _sale_participants(kit, leaf, {})
    coordinator = Coordinator(sale_round(f, s1, lstock[0], leaf, FID, SID), kit.seckeys[0])
    result = memlink.run(coordinator, participants)
    assert isinstance(result.lsp_outcome, Completed)
    signing = [(c, a) for c, a in result.records if a.record == "signing"]
    assert sorted(c for c, _ in signing) == sorted(participants)
    assert all(a.data["spends"] == entries([s1]) for _, a in signing)
    ledgers = {c: entries([s1]) for c in participants}
    # S2 on the same L-stock (no chaining from S1): every client refuses before it sends a nonce.
    coordinator = Coordinator(sale_round(f, s2, lstock[0], leaf, FID, b"\x33" * 32), kit.seckeys[0])
    outcome = memlink.run(coordinator, _sale_participants(kit, leaf, ledgers)).lsp_outcome
    assert isinstance(outcome, Failed) and outcome.code == AbortCode.BAD_PROPOSAL
    assert "already signed" in outcome.reason and s1.tx.txid in outcome.reason
    # S1 again, unchanged (an LSP finishing a round that failed after our partial signature): signed.
    coordinator = Coordinator(sale_round(f, s1, lstock[0], leaf, FID, b"\x44" * 32), kit.seckeys[0])
    assert isinstance(memlink.run(coordinator, _sale_participants(kit, leaf, ledgers)).lsp_outcome, Completed)
    # A sale chained off S1's output 1 spends another output: signed.
    s3 = liquidity_sale(f, leaf, (s1.tx.outpoint(1), s1.tx.outputs[1]), 5_000, b"\x00\x20" + b"\x99" * 32)
    coordinator = Coordinator(sale_round(f, s3, s1.tx.outpoint(1), leaf, FID, b"\x55" * 32), kit.seckeys[0])
    assert isinstance(memlink.run(coordinator, _sale_participants(kit, leaf, ledgers)).lsp_outcome, Completed)


def test_a_client_signs_one_close_and_a_retry_of_it() -> None:
    kit = make_kit(regtest_params(4, 100))
    f = kit.factory
    c1 = cooperative_close(f, FUNDING, [25_000] * 4)
    c2 = cooperative_close(f, FUNDING, [25_000, 25_000, 25_000, 26_000])  # pays client 0 no less
    ledger = entries([c1])

    def participants() -> dict[int, Participant]:
        return {c: Participant(Expectation(Kind.CLOSE, f.keys.pubkeys[c + 1], payout_script=f.scripts.payouts[c],
                                           payout_sat=25_000, funding=(FUNDING, f.funding_output.value)),
                               kit.seckeys[c + 1], ledger=ledger if c == 0 else None) for c in range(4)}

    coordinator = Coordinator(close_round(f, c2, FUNDING, FID, SID), kit.seckeys[0])
    outcome = memlink.run(coordinator, participants()).lsp_outcome
    assert isinstance(outcome, Failed) and outcome.culprit == 0 and c1.tx.txid in outcome.reason
    coordinator = Coordinator(close_round(f, c1, FUNDING, FID, SID), kit.seckeys[0])
    assert isinstance(memlink.run(coordinator, participants()).lsp_outcome, Completed)
