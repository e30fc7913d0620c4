"""The ceremony machines over an in-memory link: complete rounds, and every way a round must fail."""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.crypto.bip340 import schnorr_verify
from superscalar.bitcoin.tx import OutPoint, TxOut
from superscalar.factory.graph import cooperative_close, liquidity_sale
from superscalar.factory.params import regtest_params
from contrib.split_link import run_split
from superscalar.protocol import memlink
from superscalar.protocol.ceremony import (
    CState,
    Completed,
    Coordinator,
    Failed,
    LocalProtocolError,
    Participant,
    PState,
    Send,
)
from superscalar.protocol.rounds import (
    Expectation,
    Kind,
    advance_round,
    close_round,
    construction_round,
    sale_round,
)
from superscalar.protocol.wire import (
    Abort,
    AbortCode,
    AggNonces,
    Done,
    Message,
    Nonces,
    PartialSigs,
    Propose,
    Signatures,
)

from ...factory_kit import Kit, construction_participants, make_kit

FUNDING = OutPoint(bytes(range(32)), 0)
FID, SID = b"\x11" * 32, b"\x22" * 32


def setup(n: int = 8) -> tuple[Kit, Coordinator, dict[int, Participant]]:
    kit = make_kit(regtest_params(n, 100))
    graph = kit.factory.graph(FUNDING)
    coordinator = Coordinator(construction_round(kit.factory, graph, FID, SID), kit.seckeys[0])
    return kit, coordinator, construction_participants(kit)


def test_construction_round_completes_and_every_signature_verifies() -> None:
    kit, coordinator, participants = setup()
    result = memlink.run(coordinator, participants)
    lsp = result.lsp_outcome
    assert isinstance(lsp, Completed) and coordinator.state is CState.COMPLETE
    graph = kit.factory.graph(FUNDING)
    jobs = coordinator.round.jobs
    assert len(lsp.signed) == len(graph.txs()) + len(graph.distributions())  # the tree, the distribution, its variants
    assert [t.name for t in graph.distributions()] == ["distribution", "distribution-x4", "distribution-x16",
                                                       "distribution-x64"]
    for t, tx in zip(jobs, lsp.signed):
        assert schnorr_verify(t.sighash, t.prevout.script_pubkey[2:], tx.inputs[0].witness[0])
    for c, p in participants.items():
        out = result.client_outcome(c)
        assert isinstance(out, Completed) and p.state is PState.COMPLETE
        # The client holds its whole signed exit path and the distribution.
        assert [tx.txid for tx in out.signed] == [t.tx.txid for t in (*graph.path_txs(c), *graph.distributions())]
        # It persisted the signed path before it reported Done.
        records = [r for peer, r in result.persisted if peer == c]
        assert records == ["signing", "signed"]


def test_client_refuses_a_proposal_that_shortchanges_it() -> None:
    kit, coordinator, participants = setup()
    p3 = participants[3]
    stingy = dataclasses.replace(p3.expect, capacity_sat=(p3.expect.capacity_sat or 0) + 1)
    participants[3] = Participant(stingy, kit.seckeys[4])
    result = memlink.run(coordinator, participants)
    lsp = result.lsp_outcome
    assert isinstance(lsp, Failed) and lsp.code == AbortCode.BAD_PROPOSAL and lsp.culprit == 3
    assert coordinator.state is CState.ERROR
    for c in participants:
        out = result.client_outcome(c)
        assert isinstance(out, Failed), c
    assert not any(isinstance(a, Completed) for acts in result.clients.values() for a in acts)


def tamper_with(kind: type, peer: int, change: "callable") -> memlink.Tamper:  # type: ignore[valid-type]
    def hook(src: int, dest: int, msg: Message) -> Optional[Message]:
        if isinstance(msg, kind) and peer in (src, dest):
            return change(msg)  # type: ignore[misc]
        return msg

    return hook


def flip(b: bytes) -> bytes:
    return bytes([b[0] ^ 1]) + b[1:]


