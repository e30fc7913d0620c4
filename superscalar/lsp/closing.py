"""The LSP's side of the cooperative close and of the rollover of a factory.

`superscalar-close` (every client online):
  1. FREEZE: the factory record is marked `frozen` (durable): from then on the HTLC policy fails every
     new HTLC on its channels; we wait until none of them has a pending HTLC (timeout: unfreeze, fail).
  2. The CLOSE round is proposed: each client is paid floor(its channel balance msat / 1000) sat to its
     payout script (the one the distribution pays), the LSP the rest less the pre-agreed fee and anchor.
  3. Each client freezes its own side first (durable), checks in its own listpeerchannels that its
     channel holds no HTLC and that the close pays it at least floor(to_us_msat / 1000) sat, and that it
     spends its factory's funding output; otherwise it refuses, we abort and both sides unfreeze.
  4. The fully signed close is stored on both sides before it goes out (a client stores it before it
     sends Done; we as soon as we aggregate it); we broadcast it, and both sides rebroadcast it every
     block until it or a conflicting spend confirms (`chain/close_watch.py`).
  5. Once it confirms, the factory's channels are retired (`chain/retire.py`).

`superscalar-rollover` (the laddering calls the same code): the close's outputs are the next factory
B's funding output (output 0), the leavers' payouts, the LSP's rest and the anchor. B's clients are
the rolling clients; each has one B channel, of the capacity of its A channels together (its leaf
channel and the channels of the liquidity sales it bought, `superscalar/sales.py`), pushed exactly its
balance in them, in msat (and, if B still fits, its balance in its JIT wallet channels with us more
of inbound: it moves that balance into B afterwards, client/migration.py). Order: freeze A → invite B's clients (the invite names A; each client freezes its A
channels and checks they hold no HTLC, that B's capacity is theirs together and the push its own to_us_msat) →
`fundchannel_start` every B channel → B's tree over (close txid, 0) (the close's txid is final before
it is signed) → B's construction round (each client stores B's exit path before Done) → B recorded →
the CLOSE round on A (rolling clients check that output 0 is B's funding output they signed over,
leavers their payout, and send their nonces) → B's channels completed, only now that every client
has checked the close, before the aggregate nonces let anyone sign (a rolling client checks its B
channel holds its balance when they arrive) → the signed close stored on both sides → broadcast →
once it confirms A's channels are retired and B is funded. No HTLC moves on A's channels from the
freeze on, nor on B's until the close has confirmed. A client that refuses the close or goes away
before its nonce costs no channel: B's opens are cancelled, never completed (stock lightningd never
forgets a completed one, docs/retiring-channels.md).

Why the carry-over is atomic: A's funding output can be spent once. Either the close spends it, and
then B's funding output exists (it is output 0 of that very transaction) and A's channels are backed
by nothing and retired; or A's tree spends it (someone exits), and then A's channels are backed as
before and B's funding can never exist, so B's channels are treated as unfunded and closed. Each
client's balance is the same number in both (B's push is its A balance to the msat) and neither
channel moves it until that is settled (both frozen), so no side can lose it or hold it twice. Before
the close is fully signed by everyone it does not exist and aborting is free (unfreeze A, close B's
unbacked channels, drop B); once anyone holds it, it is only ever rebroadcast, never abandoned.

After a restart: a factory frozen without a signed close, whose ceremony died with the process, is
aborted (unfrozen; a next factory abandoned and its channels closed); one with a signed close goes on
being rebroadcast until it settles.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..crypto import musig2
from ..bitcoin.psbt import Psbt, PsbtInput, PsbtOutput
from ..bitcoin.tx import OutPoint, TxOut
from ..chain.close_watch import close_pending, drop_next_factory, new_close
from ..factory.errors import FactoryError
from ..factory.graph import Factory, FactoryScripts, TreeTx, cooperative_close, rollover_close
from ..factory.params import ClientTerms, FactoryParams
from ..cln.node import msat
from ..protocol.ceremony import Action, Completed, Coordinator, Failed, Persist, Send, grouped_sends
from ..protocol.rounds import close_round, construction_round
from ..protocol.wire import Abort, AbortCode, AggNonces, Invite, Message
from ..records import factory_key_label, path_entry
from ..sales import open_sales, sold_capacity_sat
from .creation import ClientSpec, Lsp, Pending, _lsp_record, _raise_first, _seckey, each_peer

POLL_SECONDS = 0.2
# A rollover that failed after the next factory's channels were completed leaves them behind in
# lightningd for good (docs/retiring-channels.md). After this many such failures of one factory, the
# ladder closes it instead (`leaving.roll_or_close`): a plain close opens no channel.
MAX_FAILED_ROLLOVERS = 3


class CloseError(RuntimeError):
    """superscalar-close / superscalar-rollover failed; the factory was unfrozen, nothing went out."""


class DoesNotFit(CloseError):
    """The next factory does not fit in this one's close (its L-stock cannot give up enough): the
    factory can be closed, not rolled over."""


@dataclass
class Session:
    """One CLOSE round on a factory: its clients by index (node ids), the coordinator and its outcome."""

    factory_id: bytes
    peers: list[str]
    session_id: bytes
    coordinator: Optional[Coordinator] = None
    outcome: Optional[Completed | Failed] = None
    signed: bool = False  # the fully signed close is stored
    # A rollover: the next factory's channels are completed once every client sent its nonce, before the
    # aggregate nonces (held here meanwhile) let anyone sign.
    open_first: bool = False
    deferred: Optional[list[Action]] = None
    aggnonces_out: bool = False  # they went out (not only made): only then may a client have signed
    cond: threading.Condition = field(default_factory=threading.Condition)


@dataclass(frozen=True)
class RollingClient:
    index: int  # in A
    node_id: str
    capacity_sat: int
    balance_msat: int


def factory_from_record(rec: dict[str, Any]) -> Factory:
    """The LSP's Factory object back from its record (for a factory at its initial state)."""
    params = FactoryParams.deserialize(rec["params"].encode())
    s = rec["scripts"]
    scripts = FactoryScripts(tuple(bytes.fromhex(x) for x in s["channels"]), tuple(bytes.fromhex(x) for x in s["payouts"]),
                             bytes.fromhex(s["lsp"]))
    return Factory(params, [ClientTerms(int(b), int(i)) for b, i in rec["terms"]],
                   [bytes.fromhex(k) for k in rec["pubkeys"]], scripts)


