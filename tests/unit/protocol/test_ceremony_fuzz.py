"""Hostile input never escapes the ceremony machines: random and mutated Propose, Nonces, AggNonces,
PartialSigs, Signatures and Fragment bodies end in a `Failed` (with an Abort that says why) or are
ignored; nothing raises, for factories of 1 to 64 clients."""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superscalar.bitcoin.encoding import ser_compact_size
from superscalar.bitcoin.tx import OutPoint
from superscalar.factory.graph import anchor_output
from superscalar.factory.params import regtest_params
from superscalar.protocol.ceremony import Action, Coordinator, Failed, Participant, PState, Send
from superscalar.protocol.rounds import Round, construction_round
from superscalar.protocol.wire import (
    Abort,
    AggNonces,
    DecodeError,
    Fragment,
    Message,
    Nonces,
    PartialSigs,
    Propose,
    Reassembler,
    Signatures,
    WireError,
    decode_message,
    encode_message,
)

from ...factory_kit import Kit, construction_participants, make_kit

FUNDING = OutPoint(bytes(range(32)), 0)
FID, SID = b"\x11" * 32, b"\x22" * 32
SIZES = (1, 2, 5, 64)
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@lru_cache(maxsize=None)
def kit_and_round(n: int) -> tuple[Kit, Round]:
    kit = make_kit(regtest_params(n, 100))
    return kit, construction_round(kit.factory, kit.factory.graph(FUNDING), FID, SID)


def fresh(n: int, client: int) -> Participant:
    kit, _ = kit_and_round(n)
    return construction_participants(kit, [client])[client]