def test_bad_partial_signature_names_the_culprit() -> None:
    kit, coordinator, participants = setup()
    hook = tamper_with(PartialSigs, 5, lambda m: dataclasses.replace(m, psigs=(flip(m.psigs[0]), *m.psigs[1:])))
    result = memlink.run(coordinator, participants, hook)
    lsp = result.lsp_outcome
    assert isinstance(lsp, Failed) and lsp.code == AbortCode.BAD_PARTIAL_SIG and lsp.culprit == 5
    assert all(isinstance(result.client_outcome(c), Failed) for c in participants)


def test_bad_nonce_and_wrong_counts_are_blamed() -> None:
    kit, coordinator, participants = setup()
    hook = tamper_with(Nonces, 2, lambda m: dataclasses.replace(m, pubnonces=m.pubnonces[:-1]))
    lsp = memlink.run(coordinator, participants, hook).lsp_outcome
    assert isinstance(lsp, Failed) and lsp.code == AbortCode.BAD_NONCE and lsp.culprit == 2
    kit, coordinator, participants = setup()
    bad = b"\x02" + b"\xff" * 32 + b"\x02" + b"\xff" * 32
    hook = tamper_with(Nonces, 1, lambda m: dataclasses.replace(m, pubnonces=(bad, *m.pubnonces[1:])))
    lsp = memlink.run(coordinator, participants, hook).lsp_outcome
    assert isinstance(lsp, Failed) and lsp.code == AbortCode.BAD_NONCE and lsp.culprit == 1


def test_client_rejects_a_bad_final_signature() -> None:
    kit, coordinator, participants = setup()
    hook = tamper_with(Signatures, 4, lambda m: dataclasses.replace(m, sigs=(flip(m.sigs[0]), *m.sigs[1:])))
    result = memlink.run(coordinator, participants, hook)
    out = result.client_outcome(4)
    assert isinstance(out, Failed) and out.code == AbortCode.BAD_SIGNATURE
    # Client 4 never reported Done, so the LSP never completed (and would never fund).
    assert not isinstance(result.lsp_outcome, Completed)


def test_client_dropping_out_aborts_the_round() -> None:
    for kind in (Nonces, PartialSigs, Done):
        kit, coordinator, participants = setup()
        hook = tamper_with(kind, 6, lambda m: None)
        result = memlink.run(coordinator, participants, hook)
        assert result.lsp_outcome is None  # waiting for client 6 …
        actions = coordinator.peer_failed(6, "disconnected")  # … until the shell reports it gone
        failed = [a for a in actions if isinstance(a, Failed)]
        assert failed and failed[0].code == AbortCode.PEER_DISCONNECTED and failed[0].culprit == 6
        aborts = [a for a in actions if isinstance(a, Send)]
        assert {a.peer for a in aborts} == set(participants)
        assert all(isinstance(a.message, Abort) for a in aborts)
        assert coordinator.peer_failed(6, "again") == []  # sticky


def test_out_of_order_messages_are_protocol_violations() -> None:
    kit, coordinator, participants = setup()
    p = participants[0]
    actions = p.receive(AggNonces(FID, SID, ()))
    assert isinstance(actions[-1], Failed) and actions[-1].code == AbortCode.PROTOCOL_VIOLATION
    assert p.state is PState.ERROR and p.receive(AggNonces(FID, SID, ())) == []
    coordinator.start()
    actions = coordinator.receive(1, Done(FID, SID))
    assert isinstance(actions[-1], Failed) and actions[-1].code == AbortCode.PROTOCOL_VIOLATION
    with pytest.raises(LocalProtocolError):
        coordinator.start()


