"""Cooperative close and rollover: the pure parts (the close that funds the next factory, the checks a
client makes of a close proposal, the Invite's rollover fields)."""

from __future__ import annotations

import dataclasses

import pytest

from superscalar.bitcoin.tx import OutPoint, TxOut
from superscalar.factory.errors import FactoryError
from superscalar.factory.graph import anchor_output, cooperative_close, rollover_close
from superscalar.factory.params import ClientTerms, regtest_params
from superscalar.protocol import memlink, wire
from superscalar.protocol.ceremony import Completed, Coordinator, Failed, Participant
from superscalar.protocol.rounds import Expectation, Kind, close_round
from superscalar.protocol.wire import AbortCode, Invite

from ...factory_kit import make_kit

FUNDING = OutPoint(bytes(range(32)), 1)
FID, SID = b"\x33" * 32, b"\x44" * 32


def rollover_setup(leavers: tuple[int, ...] = (3,)):  # type: ignore[no-untyped-def]
    a = make_kit(regtest_params(4, 100)).factory
    rolling = [c for c in range(4) if c not in leavers]
    b = make_kit(regtest_params(len(rolling), 110),
                 [ClientTerms(a.terms[c].balance_sat, a.terms[c].inbound_sat) for c in rolling]).factory
    amounts = [7_000 if c in leavers else 0 for c in range(4)]
    close = rollover_close(a, FUNDING, b.funding_output, amounts)
    return a, b, close, amounts


def test_rollover_close_funds_the_next_factory_first() -> None:
    a, b, close, amounts = rollover_setup()
    outs = close.tx.outputs
    assert outs[0] == b.funding_output
    assert outs[1] == TxOut(7_000, a.scripts.payouts[3])
    assert outs[2].script_pubkey == a.scripts.lsp_payout
    assert outs[3] == anchor_output(a.params) and len(outs) == 4
    assert a.funding_output.value - sum(o.value for o in outs) == close.fee == a.params.fee(close.vsize)
    # The next tree can be built over (close txid, 0) before the close is signed: the txid is final.
    graph = b.graph(OutPoint.from_hex(close.tx.txid, 0))
    assert graph.funding.txid_hex == close.tx.with_witness(0, [bytes(64)]).txid


def test_rollover_that_does_not_fit_is_refused() -> None:
    a = make_kit(regtest_params(4, 100)).factory
    too_big = TxOut(a.funding_output.value, a.funding_taproot.script_pubkey)
    with pytest.raises(FactoryError, match="does not fit"):
        rollover_close(a, FUNDING, too_big, [0] * 4)


def run_close(kit, close, expectations, variants=False):  # type: ignore[no-untyped-def]
    """A rollover's close round (no fee variants: the next factory is signed over its txid)."""
    f = kit.factory
    coordinator = Coordinator(close_round(f, close, FUNDING, FID, SID, variants=variants), kit.seckeys[0])
    participants = {c: Participant(e, kit.seckeys[c + 1]) for c, e in expectations.items()}
    return memlink.run(coordinator, participants).lsp_outcome


def test_rolling_clients_check_output_zero_and_leavers_their_payout() -> None:
    kit = make_kit(regtest_params(4, 100))
    a, b, close, amounts = rollover_setup()
    assert kit.factory.funding_output == a.funding_output
    funding = (FUNDING, a.funding_output.value)
    next_funding = (OutPoint.from_hex(close.tx.txid, 0), b.funding_output)

    def expectations(next_: tuple[OutPoint, TxOut], pay: int) -> dict[int, Expectation]:
        return {c: Expectation(Kind.CLOSE, a.keys.pubkeys[c + 1], funding=funding,
                               **({"payout_script": a.scripts.payouts[c], "payout_sat": pay} if c == 3
                                  else {"next_funding": next_}))
                for c in range(4)}

    assert isinstance(run_close(kit, close, expectations(next_funding, 7_000)), Completed)
    # A leaver expecting more than the close pays refuses.
    out = run_close(kit, close, expectations(next_funding, 7_001))
    assert isinstance(out, Failed) and out.culprit == 3 and out.code == AbortCode.BAD_PROPOSAL
    assert "less than our 7001 sat" in out.reason
    # A close whose output 0 is not the next factory's funding the rolling clients signed over.
    other = (next_funding[0], TxOut(b.funding_output.value + 1, b.funding_output.script_pubkey))
    out = run_close(kit, close, expectations(other, 7_000))
    assert isinstance(out, Failed) and out.code == AbortCode.BAD_PROPOSAL and "output 0" in out.reason
    wrong_txid = (OutPoint(bytes(32), 0), b.funding_output)
    out = run_close(kit, close, expectations(wrong_txid, 7_000))
    assert isinstance(out, Failed) and "output 0" in out.reason