class Closer:
    def __init__(self, lsp: Lsp, log: Callable[..., None], timeout: float, dev_fail_at: str = "",
                 extra_inbound: Callable[[str], int] = lambda peer: 0) -> None:
        # Testing only (developer mode): "lsp-close-before-sign", "lsp-roll-after-b-channels" and
        # "lsp-close-after-sign" kill lightningd there; "lsp-close-underpay", "lsp-roll-wrong-output0" and
        # "lsp-roll-skip-complete" (one client's B channel never completed) propose an unfair close.
        self.lsp = lsp
        self.node, self.store, self.transport = lsp.node, lsp.store, lsp.transport
        self.log, self.timeout, self.dev_fail_at = log, timeout, dev_fail_at
        self.extra_inbound = extra_inbound  # sat more of inbound a rolling client's B channel gets (its JIT balance)
        self._sessions: dict[bytes, Session] = {}
        self._busy: set[str] = set()  # factory ids with a close or rollover under way in this process
        self._recovered = False  # the records left by an earlier process were looked at

    # --- messages (custommsg hook thread) ---

    def on_message(self, peer: str, msg: Message) -> bool:
        session = self._sessions.get(msg.factory_id)
        if session is None:
            return False
        if peer not in session.peers:
            return True
        with session.cond:
            if session.coordinator is not None:
                self._execute(session, session.coordinator.receive(session.peers.index(peer), msg))
            session.cond.notify_all()
        return True

    def on_disconnect(self, peer: str) -> None:
        for session in list(self._sessions.values()):
            if peer in session.peers and session.coordinator is not None:
                with session.cond:
                    self._execute(session, session.coordinator.peer_failed(session.peers.index(peer), "disconnected"))
                    session.cond.notify_all()

    def _execute(self, session: Session, actions: list[Action]) -> None:
        fid = session.factory_id.hex()
        if session.open_first and any(isinstance(a, Send) and isinstance(a.message, AggNonces) for a in actions):
            session.open_first = False  # every nonce is in: the worker completes the channels, then sends these
            session.deferred = actions
            session.cond.notify_all()
            return
        for a in grouped_sends(actions):
            if isinstance(a, Persist) and a.record == "signed":
                # Everyone signed: the close exists. It is stored before any client is sent it.
                rec = self.store.get(fid, "factory")
                assert rec is not None
                tx = a.data["txs"][0]
                job = session.coordinator.round.jobs[0] if session.coordinator else None
                assert job is not None
                rec["close"] = new_close(tx, (job.prevout.value, job.prevout.script_pubkey), self.node.blockheight(),
                                         (rec.get("frozen") or {}).get("next_factory"), a.data["txs"][1:])
                rec.pop("unfinished_close", None)  # finished
                self.store.put(fid, "factory", rec)
                session.signed = True
            elif isinstance(a, list):  # a round to every client, concurrently (a peer gone: on_disconnect fails it)
                if any(isinstance(m.message, AggNonces) for m in a):
                    session.aggnonces_out = True
                self.lsp.send_all([(session.peers[m.peer], m.message) for m in a])
            elif isinstance(a, (Completed, Failed)):
                session.outcome = a

    # --- the commands (worker threads) ---

    def close(self, factory_id: str, progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
        """The cooperative close. A round that failed after the aggregate nonces went out (some clients
        may have given their partial signatures, and will sign no other close) leaves the factory frozen
        with the close kept as `unfinished_close`: the next `close` proposes that same close again."""
        rec = self._start(factory_id, "close", None, resume=True)
        unfinished = rec.get("unfinished_close")
        try:
            balances = self._quiesce(factory_id, rec) if unfinished is None else []
            factory = factory_from_record(rec)
            if unfinished is not None:
                amounts = [int(a) for a in unfinished["amounts"]]
                progress(f"factory {factory_id}: signing again, unchanged, the close whose round failed")
            else:
                amounts = [factory.params.payout_sat(b) for b in balances]
            if self.dev_fail_at == "lsp-close-underpay":  # testing only: a client is paid 1 sat too little
                amounts[0] -= 1
            close = cooperative_close(factory, _funding(rec), amounts)
            if unfinished is not None and close.tx.to_hex() != unfinished["tx"]:
                raise CloseError("the unfinished close cannot be rebuilt unchanged")
            progress(f"factory {factory_id} frozen; proposing the close: clients get {amounts} sat")
            self._dev_crash_point("lsp-close-before-sign")
            self._close_round(factory_id, rec, factory, close, amounts)
            return self._finish(factory_id, close, progress,
                                {"payouts_sat": {c["peer_id"]: a for c, a in zip(rec["channels"], amounts)}})
        except Exception as e:
            if (self.store.get(factory_id, "factory") or {}).get("unfinished_close") is None:
                self._abort(factory_id, str(e))
            raise CloseError(str(e)) from None
        finally:
            self._busy.discard(factory_id)

    def rollover(self, factory_id: str, leave: list[str], progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
        rec = self._start(factory_id, "rollover", None)
        pending: Optional[Pending] = None
        opened: list[str] = []
        completed: list[str] = []
        try:
            peers = [c["peer_id"] for c in rec["channels"]]
            if set(leave) - set(peers):
                raise CloseError(f"not clients of this factory: {sorted(set(leave) - set(peers))}")
            if set(leave) == set(peers):
                raise CloseError("every client leaves: use superscalar-close")
            balances = self._quiesce(factory_id, rec)
            factory = factory_from_record(rec)
            # a client's liquidity-sale channels roll over into its one channel of B: their capacities and
            # balances add up with its leaf channel's (a sale's capacity came out of A's L-stock)
            rolling = [RollingClient(i, p, factory.terms[i].capacity_sat + sold_capacity_sat(rec.get("sales", []), p),
                                     balances[i]) for i, p in enumerate(peers) if p not in leave]
            leaver_amounts = [factory.params.payout_sat(balances[i]) if p in leave else 0 for i, p in enumerate(peers)]
            fid_b = secrets.token_bytes(32)
            rec = self.store.get(factory_id, "factory") or rec
            rec["frozen"]["next_factory"] = fid_b.hex()  # durable before anyone hears of B
            self.store.put(factory_id, "factory", rec)
            push = {r.node_id: r.balance_msat for r in rolling}
            # A client's balance in its JIT wallet channels with us moves into its B channel after the
            # rollover (client/migration.py): B gives it that much more inbound, if B still fits in the close.
            extra = {r.node_id: self.extra_inbound(r.node_id) for r in rolling}
            params = self.lsp.params_for(len(rolling), self.node.blockheight())
            try:
                specs = [ClientSpec(r.node_id, r.balance_msat // 1000, r.capacity_sat + extra[r.node_id] - r.balance_msat // 1000)
                         for r in rolling]
                params = fit_lstock(params, specs, factory, _funding(rec), leaver_amounts)
            except DoesNotFit:
                if not any(extra.values()):
                    raise
                specs = [ClientSpec(r.node_id, r.balance_msat // 1000, r.capacity_sat - r.balance_msat // 1000) for r in rolling]
                params = fit_lstock(params, specs, factory, _funding(rec), leaver_amounts)
            pending = Pending(fid_b, specs, params, secrets.token_bytes(32))
            self.lsp._pending[fid_b] = pending
            progress(f"factory {factory_id} frozen; inviting {len(rolling)} clients into factory {fid_b.hex()}")
            invites = [(c.node_id, Invite(fid_b, pending.invite_id, params.serialize(), c.balance_sat, c.inbound_sat,
                                          bytes.fromhex(factory_id), push[c.node_id])) for c in specs]
            _raise_first([e for e in self.transport.send_many(invites) if e is not None])
            self.lsp._wait(pending, lambda: len(pending.accepts) == len(specs), "clients to accept the rollover")
            specs = pending.number_by_key()
            lsp_sk = _seckey(self.node.secret(factory_key_label(self.node.node_id(), fid_b, "lsp")))
            pubkeys = [musig2.individual_pk(lsp_sk)] + [pending.accepts[i].pubkey for i in range(len(specs))]
            progress("all clients accepted; opening their channels")
            started = each_peer(lambda c: self.node.fundchannel_start(c.node_id, c.balance_sat + c.inbound_sat,
                                                                     push[c.node_id]), specs)
            opened.extend(c.node_id for c, r in zip(specs, started) if not isinstance(r, Exception))
            channels = _raise_first(started)
            b = Factory(params, [ClientTerms(c.balance_sat, c.inbound_sat) for c in specs], pubkeys,
                        FactoryScripts(tuple(channels), tuple(pending.accepts[i].payout_script for i in range(len(specs))),
                                       self.node.new_script()))
            try:
                close = rollover_close(factory, _funding(rec), b.funding_output, leaver_amounts)
            except FactoryError as e:
                raise CloseError(str(e)) from None
            graph = b.graph(OutPoint.from_hex(close.tx.txid, 0))
            if self.dev_fail_at == "lsp-roll-wrong-output0":  # testing only: B is signed over another close
                close = rollover_close(factory, _funding(rec), TxOut(b.funding_output.value - 1_000,
                                                                     b.funding_output.script_pubkey), leaver_amounts)
            progress(f"factory {fid_b.hex()} funded by the close {close.tx.txid}:0 ({b.funding_output.value} sat); "
                     f"signing its {len(graph.txs()) + 1} transactions")
            with pending.cond:
                pending.coordinator = Coordinator(construction_round(b, graph, fid_b, secrets.token_bytes(32)), lsp_sk)
                self.lsp._execute(pending, pending.coordinator.start())
            self.lsp._wait(pending, lambda: pending.outcome is not None, "the next factory's signing ceremony")
            if isinstance(pending.outcome, Failed):
                raise CloseError(f"the next factory's ceremony failed: {pending.outcome.reason}")
            progress("every client holds its signed exit path; proposing the close")
            record = _next_record(b, graph, specs, pending, factory_id, push)
            self.store.put(fid_b.hex(), "factory", record)

            def complete(i: int) -> str:
                if self.dev_fail_at == "lsp-roll-skip-complete" and i == 0:  # testing only: no channel on this leaf
                    self.node.fundchannel_cancel(specs[i].node_id)
                    return "00" * 32
                leaf = graph.states[b.topology.leaf_of_client[i]]
                psbt = Psbt(leaf.tx, (PsbtInput(witness_utxo=leaf.prevout),), tuple(PsbtOutput() for _ in leaf.tx.outputs))
                return self.node.fundchannel_complete(specs[i].node_id, psbt.to_base64())

            def complete_all() -> None:
                """Every client of A sent its nonce for the close (it checked the proposal): B's channels
                are completed now, before anyone can sign the close, so a refusal costs no channel."""
                progress(f"every client checked the close; completing the channels of factory {fid_b.hex()}")
                done = each_peer(complete, list(range(len(specs))))
                for i, channel_id in enumerate(done):
                    if not isinstance(channel_id, Exception):
                        opened.remove(specs[i].node_id)
                        completed.append(channel_id)
                        record["channels"][i]["channel_id"] = channel_id
                self.store.put(fid_b.hex(), "factory", record)
                _raise_first(done)
                record["stage"] = "rolling"  # every B channel exists; funded once the close confirms
                self.store.put(fid_b.hex(), "factory", record)
                self._dev_crash_point("lsp-roll-after-b-channels")

            self._close_round(factory_id, rec, factory, close, before_signing=complete_all)
            self.lsp._pending.pop(fid_b, None)
            return self._finish(factory_id, close, progress, {
                "next_factory": fid_b.hex(), "next_funding_outpoint": f"{close.tx.txid}:0",
                "next_funding_sat": b.funding_output.value,
                "rolled": [{"peer_id": c.node_id, "push_msat": push[c.node_id], "channel_id": ch["channel_id"]}
                           for c, ch in zip(specs, record["channels"])],
                "payouts_sat": {p: a for p, a in zip(peers, leaver_amounts) if p in leave}})
        except Exception as e:
            if pending is not None:
                self.lsp._abort(pending, opened, None, [])
                self.lsp._pending.pop(pending.factory_id, None)
            if completed:
                self._count_failed_rollover(factory_id, len(completed))
            self._abort(factory_id, str(e))
            raise (DoesNotFit if isinstance(e, DoesNotFit) else CloseError)(str(e)) from None
        finally:
            self._busy.discard(factory_id)

    # --- steps ---

    def _count_failed_rollover(self, factory_id: str, channels: int) -> None:
        """A rollover failed after `channels` channels of its next factory were completed (they stay
        behind, closed as unbacked): counted, durably, for `roll_or_close`."""
        rec = self.store.get(factory_id, "factory")
        if rec is None:
            return
        rec["failed_rollovers"] = int(rec.get("failed_rollovers", 0)) + 1
        rec["dead_rollover_channels"] = int(rec.get("dead_rollover_channels", 0)) + channels
        self.store.put(factory_id, "factory", rec)
        self.log(f"factory {factory_id}: rollover failed after {channels} channels of its next factory were "
                 f"completed ({rec['failed_rollovers']} such failures, {rec['dead_rollover_channels']} channels left "
                 f"behind; after {MAX_FAILED_ROLLOVERS} the ladder closes it instead)", level="unusual")

    def _start(self, factory_id: str, reason: str, next_factory: Optional[str], resume: bool = False) -> dict[str, Any]:
        """Check the factory can be closed now and freeze it (durable). With `resume`, a factory frozen
        with an unfinished close is taken as it is (still frozen)."""
        if factory_id in self._busy:
            raise CloseError(f"factory {factory_id}: a close is already under way")
        rec = self.store.get(factory_id, "factory")
        if rec is None or rec.get("role") != "lsp":
            raise CloseError(f"no factory {factory_id} of which this node is the LSP")
        if rec.get("unfinished_close") is not None:
            if not resume:
                raise CloseError(f"factory {factory_id} has a close to finish first: superscalar-close signs it again")
            if rec.get("close") is None:
                self._connected(rec)
                self._busy.add(factory_id)
                return rec
        if rec.get("abandoned_close") is not None:
            raise CloseError(f"factory {factory_id}: clients may hold their signature of the rollover close "
                             f"{rec['abandoned_close']['txid']}, whose round failed, and would refuse any other "
                             "close; it ends by their exits or by the distribution")
        if rec.get("stage") != "funded" or rec.get("close") is not None or rec.get("frozen"):
            raise CloseError(f"factory {factory_id} cannot be closed now (stage {rec.get('stage')}, "
                             f"close {(rec.get('close') or {}).get('status')}, frozen {bool(rec.get('frozen'))})")
        if self.store.get(factory_id, "exit") is not None:
            raise CloseError(f"factory {factory_id} is being exited")
        self._connected(rec)
        self._busy.add(factory_id)
        rec["frozen"] = {"reason": reason, "since_height": self.node.blockheight(), "next_factory": next_factory,
                         "close_txid": None, "partial_signed": False}
        self.store.put(factory_id, "factory", rec)
        return rec

    def _connected(self, rec: dict[str, Any]) -> None:
        live = {c["channel_id"]: c for c in self.node.peer_channels()}
        for c in rec["channels"]:
            ch = live.get(c.get("channel_id"))
            if ch is None or ch.get("state") != "CHANNELD_NORMAL" or not ch.get("peer_connected"):
                raise CloseError(f"client {c['peer_id']} is not connected with a normal channel")

    def _quiesce(self, factory_id: str, rec: dict[str, Any]) -> list[int]:
        """Wait until no channel of the frozen factory has a pending HTLC; each client's balance (msat)."""
        ids = [str(c["channel_id"]) for c in rec["channels"]]
        peers = [str(c["peer_id"]) for c in rec["channels"]]
        # a client's channels on liquidity sales (superscalar/sales.py): their balances are paid with its leaf's
        sales = {str(s["channel_id"]): str(s["peer_id"]) for s in open_sales(rec.get("sales", []))}
        deadline = time.monotonic() + self.timeout
        while True:
            live = {c["channel_id"]: c for c in self.node.peer_channels()}
            chans = [live.get(i) for i in [*ids, *sales]]
            if any(ch is None or ch.get("state") != "CHANNELD_NORMAL" for ch in chans):
                raise CloseError("a channel of the factory is not normal any more")
            if not any(ch.get("htlcs") for ch in chans if ch is not None):
                balances = [msat(live[i]["total_msat"]) - msat(live[i]["to_us_msat"]) for i in ids]
                for channel_id, peer in sales.items():
                    balances[peers.index(peer)] += msat(live[channel_id]["total_msat"]) - msat(live[channel_id]["to_us_msat"])
                return balances
            if time.monotonic() > deadline:
                raise CloseError(f"factory {factory_id}: HTLCs still pending after {self.timeout:.0f} s")
            time.sleep(POLL_SECONDS)

    def _close_round(self, factory_id: str, rec: dict[str, Any], factory: Factory, close: TreeTx,
                     amounts: Optional[list[int]] = None, before_signing: Optional[Callable[[], None]] = None) -> None:
        """Sign `close` with every client. `amounts` (a plain close's payouts): a failure after the aggregate
        nonces went out keeps the close as `unfinished_close`, the factory frozen. `before_signing` (a
        rollover: complete the next factory's channels) runs once every client sent its nonce, before the
        aggregate nonces go out; if it raises, the round fails with nothing signed."""
        fid = bytes.fromhex(factory_id)
        lsp_sk = _seckey(self.node.secret(factory_key_label(self.node.node_id(), fid, "lsp")))
        session = Session(fid, [c["peer_id"] for c in rec["channels"]], secrets.token_bytes(32),
                          open_first=before_signing is not None)
        self._sessions[fid] = session
        try:
            with session.cond:
                plain = not (rec.get("frozen") or {}).get("next_factory")  # a rollover's close has no variants
                session.coordinator = Coordinator(close_round(factory, close, _funding(rec), fid, session.session_id,
                                                              variants=plain), lsp_sk)
                self._execute(session, session.coordinator.start())
                session.cond.wait_for(lambda: session.outcome is not None or session.deferred is not None,
                                      self.timeout)
            if before_signing is not None and session.outcome is None and session.deferred is not None:
                try:
                    before_signing()
                except Exception as e:
                    with session.cond:
                        if session.outcome is None:
                            self._execute(session, session.coordinator.peer_failed(
                                0, f"the next factory's channels could not be completed: {e}", AbortCode.INTERNAL))
                else:
                    with session.cond:
                        deferred, session.deferred = session.deferred, None
                        if session.outcome is None:
                            self._execute(session, deferred)
                with session.cond:
                    session.cond.wait_for(lambda: session.outcome is not None, self.timeout)
            if session.signed:
                return  # the close exists: it goes out whatever happened to the Done messages
            if session.outcome is None:
                with session.cond:
                    self._execute(session, session.coordinator.peer_failed(0, "timed out", AbortCode.TIMEOUT))
            reason = getattr(session.outcome, "reason", "timed out")
            if amounts is not None and session.aggnonces_out:
                stored = self.store.get(factory_id, "factory")
                assert stored is not None
                stored["unfinished_close"] = {"tx": close.tx.to_hex(), "amounts": amounts,
                                              "height": self.node.blockheight(), "reason": reason}
                self.store.put(factory_id, "factory", stored)
                raise CloseError(f"close round failed after clients may have signed ({reason}): the factory stays "
                                 "frozen; superscalar-close signs the same close again")
            if amounts is None and session.aggnonces_out:
                # A rollover's close, which clients may have signed: they refuse any other close of this
                # factory, and this one needs the next factory that is now dropped. It ends by their exits
                # (after max_close_wait_blocks) or by the distribution; no more rollovers are tried.
                stored = self.store.get(factory_id, "factory")
                assert stored is not None
                stored["abandoned_close"] = {"txid": close.tx.txid, "height": self.node.blockheight(), "reason": reason}
                self.store.put(factory_id, "factory", stored)
            raise CloseError(f"close round failed: {reason}")
        finally:
            self._sessions.pop(fid, None)

    def _finish(self, factory_id: str, close: TreeTx, progress: Callable[[str], None], extra: dict[str, Any]) -> dict[str, Any]:
        self._dev_crash_point("lsp-close-after-sign")
        rec = self.store.get(factory_id, "factory")
        assert rec is not None and rec.get("close") is not None
        signed = rec["close"]
        value, script = signed["prevout"]
        why = self.node.broadcast(signed["tx"], [(int(value), bytes.fromhex(script))])
        if why is None:
            signed["status"] = "broadcast"
            self.store.put(factory_id, "factory", rec)
            progress(f"cooperative close {signed['txid']} broadcast")
        else:
            self.log(f"factory {factory_id}: broadcasting the close {signed['txid']}: {why}; retried every block")
        lsp_out = next(o for o in close.tx.outputs if o.script_pubkey == bytes.fromhex(rec["scripts"]["lsp"]))
        return {"factory_id": factory_id, "close_txid": signed["txid"], "status": signed["status"],
                "fee_sat": close.fee, "anchor_sat": close.tx.outputs[-1].value, "lsp_sat": lsp_out.value, **extra}

    def _abort(self, factory_id: str, reason: str) -> None:
        """Before the close exists: tell the clients, unfreeze, drop the next factory. Never after."""
        rec = self.store.get(factory_id, "factory")
        if rec is None or rec.get("close") is not None or not rec.get("frozen"):
            return
        for c in rec["channels"]:
            try:
                self.transport.send(c["peer_id"], Abort(bytes.fromhex(factory_id), bytes(32), int(AbortCode.REFUSED),
                                                        f"close aborted: {reason}"[:900], None))
            except Exception as e:
                self.log(f"close abort to {c['peer_id']}: {e}")
        self.unfreeze(factory_id, rec, reason)

    def unfreeze(self, factory_id: str, rec: dict[str, Any], reason: str) -> None:
        next_factory = (rec.get("frozen") or {}).get("next_factory")
        rec.pop("frozen", None)
        self.store.put(factory_id, "factory", rec)
        self.log(f"factory {factory_id}: close aborted ({reason}); unfrozen")
        if next_factory:
            drop_next_factory(self.store, next_factory, f"the rollover of {factory_id} was aborted: {reason}")

    def on_block(self, height: int) -> None:
        """At the first block after a start: a frozen factory with no close under way in this process and
        no signed close is unfrozen (its next factory abandoned); a signed one is left to the close watch.
        (Within a process every failure aborts at once, so later blocks have nothing to recover.)"""
        if self._recovered:
            return
        self._recovered = True
        for fid in self.store.factory_ids():
            if fid in self._busy:
                continue
            rec = self.store.get(fid, "factory")
            if (rec is None or rec.get("role") != "lsp" or close_pending(rec)
                    or (rec.get("frozen") or {}).get("reason") not in ("close", "rollover")):
                continue
            if rec.get("close") is None and rec.get("unfinished_close") is None:
                self.unfreeze(fid, rec, "its ceremony did not survive a restart")

    def _dev_crash_point(self, name: str) -> None:
        self.lsp._dev_crash_point(name, kill_node=True)


def _funding(rec: dict[str, Any]) -> OutPoint:
    txid, vout = rec["funding_outpoint"].split(":")
    return OutPoint.from_hex(txid, int(vout))


def _next_record(b: Factory, graph: Any, specs: list[ClientSpec], pending: Pending, rollover_of: str,
                 push: dict[str, int]) -> dict[str, Any]:
    """B's record: like a created factory's, funded by A's close, frozen until that confirms."""
    record = _lsp_record(b, graph, specs, [None] * len(specs))
    assert pending.coordinator is not None and isinstance(pending.outcome, Completed)
    signed = {t.name: tx for t, tx in zip(pending.coordinator.round.jobs, pending.outcome.signed)}
    record["txs"] = [path_entry(t.name, signed[t.name].to_hex(), t.prevout.value, t.prevout.script_pubkey)
                     for t in graph.txs()]
    record["paths"] = [[t.name for t in graph.path_txs(i)] for i in range(len(specs))]
    record["distribution"] = signed["distribution"].to_hex()
    record["distribution_variants"] = [signed[t.name].to_hex() for t in graph.distributions()[1:]]
    record["stage"] = "rollover-completing"
    record["rollover_of"] = rollover_of
    record["frozen"] = {"reason": "rollover-funding", "since_height": b.params.start_height, "next_factory": None}
    for ch, c in zip(record["channels"], specs):
        ch["push_msat"] = push[c.node_id]
    return record


def fit_lstock(params: FactoryParams, specs: list[ClientSpec], factory: Factory, funding: OutPoint,
               leaver_amounts: list[int]) -> FactoryParams:
    """The next factory's parameters, its L-stock per leaf cut so that its funding fits in this
    factory's close. Without leavers the next factory needs as much as this one held, and the close
    also pays its own fee, its anchor and at least a dust-limit output to the LSP: each leaf's L-stock
    (the LSP's own liquidity) gives up an equal share of that. Funding values are linear in the
    L-stock and do not depend on keys, so a factory of placeholder keys measures it. Raises
    CloseError when the L-stock cannot absorb it (a client must leave, or the LSP close instead)."""
    least = params.dust_limit_sat
    try:
        probe = rollover_close(factory, funding, TxOut(least, factory.funding_output.script_pubkey), leaver_amounts)
    except FactoryError as e:
        raise CloseError(str(e)) from None
    room = least + probe.tx.outputs[-2].value - params.dust_limit_sat  # the LSP's rest comes before the anchor
    need = _funding_value(params, specs, factory.scripts.channels[0])
    if need <= room:
        return params
    leaves = -(-len(specs) // params.leaf_arity)
    lstock = params.lstock_sat - -(-(need - room) // leaves)
    if lstock < params.dust_limit_sat:
        raise DoesNotFit(f"the next factory ({need} sat) does not fit in this one's close ({room} sat) even with "
                         f"its L-stock at the dust limit: let a client leave, or close instead")
    return dataclasses.replace(params, lstock_sat=lstock)


def _funding_value(params: FactoryParams, specs: list[ClientSpec], channel_script: bytes) -> int:
    """What a factory of `specs` needs: `channel_script` stands for every leaf channel's (lightningd
    makes them all alike, so the sizes and the fees are the same)."""
    n = len(specs)
    keys = [musig2.individual_pk((i + 1).to_bytes(32, "big")) for i in range(n + 1)]
    b = Factory(params, [ClientTerms(c.balance_sat, c.inbound_sat) for c in specs], keys,
                FactoryScripts((channel_script,) * n, (channel_script,) * n, channel_script))
    return b.funding_output.value