def test_advance_sale_and_close_rounds() -> None:
    kit = make_kit(regtest_params(8, 100))
    f = kit.factory
    state, changed = f.advance(f.initial_state(), 2)
    graph = f.graph(FUNDING, state)
    coordinator = Coordinator(advance_round(f, graph, changed, FID, SID), kit.seckeys[0])
    participants = {}
    for c in f.topology.nodes[changed].clients:
        path = f.topology.path(c)
        participants[c] = Participant(Expectation(
            Kind.ADVANCE, f.keys.pubkeys[c + 1], channel_script=f.scripts.channels[c],
            capacity_sat=f.terms[c].capacity_sat, previous_state=tuple(0 for _ in path),
            funding=(FUNDING, f.funding_output.value)), kit.seckeys[c + 1])
    result = memlink.run(coordinator, participants)
    assert isinstance(result.lsp_outcome, Completed)
    assert [t.name for t in coordinator.round.jobs] == [f"state/{changed}"]

    leaf = f.topology.leaf_of_client[2]
    lstock = graph.lstock(leaf)
    sale = liquidity_sale(f, leaf, lstock, 20_000, b"\x00\x20" + b"\x77" * 32)
    coordinator = Coordinator(sale_round(f, sale, lstock[0], leaf, FID, SID), kit.seckeys[0])
    participants = {
        c: Participant(Expectation(Kind.SALE, f.keys.pubkeys[c + 1],
                                   channel_script=(b"\x00\x20" + b"\x77" * 32) if c == 2 else None,
                                   capacity_sat=20_000 if c == 2 else None), kit.seckeys[c + 1])
        for c in f.topology.nodes[leaf].clients
    }
    assert isinstance(memlink.run(coordinator, participants).lsp_outcome, Completed)

    amounts = [25_000] * 8
    close = cooperative_close(f, FUNDING, amounts)
    coordinator = Coordinator(close_round(f, close, FUNDING, FID, SID), kit.seckeys[0])
    participants = {
        c: Participant(Expectation(Kind.CLOSE, f.keys.pubkeys[c + 1], payout_script=f.scripts.payouts[c],
                                   payout_sat=25_000, funding=(FUNDING, f.funding_output.value)), kit.seckeys[c + 1])
        for c in range(8)
    }
    assert isinstance(memlink.run(coordinator, participants).lsp_outcome, Completed)
    # A client that expects more refuses.
    participants[0] = Participant(dataclasses.replace(participants[0].expect, payout_sat=26_000), kit.seckeys[1])
    coordinator = Coordinator(close_round(f, close, FUNDING, FID, SID), kit.seckeys[0])
    lsp = memlink.run(coordinator, participants).lsp_outcome
    assert isinstance(lsp, Failed) and lsp.culprit == 0 and lsp.code == AbortCode.BAD_PROPOSAL


def test_mutated_proposals_are_refused_not_crashed() -> None:
    kit, coordinator, participants = setup()
    [_, *sends] = coordinator.start()
    proposal = next(s.message for s in sends if isinstance(s, Send) and s.peer == 0)
    assert isinstance(proposal, Propose)
    mutations = [
        dataclasses.replace(proposal, funding_value=proposal.funding_value + 1),
        dataclasses.replace(proposal, state_indices=(1,) * len(proposal.state_indices)),
        dataclasses.replace(proposal, pubkeys=proposal.pubkeys[::-1]),
        dataclasses.replace(proposal, params=b"{}"),
        dataclasses.replace(proposal, kind=3),
        dataclasses.replace(proposal, client_index=7),
        dataclasses.replace(proposal, distribution=proposal.distribution[:-1]),
        dataclasses.replace(proposal, distribution=b"\x01" + proposal.distribution[1:]),
        dataclasses.replace(proposal, path_outputs=(b"\x01" + TxOut(1, b"\x51").serialize(),) + proposal.path_outputs[1:]),
        dataclasses.replace(proposal, path_outputs=(proposal.path_outputs[0][:-1],) + proposal.path_outputs[1:]),
    ]
    for m in mutations:
        p = construction_participants(kit, [0])[0]
        actions = p.receive(m)
        assert isinstance(actions[-1], Failed) and actions[-1].code == AbortCode.BAD_PROPOSAL, m
        assert isinstance(actions[0], Send) and isinstance(actions[0].message, Abort)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["propose", "aggnonces", "signatures", "done", "abort", "nonces"]), max_size=6),
       st.binary(min_size=32, max_size=32))
