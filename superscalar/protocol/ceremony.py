"""The signing ceremony as two sans-I/O state machines: the LSP's `Coordinator` and a client's
`Participant`. Events go in (a message from a peer, a peer lost), actions come out (send a message,
persist a record, completed, failed); the shell carries the actions out in order.

Two MuSig2 rounds sign every job of a `Round`: clients send public nonces, the LSP answers with the
aggregate nonce of each job; clients send partial signatures, the LSP aggregates them, verifies every
final BIP-340 signature (and, for a job whose signature fails, each partial signature, to name the
signer at fault) and sends each client the signatures of its jobs, which the client verifies before it
stores them and reports Done.

Every transition is in one table per role. A message that the table does not allow, or that breaks the
protocol, moves the machine to the sticky ERROR state and aborts the round for everyone; calling a
method out of order locally raises LocalProtocolError and changes nothing. Secret nonces live only in
the machine's memory and are consumed by signing or dropped on failure. A client signs nothing that
spends an output it already signed a different spend of (`factory.spends`): its shell passes the
factory's ledger in and stores what the `signing` record adds to it before the partial signatures go out.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from ..crypto import musig2
from ..crypto.bip340 import schnorr_verify
from ..bitcoin.tx import Tx
from ..factory.graph import TreeTx
from ..factory.spends import Ledger, conflict, entries
from .rounds import Expectation, Round, participant_jobs
from .wire import (
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

Rand = Callable[[int], bytes]  # nonce randomness: os.urandom (what secrets reads) unless a test injects one


class LocalProtocolError(RuntimeError):
    """The caller used a machine out of order; nothing changed."""


# --- actions ---


@dataclass(frozen=True, slots=True)
class Send:
    peer: int  # client index (the LSP is the peer of every participant: -1)
    message: Message


@dataclass(frozen=True, slots=True)
class Persist:
    """Write this record before acting on anything that follows it. `data` may hold transactions;
    `jsonable()` is the record as a datastore keeps it (transactions as hex)."""

    record: str
    data: dict[str, Any]

    def jsonable(self) -> dict[str, Any]:
        return {k: [tx.to_hex() for tx in v] if isinstance(v, tuple) and v and isinstance(v[0], Tx) else v
                for k, v in self.data.items()}


@dataclass(frozen=True, slots=True)
class Completed:
    signed: tuple[Tx, ...]  # every job of the round (LSP) or of this client, fully signed


@dataclass(frozen=True, slots=True)
class Failed:
    code: AbortCode
    reason: str
    culprit: Optional[int] = None  # client index to blame, if any


Action = Union[Send, Persist, Completed, Failed]


def grouped_sends(actions: list[Action]) -> list[Union[list[Send], Persist, Completed, Failed]]:
    """`actions` in their order, each run of consecutive sends as one list: a run may go out
    concurrently, as it follows every action before it and precedes every action after it."""
    out: list[Union[list[Send], Persist, Completed, Failed]] = []
    for a in actions:
        if isinstance(a, Send) and out and isinstance(out[-1], list):
            out[-1].append(a)
        else:
            out.append([a] if isinstance(a, Send) else a)
    return out
LSP_PEER = -1


class CState(enum.Enum):
    NEW = "new"
    AWAIT_NONCES = "await_nonces"
    AWAIT_PSIGS = "await_psigs"
    AWAIT_DONE = "await_done"
    COMPLETE = "complete"
    ERROR = "error"


class PState(enum.Enum):
    AWAIT_PROPOSAL = "await_proposal"
    AWAIT_AGGNONCES = "await_aggnonces"
    AWAIT_SIGNATURES = "await_signatures"
    COMPLETE = "complete"
    ERROR = "error"


class _Violation(Exception):
    def __init__(self, code: AbortCode, reason: str, culprit: Optional[int] = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.culprit = code, reason, culprit


def _describe(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"[:300]


def _session(t: TreeTx, aggnonce: bytes) -> musig2.SessionContext:
    return musig2.SessionContext(aggnonce, t.spend.keyagg, (t.spend.tweak,), (True,), t.sighash)


def _output_key(t: TreeTx) -> bytes:
    return t.prevout.script_pubkey[2:]  # P2TR: OP_1 <32-byte output key>


class Coordinator:
    """The LSP's side of one round."""

    TRANSITIONS: dict[tuple[CState, type], str] = {
        (CState.AWAIT_NONCES, Nonces): "_on_nonces",
        (CState.AWAIT_PSIGS, PartialSigs): "_on_psigs",
        (CState.AWAIT_DONE, Done): "_on_done",
    }

    def __init__(self, round_: Round, lsp_seckey: bytes, rand: Rand = os.urandom) -> None:
        self.round = round_
        self.state = CState.NEW
        self._keypair = musig2.Keypair(lsp_seckey)
        if self._keypair.pubkey != round_.pubkeys[0]:
            raise LocalProtocolError("our key is not the round's LSP key")
        self._rand = rand
        self._nonces: dict[int, tuple[bytes, ...]] = {}  # per client, as received
        self._psigs: dict[int, tuple[bytes, ...]] = {}
        self._done: set[int] = set()
        jobs = range(len(round_.jobs))
        self._signers_due = [0 for _ in jobs]  # per job: how many clients sign it
        for client_jobs in round_.client_jobs.values():
            for j in client_jobs:
                self._signers_due[j] += 1
        self._nonces_due = list(self._signers_due)
        self._job_nonces: list[dict[int, musig2.ParsedPubnonce]] = [{} for _ in jobs]  # parsed, until aggregated
        self._job_psigs: list[list[bytes]] = [[] for _ in jobs]  # until aggregated
        self._aggnonces: dict[int, bytes] = {}
        self._sessions: dict[int, musig2.SessionContext] = {}
        self._secnonces: dict[int, musig2.SecNonce] = {}
        self._sigs: dict[int, bytes] = {}
        self._signed: tuple[Tx, ...] = ()
        # Once the aggregate nonces went out, clients may have sent (and recorded) partial signatures:
        # a failed round's transactions may then only be proposed again unchanged (`factory.spends`).
        self.aggnonces_sent = False

    @property
    def clients(self) -> list[int]:
        return sorted(self.round.proposals)

    def start(self) -> list[Action]:
        if self.state is not CState.NEW:
            raise LocalProtocolError(f"start in state {self.state.value}")
        self.state = CState.AWAIT_NONCES
        record = Persist("round", {"kind": self.round.kind.name, "session_id": self.round.session_id.hex(),
                                   "jobs": [t.tx.txid for t in self.round.jobs]})
        return [record, *(Send(c, self.round.proposals[c]) for c in self.clients)]

    def receive(self, peer: int, msg: Message) -> list[Action]:
        """A message from client `peer`."""
        if self.state in (CState.NEW, CState.COMPLETE, CState.ERROR):
            if self.state is CState.NEW:
                raise LocalProtocolError("receive before start")
            return []  # late messages after the round ended change nothing
        if peer not in self.round.proposals:
            return []  # not a participant of this round: ignore, it cannot disturb the round
        try:
            if (msg.factory_id, msg.session_id) != (self.round.factory_id, self.round.session_id):
                raise _Violation(AbortCode.PROTOCOL_VIOLATION, "message for another session", peer)
            if isinstance(msg, Abort):
                raise _Violation(AbortCode(msg.code) if msg.code in AbortCode._value2member_map_ else AbortCode.REFUSED,
                                 f"client {peer} aborted: {msg.reason}", peer)
            handler = self.TRANSITIONS.get((self.state, type(msg)))
            if handler is None:
                raise _Violation(AbortCode.PROTOCOL_VIOLATION,
                                 f"{type(msg).__name__} not allowed in {self.state.value}", peer)
            return getattr(self, handler)(peer, msg)  # type: ignore[no-any-return]
        except _Violation as v:
            return self._fail(v)
        except Exception as e:  # hostile input must fail the round, never escape into the shell
            return self._fail(_Violation(AbortCode.PROTOCOL_VIOLATION, f"unprocessable message: {_describe(e)}", peer))

    def peer_failed(self, peer: int, reason: str, code: AbortCode = AbortCode.PEER_DISCONNECTED) -> list[Action]:
        """Client `peer` disconnected or timed out."""
        if self.state in (CState.NEW, CState.COMPLETE, CState.ERROR) or peer not in self.round.proposals:
            return []
        return self._fail(_Violation(code, f"client {peer}: {reason}", peer))

    def _fail(self, v: _Violation) -> list[Action]:
        self.state = CState.ERROR
        self._secnonces = {}
        abort = [Send(c, Abort(self.round.factory_id, self.round.session_id, int(v.code), v.reason[:900], v.culprit))
                 for c in self.clients]
        return [*abort, Failed(v.code, v.reason, v.culprit)]

    def _expect_once(self, seen: dict[int, Any] | set[int], peer: int) -> None:
        if peer in seen:
            raise _Violation(AbortCode.PROTOCOL_VIOLATION, "duplicate message", peer)

    # Each job is finished as soon as its last signer has answered, not when everyone has: the work
    # of a large round is spread over the time the clients take, and little is left at its end.

    def _on_nonces(self, peer: int, msg: Nonces) -> list[Action]:
        self._expect_once(self._nonces, peer)
        if len(msg.pubnonces) != len(self.round.client_jobs[peer]):
            raise _Violation(AbortCode.BAD_NONCE, "wrong number of nonces", peer)
        try:
            points = [musig2.parse_pubnonce(pn) for pn in msg.pubnonces]
        except ValueError:
            raise _Violation(AbortCode.BAD_NONCE, "invalid public nonce", peer) from None
        self._nonces[peer] = msg.pubnonces
        for j, pn in zip(self.round.client_jobs[peer], points):
            self._job_nonces[j][peer + 1] = pn
            self._nonces_due[j] -= 1
            if self._nonces_due[j] == 0:
                self._aggregate_nonces(j)
        if len(self._nonces) < len(self.round.proposals):
            return []
        if len(self._sessions) != len(self.round.jobs):
            raise _Violation(AbortCode.INTERNAL, "some jobs have no signer's nonces")
        self.state = CState.AWAIT_PSIGS
        self.aggnonces_sent = True
        return [Send(c, AggNonces(self.round.factory_id, self.round.session_id,
                                  tuple(self._aggnonces[j] for j in self.round.client_jobs[c])))
                for c in self.clients]

    def _aggregate_nonces(self, j: int) -> None:
        """Every client of job j sent its nonce: add ours, aggregate, and fix the job's session."""
        t = self.round.jobs[j]
        clients = self._job_nonces[j]
        if set(clients) != set(t.spend.signers) - {0}:
            raise _Violation(AbortCode.INTERNAL, f"job {t.name}: nonces from other than its signers")
        secnonce, pubnonce = musig2.nonce_gen_internal(self._rand(32), self._keypair.seckey, self._keypair.pubkey,
                                                       musig2.XonlyPk(_output_key(t)), t.sighash, None)
        self._secnonces[j] = secnonce
        self._aggnonces[j] = musig2.nonce_agg_parsed([musig2.parse_pubnonce(pubnonce), *clients.values()])
        self._sessions[j] = _session(t, self._aggnonces[j])
        self._job_nonces[j] = {}

    def _on_psigs(self, peer: int, msg: PartialSigs) -> list[Action]:
        self._expect_once(self._psigs, peer)
        jobs = self.round.client_jobs[peer]
        if len(msg.psigs) != len(jobs):
            raise _Violation(AbortCode.BAD_PARTIAL_SIG, "wrong number of partial signatures", peer)
        if any(int.from_bytes(psig, "big") >= musig2.N for psig in msg.psigs):
            raise _Violation(AbortCode.BAD_PARTIAL_SIG, "partial signature out of range", peer)
        # Each partial signature is checked when its job's aggregate is: a valid final signature
        # proves the set, and only a job whose aggregate fails has its partial signatures verified
        # one by one to name the culprit (as libsecp256k1's musig module advises).
        self._psigs[peer] = msg.psigs
        for j, psig in zip(jobs, msg.psigs):
            self._job_psigs[j].append(psig)
            if len(self._job_psigs[j]) == self._signers_due[j]:
                self._aggregate_signature(j)
        if len(self._psigs) < len(self.round.proposals):
            return []
        signed = tuple(self.round.jobs[j].tx.with_witness(0, [self._sigs[j]]) for j in range(len(self.round.jobs)))
        self._signed = signed
        self.state = CState.AWAIT_DONE
        record = Persist("signed", {"session_id": self.round.session_id.hex(), "txs": signed})
        sends = [Send(c, Signatures(self.round.factory_id, self.round.session_id,
                                    tuple(self._sigs[j] for j in self.round.client_jobs[c]))) for c in self.clients]
        return [record, *sends]

    def _aggregate_signature(self, j: int) -> None:
        """Every client of job j sent its partial signature: add ours and check the final one."""
        t, ctx = self.round.jobs[j], self._sessions[j]
        own = musig2.sign(self._secnonces.pop(j), self._keypair, ctx)
        sig = musig2.partial_sig_agg([own, *self._job_psigs[j]], ctx)
        if not schnorr_verify(t.sighash, _output_key(t), sig):
            raise self._blame(j)
        self._sigs[j] = sig
        self._job_psigs[j] = []

    def _blame(self, j: int) -> _Violation:
        """Job j's aggregate signature is invalid: find the client whose partial signature is."""
        t = self.round.jobs[j]
        for c, jobs in self.round.client_jobs.items():
            if j in jobs:
                k = jobs.index(j)
                pk = self.round.pubkeys[c + 1]
                if not musig2.partial_sig_verify_internal(self._psigs[c][k], self._nonces[c][k], pk, self._sessions[j]):
                    return _Violation(AbortCode.BAD_PARTIAL_SIG, f"invalid partial signature for {t.name}", c)
        return _Violation(AbortCode.INTERNAL, f"aggregate signature for {t.name} does not verify")

    def _on_done(self, peer: int, msg: Done) -> list[Action]:
        self._expect_once(self._done, peer)
        self._done.add(peer)
        if len(self._done) < len(self.round.proposals):
            return []
        self.state = CState.COMPLETE
        return [Completed(self._signed)]