def test_close_paying_more_is_accepted_less_refused() -> None:
    kit = make_kit(regtest_params(4, 100))
    f = kit.factory
    close = cooperative_close(f, FUNDING, [30_000, 20_000, 10_000, 0])
    funding = (FUNDING, f.funding_output.value)

    def run(want: list[int]):  # type: ignore[no-untyped-def]
        return run_close(kit, close, {c: Expectation(Kind.CLOSE, f.keys.pubkeys[c + 1], payout_script=f.scripts.payouts[c],
                                                     payout_sat=want[c], funding=funding) for c in range(4)})

    assert isinstance(run([29_999, 20_000, 9_000, 0]), Completed)  # at least what each is owed
    out = run([30_000, 20_001, 10_000, 0])
    assert isinstance(out, Failed) and out.culprit == 1
    # A close must name the funding output: without one the client refuses.
    out = run_close(kit, close, {c: Expectation(Kind.CLOSE, f.keys.pubkeys[c + 1], payout_script=f.scripts.payouts[c],
                                                payout_sat=0) for c in range(4)})
    assert isinstance(out, Failed) and "must name the funding" in out.reason


def test_invite_rollover_fields_are_odd_and_optional() -> None:
    plain = Invite(FID, SID, b"{}", 1, 2)
    roll = dataclasses.replace(plain, rollover_of=b"\x55" * 32, push_msat=1_234_567)
    assert wire.decode_message(wire.encode_message(roll)) == roll
    assert wire.decode_message(wire.encode_message(plain)) == plain
    # An older decoder that knows only the even fields reads the rollover invite as a plain one.
    evens = {t: f for t, f in Invite.FIELDS.items() if t % 2 == 0}
    body = wire.encode_message(roll)[5:]
    values = wire.decode_tlv_stream(body, evens.keys())
    assert {evens[t].name for t in values} == {"factory_id", "session_id", "params", "balance_sat", "inbound_sat"}


def test_rolling_clients_refuse_fee_variants_of_a_rollover_close() -> None:
    """Fee variants would change the close's txid, which the next factory is signed over: a rolling
    client refuses a rollover's close that comes with any."""
    kit = make_kit(regtest_params(4, 100))
    a, b, close, amounts = rollover_setup()
    funding = (FUNDING, a.funding_output.value)
    nxt = (OutPoint.from_hex(close.tx.txid, 0), b.funding_output)
    expect = {c: Expectation(Kind.CLOSE, a.keys.pubkeys[c + 1], funding=funding, next_funding=nxt) for c in range(3)}
    expect[3] = Expectation(Kind.CLOSE, a.keys.pubkeys[4], funding=funding, payout_script=a.scripts.payouts[3],
                            payout_sat=7_000)
    out = run_close(kit, close, expect, variants=True)
    assert isinstance(out, Failed) and out.culprit in (0, 1, 2) and "no fee variants" in out.reason


def test_plain_close_fee_variants_pay_every_client_the_same() -> None:
    """A plain close is signed with its fee variants; each pays every client what the close pays (each
    client checks them all), the extra fee out of the LSP's output."""
    from superscalar.factory.graph import cooperative_close, fee_variants

    kit = make_kit(regtest_params(4, 100))
    f = kit.factory
    close = cooperative_close(f, FUNDING, [25_000] * 4)
    variants = fee_variants(f, close, FUNDING)
    assert [v.name for v in variants] == ["close-x4", "close-x16", "close-x64"]
    for v, m in zip(variants, (4, 16, 64)):
        assert v.tx.outputs[:4] == close.tx.outputs[:4] and v.tx.outputs[5] == close.tx.outputs[5]
        assert f.funding_output.value - sum(o.value for o in v.tx.outputs) == f.params.fee(close.vsize, m)
    funding = (FUNDING, f.funding_output.value)
    expect = {c: Expectation(Kind.CLOSE, f.keys.pubkeys[c + 1], funding=funding, payout_script=f.scripts.payouts[c],
                             payout_sat=25_000) for c in range(4)}
    coordinator = Coordinator(close_round(f, close, FUNDING, FID, SID), kit.seckeys[0])
    participants = {c: Participant(e, kit.seckeys[c + 1]) for c, e in expect.items()}
    result = memlink.run(coordinator, participants)
    assert isinstance(result.lsp_outcome, Completed) and len(result.lsp_outcome.signed) == 4