def test_participant_never_raises_on_any_message_sequence(seq: list[str], junk: bytes) -> None:
    kit = make_kit(regtest_params(2, 100))
    graph = kit.factory.graph(FUNDING)
    rnd = construction_round(kit.factory, graph, FID, SID)
    p = construction_participants(kit, [0])[0]
    n = len(rnd.client_jobs[0])
    msgs = {
        "propose": rnd.proposals[0],
        "aggnonces": AggNonces(FID, SID, (b"\x02" + junk + junk[:1] + junk + b"\x02",) * n),
        "signatures": Signatures(FID, SID, (junk + junk,) * n),
        "done": Done(FID, SID),
        "abort": Abort(FID, SID, 999, "x", None),
        "nonces": Nonces(FID, SID, ()),
    }
    for name in seq:
        actions = p.receive(msgs[name])
        assert all(isinstance(a, (Send, Failed, Completed)) or a.__class__.__name__ == "Persist" for a in actions)
    assert p.state in PState


def test_run_split_gives_every_client_the_lsps_signed_transactions() -> None:
    """Participants in two worker processes and this one (run_split): the round completes, each client holds exactly
    the LSP's signed transactions for its jobs, and the byte counts match the one-process run."""
    kit, coordinator, participants = setup(16)
    result = run_split(coordinator, participants, workers=2, local=range(0, 5))
    lsp = result.lsp_outcome
    assert isinstance(lsp, Completed)
    by_txid = {tx.txid: tx for tx in lsp.signed}
    for c in range(16):
        out = result.client_outcome(c)
        assert isinstance(out, Completed), c
        assert all(by_txid[tx.txid].serialize() == tx.serialize() for tx in out.signed)
        assert [r for peer, r in result.persisted if peer == c] == ["signing", "signed"]
    _, coordinator2, participants2 = setup(16)
    serial = memlink.run(coordinator2, participants2)
    assert result.sent == serial.sent and result.received == serial.received


def test_run_split_deals_clients_to_workers_as_they_ask() -> None:
    """Three workers, no local clients: every client lands in some worker and completes with the
    LSP's transactions; each client's two records come back."""
    kit, coordinator, participants = setup(12)
    result = run_split(coordinator, participants, workers=3)
    lsp = result.lsp_outcome
    assert isinstance(lsp, Completed)
    signed = {tx.serialize() for tx in lsp.signed}
    for c in range(12):
        out = result.client_outcome(c)
        assert isinstance(out, Completed) and {tx.serialize() for tx in out.signed} <= signed
        assert [r for peer, r in result.persisted if peer == c] == ["signing", "signed"]
    assert len(result.workers_peak_rss_kb) == 3


@pytest.mark.parametrize("n,refuser", [
    (8, 6),  # every client already with a worker
    (80, 1),  # two batches of 16 in flight per worker: 64 given out, 16 still waiting for a worker
])
def test_run_split_reports_a_refusal_in_the_worker(n: int, refuser: int) -> None:
    """A client in a worker refuses: the LSP's abort reaches every client (those no worker has yet
    included), the run ends, and the culprit is named."""
    kit, coordinator, participants = setup(n)
    expect = participants[refuser].expect
    participants[refuser] = Participant(dataclasses.replace(expect, capacity_sat=(expect.capacity_sat or 0) + 1),
                                        kit.seckeys[refuser + 1])
    result = run_split(coordinator, participants, workers=2)
    lsp = result.lsp_outcome
    assert isinstance(lsp, Failed) and lsp.code == AbortCode.BAD_PROPOSAL and lsp.culprit == refuser
    assert all(isinstance(result.client_outcome(c), Failed) for c in range(n))