def assert_contained(actions: list[Action]) -> None:
    """A refusal is a Failed preceded by an Abort to the LSP; anything else is progress."""
    failed = [a for a in actions if isinstance(a, Failed)]
    if failed:
        assert any(isinstance(a, Send) and isinstance(a.message, Abort) for a in actions)
        assert failed[0].reason


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Byte edits: (kind 0 flip / 1 delete / 2 insert, position, value)."""
    out = bytearray(data)
    for kind, pos, value in edits:
        if not out:
            break
        pos %= len(out)
        if kind == 0:
            out[pos] ^= value or 1
        elif kind == 1:
            del out[pos]
        else:
            out.insert(pos, value)
    return bytes(out)


EDITS = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=8)
KEY = st.one_of(st.binary(min_size=33, max_size=33),
                st.builds(lambda x: b"\x02" + x, st.binary(min_size=32, max_size=32)))


def propose_variants(p: Propose) -> st.SearchStrategy[Propose]:
    """Field-level changes a dishonest LSP can make to a well-formed proposal."""
    outputs = st.lists(st.binary(max_size=120), max_size=6).map(tuple)
    return st.one_of(
        st.builds(lambda v: dataclasses.replace(p, client_index=v), st.integers(0, 2**32 - 1)),
        st.builds(lambda v: dataclasses.replace(p, params=v), st.binary(max_size=200)),
        st.builds(lambda v: dataclasses.replace(p, funding_value=v), st.integers(0, 2**64 - 1)),
        st.builds(lambda i, k: dataclasses.replace(p, pubkeys=tuple(k if j == i % len(p.pubkeys) else x
                                                                   for j, x in enumerate(p.pubkeys))),
                  st.integers(0, 2000), KEY),
        st.builds(lambda v: dataclasses.replace(p, pubkeys=tuple(v)), st.lists(KEY, max_size=4)),
        st.builds(lambda v: dataclasses.replace(p, state_indices=tuple(v)), st.lists(st.integers(0, 255), max_size=6)),
        st.builds(lambda v: dataclasses.replace(p, path_outputs=v), outputs),
        st.builds(lambda i, v: dataclasses.replace(p, path_outputs=tuple(v if j == i % len(p.path_outputs) else x
                                                                         for j, x in enumerate(p.path_outputs))),
                  st.integers(0, 50), st.binary(max_size=200)),
        st.builds(lambda v: dataclasses.replace(p, distribution=v), st.binary(max_size=300)),
        st.builds(lambda v: dataclasses.replace(p, kind=v), st.integers(0, 255)),
    )


@st.composite
def proposal_case(draw: Any) -> tuple[int, int, Message]:
    n = draw(st.sampled_from(SIZES))
    client = draw(st.integers(0, n - 1))
    genuine = kit_and_round(n)[1].proposals[client]
    if draw(st.booleans()):
        msg: Message = draw(propose_variants(genuine))
    else:
        try:
            msg = decode_message(mutate(encode_message(genuine), draw(EDITS)))
        except WireError:
            msg = draw(propose_variants(genuine))  # the transport drops what does not decode
    return n, client, msg


@FUZZ
@given(proposal_case())
def test_mutated_proposals_fail_only_their_round(case: tuple[int, int, Message]) -> None:
    n, client, msg = case
    participant = fresh(n, client)
    actions = participant.receive(msg)  # must not raise
    assert_contained(actions)
    if any(isinstance(a, Failed) for a in actions):
        assert participant.state is PState.ERROR


def test_proposal_whose_leaf_has_only_its_anchor_is_refused() -> None:
    kit, rnd = kit_and_round(2)
    genuine = rnd.proposals[0]
    anchor_only = ser_compact_size(1) + anchor_output(kit.factory.params).serialize()
    msg = dataclasses.replace(genuine, path_outputs=(*genuine.path_outputs[:-1], anchor_only))
    actions = fresh(2, 0).receive(msg)
    failed = [a for a in actions if isinstance(a, Failed)]
    assert failed and "proposal refused" in failed[0].reason


def test_proposal_with_an_off_curve_key_is_refused() -> None:
    _, rnd = kit_and_round(2)
    genuine = rnd.proposals[0]
    bad = b"\x02" + b"\xff" * 32  # x above the field size: no such point
    msg = dataclasses.replace(genuine, pubkeys=(bad, *genuine.pubkeys[1:]))
    actions = fresh(2, 0).receive(msg)
    failed = [a for a in actions if isinstance(a, Failed)]
    assert failed and "proposal refused" in failed[0].reason


def _after_propose(n: int, client: int) -> Participant:
    participant = fresh(n, client)
    actions = participant.receive(kit_and_round(n)[1].proposals[client])
    assert participant.state is PState.AWAIT_AGGNONCES, actions
    return participant


@FUZZ
@given(st.sampled_from(SIZES), st.data())
def test_mutated_aggnonces_and_signatures_fail_only_their_round(n: int, data: Any) -> None:
    client = data.draw(st.integers(0, n - 1))
    participant = _after_propose(n, client)
    jobs = len(participant.jobs)
    count = data.draw(st.sampled_from([jobs, jobs, 0, jobs + 1, max(jobs - 1, 0)]))
    nonces = tuple(data.draw(st.binary(min_size=66, max_size=66)) for _ in range(count))
    actions = participant.receive(AggNonces(FID, SID, nonces))
    assert_contained(actions)
    if participant.state is PState.AWAIT_SIGNATURES:
        sigs = tuple(data.draw(st.binary(min_size=64, max_size=64)) for _ in range(count))
        actions = participant.receive(Signatures(FID, SID, sigs))
        assert_contained(actions)
        assert participant.state is PState.ERROR  # type: ignore[comparison-overlap]  # random signatures never verify


@FUZZ
@given(st.sampled_from(SIZES), st.data())
def test_mutated_nonces_and_partial_sigs_fail_only_their_round(n: int, data: Any) -> None:
    kit, rnd = kit_and_round(n)
    coordinator = Coordinator(rnd, kit.seckeys[0])
    coordinator.start()
    peer = data.draw(st.integers(-2, n + 2))
    jobs = len(rnd.client_jobs.get(peer, ()))
    count = data.draw(st.sampled_from([jobs, jobs, 0, jobs + 1]))
    nonces = Nonces(FID, data.draw(st.sampled_from([SID, FID])),
                    tuple(data.draw(st.binary(min_size=66, max_size=66)) for _ in range(count)))
    actions = coordinator.receive(peer, nonces)  # must not raise
    for a in actions:
        if isinstance(a, Failed):
            assert a.reason
    psigs = PartialSigs(FID, SID, tuple(data.draw(st.binary(min_size=32, max_size=32)) for _ in range(count)))
    actions = coordinator.receive(peer, psigs)
    assert all(not isinstance(a, Failed) or a.reason for a in actions)


@FUZZ
@given(st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 70), st.integers(0, 70),
                          st.binary(max_size=5000)), min_size=1, max_size=40))
def test_random_fragments_raise_only_decode_errors(pieces: list[tuple[bytes, int, int, bytes]]) -> None:
    reassembler = Reassembler(max_total=64 * 1024, max_pending=4)
    for message_id, index, count, chunk in pieces:
        try:
            reassembler.add(Fragment(FID, SID, message_id, index, count, chunk))
        except DecodeError:
            pass
        assert reassembler.pending <= 4 and reassembler.buffered_bytes <= 64 * 1024