class Participant:
    """A client's side of one round."""

    TRANSITIONS: dict[tuple[PState, type], str] = {
        (PState.AWAIT_PROPOSAL, Propose): "_on_propose",
        (PState.AWAIT_AGGNONCES, AggNonces): "_on_aggnonces",
        (PState.AWAIT_SIGNATURES, Signatures): "_on_signatures",
    }

    def __init__(self, expect: Expectation, seckey: bytes, rand: Rand = os.urandom,
                 ledger: Optional[Ledger] = None) -> None:
        self._keypair = musig2.Keypair(seckey)
        if self._keypair.pubkey != expect.pubkey:
            raise LocalProtocolError("the expectation's key is not ours")
        self.expect = expect
        # The spends this signer gave a partial signature for in this factory (`factory.spends`): a
        # proposal that spends one of those outputs differently is refused.
        self._ledger: Ledger = ledger or {}
        self.state = PState.AWAIT_PROPOSAL
        self._rand = rand
        self._ids: tuple[bytes, bytes] = (b"", b"")
        self.jobs: tuple[TreeTx, ...] = ()
        self._secnonces: list[musig2.SecNonce] = []
        self._aggnonces: Sequence[bytes] = ()
        self.signed: tuple[Tx, ...] = ()
        self.client_index: Optional[int] = None  # our index, once a proposal was accepted

    def receive(self, msg: Message) -> list[Action]:
        """A message from the LSP."""
        if self.state in (PState.COMPLETE, PState.ERROR):
            return []
        try:
            if self.state is not PState.AWAIT_PROPOSAL and (msg.factory_id, msg.session_id) != self._ids:
                raise _Violation(AbortCode.PROTOCOL_VIOLATION, "message for another session")
            if isinstance(msg, Abort):
                self.state = PState.ERROR
                self._secnonces = []
                return [Failed(AbortCode(msg.code) if msg.code in AbortCode._value2member_map_ else AbortCode.REFUSED,
                               f"LSP aborted: {msg.reason}", msg.culprit)]
            handler = self.TRANSITIONS.get((self.state, type(msg)))
            if handler is None:
                raise _Violation(AbortCode.PROTOCOL_VIOLATION, f"{type(msg).__name__} not allowed in {self.state.value}")
            return getattr(self, handler)(msg)  # type: ignore[no-any-return]
        except Exception as e:  # hostile input must fail the round, never escape into the shell
            v = e if isinstance(e, _Violation) else _Violation(AbortCode.PROTOCOL_VIOLATION,
                                                               f"unprocessable message: {_describe(e)}")
            return self._fail(v, msg)

    def _fail(self, v: _Violation, msg: Message) -> list[Action]:
        """Abort the round (the Abort names the reason) and forget the secret nonces."""
        self.state = PState.ERROR
        self._secnonces = []
        fid, sid = self._ids if self._ids[0] else (msg.factory_id, msg.session_id)
        return [Send(LSP_PEER, Abort(fid, sid, int(v.code), v.reason[:900], None)), Failed(v.code, v.reason)]

    def lsp_failed(self, reason: str) -> list[Action]:
        """The LSP disconnected or timed out: give up this round (nothing was funded for it)."""
        if self.state in (PState.COMPLETE, PState.ERROR):
            return []
        self.state = PState.ERROR
        self._secnonces = []
        return [Failed(AbortCode.PEER_DISCONNECTED, f"LSP: {reason}")]

    def abort(self, code: AbortCode, reason: str) -> list[Action]:
        """Give up this round on our side (a record we could not store): tell the LSP why. Also after the
        last step, whose Done the shell has not sent yet (the record that must precede it failed)."""
        if self.state is PState.ERROR or not self._ids[0]:
            return []
        self.state = PState.ERROR
        self._secnonces = []
        return [Send(LSP_PEER, Abort(*self._ids, int(code), reason[:900], None)), Failed(code, reason)]

    def _on_propose(self, msg: Propose) -> list[Action]:
        try:
            self.jobs = participant_jobs(self.expect, msg)
        except Exception as e:  # ProposalError, or anything a crafted proposal trips over
            self._ids = (msg.factory_id, msg.session_id)
            raise _Violation(AbortCode.BAD_PROPOSAL, f"proposal refused: {e}") from None
        self._ids = (msg.factory_id, msg.session_id)
        double = conflict(self._ledger, self.jobs)
        if double is not None:
            raise _Violation(AbortCode.BAD_PROPOSAL, f"proposal refused: {double}")
        self.client_index = msg.client_index
        pubnonces = []
        for t in self.jobs:
            secnonce, pubnonce = musig2.nonce_gen_internal(self._rand(32), self._keypair.seckey, self._keypair.pubkey,
                                                           musig2.XonlyPk(_output_key(t)), t.sighash, None)
            self._secnonces.append(secnonce)
            pubnonces.append(pubnonce)
        self.state = PState.AWAIT_AGGNONCES
        return [Send(LSP_PEER, Nonces(msg.factory_id, msg.session_id, tuple(pubnonces)))]

    def _on_aggnonces(self, msg: AggNonces) -> list[Action]:
        if len(msg.aggnonces) != len(self.jobs):
            raise _Violation(AbortCode.BAD_NONCE, "wrong number of aggregate nonces")
        psigs = []
        try:
            for t, secnonce, aggnonce in zip(self.jobs, self._secnonces, msg.aggnonces):
                psigs.append(musig2.sign(secnonce, self._keypair, _session(t, aggnonce)))
        except (ValueError, musig2.InvalidContributionError) as e:
            raise _Violation(AbortCode.BAD_NONCE, f"cannot sign with the aggregate nonce: {e}") from None
        finally:
            self._secnonces = []
        self._aggnonces = msg.aggnonces
        self.state = PState.AWAIT_SIGNATURES
        # The shell stores `spends` in the factory's ledger before the partial signatures go out.
        record = Persist("signing", {"session_id": msg.session_id.hex(), "jobs": [t.tx.txid for t in self.jobs],
                                     "spends": entries(self.jobs)})
        return [record, Send(LSP_PEER, PartialSigs(msg.factory_id, msg.session_id, tuple(psigs)))]

    def _on_signatures(self, msg: Signatures) -> list[Action]:
        if len(msg.sigs) != len(self.jobs):
            raise _Violation(AbortCode.BAD_SIGNATURE, "wrong number of signatures")
        for t, sig in zip(self.jobs, msg.sigs):
            if not schnorr_verify(t.sighash, _output_key(t), sig):
                raise _Violation(AbortCode.BAD_SIGNATURE, f"signature for {t.name} does not verify")
        self.signed = tuple(t.tx.with_witness(0, [sig]) for t, sig in zip(self.jobs, msg.sigs))
        self.state = PState.COMPLETE
        record = Persist("signed", {"session_id": msg.session_id.hex(), "txs": self.signed})
        return [record, Send(LSP_PEER, Done(msg.factory_id, msg.session_id)), Completed(self.signed)]
