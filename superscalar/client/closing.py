"""The client's side of a cooperative close and of a rollover (see `lsp/closing.py` for the ceremony and
why the carry-over is atomic).

A client signs a close of its factory only after it froze its own side (durable: its HTLC policy then
refuses every HTLC on that channel) and checked, in its own `listpeerchannels`, that the channel holds
no pending HTLC and that the close spends its factory's funding output and pays it at least
floor(to_us_msat / 1000) sat to its payout script, or, when it rolls into the next factory, that the
close's txid and output 0 are exactly the funding of the next factory whose exit path it stored, and
that its channel on that factory's leaf exists in its own lightningd holding exactly its balance (checked
when the aggregate nonces arrive, just before it signs: the LSP completes that channel only once every
client sent its nonce). A
rollover invitation is accepted only from the same LSP, for a factory it is in, once its channels there
(its leaf channel and those on the liquidity sales it bought) are frozen with no HTLC, and for one
channel of at least their capacity together (more is inbound for the balance of its JIT channels,
client/migration.py), pushed exactly its current balance in them.

The fully signed close is stored before Done goes out. Until this client has given its partial
signature nobody can hold the close, so aborting is free: the factory is unfrozen and a next factory
is given up (its channel closed as unbacked). After it, the close may exist: the channel stays frozen
until the close or another spend of the funding output confirms (`chain/close_watch.py`). The partial
signature is entered in the factory's ledger before it goes out (`factory.spends`): a retry of the
same close (same txid) is signed again, any other spend of the funding output is refused. So nobody
(a client withholding its partial signature, an LSP gone silent) can freeze us for longer than
`max_close_wait_blocks` after we signed: then, with no close confirmed, we start our own exit, which
either confirms (the channel is backed by its leaf, unfrozen) or loses to the close we signed (which
pays our balance).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..bitcoin.tx import OutPoint, Tx, TxOut
from ..chain.close_watch import close_pending, drop_next_factory, new_close
from ..factory.spends import ledger_of, record_signing
from ..factory.params import FactoryParams
from ..cln.node import ClnNode, msat
from ..protocol.ceremony import Action, Completed, Failed, Participant, Persist, Send
from ..protocol.rounds import Expectation, Kind
from ..protocol.wire import Abort, AbortCode, AggNonces, Invite, Message, Propose
from ..cln.store import Store
from ..cln.transport import Transport
from ..records import CONFIRMED, channel_in_factory, factory_key_label
from .policy import ClientPolicy

FREEZE_REASONS = ("close", "rollover")
# A completed zero-conf channel is CHANNELD_NORMAL once both sides sent channel_ready (a close proposal
# may come before that) or, after the close confirmed and gave it a short channel id, still normal.
NEXT_CHANNEL_STATES = ("CHANNELD_AWAITING_LOCKIN", "CHANNELD_NORMAL")
# A freeze with no close round under way for this many blocks is given up (an LSP that went quiet
# without disconnecting): before our partial signature nobody can hold the close.
STALE_FREEZE_BLOCKS = 3


@dataclass
class CloseSession:
    lsp: str
    participant: Participant
    session_id: bytes


class ClientCloser:
    def __init__(self, node: ClnNode, store: Store, transport: Transport, log: Callable[..., None],
                 dev_fail_at: str = "", max_close_wait_blocks: int = ClientPolicy().max_close_wait_blocks,
                 start_exit: Optional[Callable[[str], None]] = None) -> None:
        self.node, self.store, self.transport, self.log = node, store, transport, log
        # How long we stay frozen after our partial signature with no close confirmed, and how we then
        # leave: our unilateral exit (chain/routing.py exit_plan, started by the plugin).
        self.max_close_wait_blocks, self.start_exit = max_close_wait_blocks, start_exit
        # Test-only (developer mode): "client-close-on-propose" kills lightningd when a close proposal
        # arrives (after freezing); "client-close-after-sign" once the signed close is stored, before Done;
        # "client-close-withhold" never answers the aggregate nonces (its partial signature is withheld);
        # "client-close-aggnonces-disconnect" disconnects on them, once (the others signed; it signs the retry).
        self.dev_fail_at = dev_fail_at
        self._sessions: dict[str, CloseSession] = {}  # factory id → its close round
        self._live: set[str] = set()  # factories this process froze (a restart finds the others stale)
        self._signed_frozen: set[str] = set()  # factories frozen after our partial signature, close not held
        self._recovered = False  # every record was looked at once (at the first block after a start)

    # --- messages ---

    def on_message(self, peer: str, msg: Message) -> bool:
        fid = msg.factory_id.hex()
        if isinstance(msg, Propose) and msg.kind == int(Kind.CLOSE):
            self._on_propose(peer, msg)
            return True
        session = self._sessions.get(fid)
        if session is not None and session.lsp == peer:
            if self.dev_fail_at == "client-close-withhold" and isinstance(msg, AggNonces):
                self.log(f"dev: withholding our partial signature of the close of {fid}")
                return True  # the round hangs on us: the others signed, nobody can complete the close
            if self.dev_fail_at == "client-close-aggnonces-disconnect" and isinstance(msg, AggNonces):
                self.dev_fail_at = ""  # once: we come back and sign the retry
                self.log(f"dev: disconnecting from {peer} instead of signing the close of {fid}")
                self.node.rpc.call("disconnect", {"id": peer, "force": True})
                return True
            if isinstance(msg, AggNonces):
                missing = self._next_channel_missing(fid)
                if missing is not None:  # a rollover's close: our balance must have a channel to land in
                    self.log(f"factory {fid}: refusing to sign the close: {missing}")
                    self._execute(fid, session, session.participant.abort(AbortCode.BAD_PROPOSAL,
                                                                          f"close refused: {missing}"))
                    return True
            self._execute(fid, session, session.participant.receive(msg))
            return True
        if isinstance(msg, Abort):
            rec = self.store.get(fid, "factory")
            if rec is not None and rec.get("role") == "client" and rec.get("lsp") == peer and self._abortable(rec):
                self._unfreeze(fid, rec, f"the LSP aborted: {msg.reason}")
                return True
        return False

    def on_disconnect(self, peer: str) -> None:
        for fid, session in list(self._sessions.items()):
            if session.lsp == peer:
                self._execute(fid, session, session.participant.lsp_failed("disconnected"))
        for fid in list(self._live):
            rec = self.store.get(fid, "factory")
            if rec is not None and rec.get("lsp") == peer and fid not in self._sessions and self._abortable(rec):
                self._unfreeze(fid, rec, "the LSP disconnected")

    def rollover_dropped(self, factory_id: bytes, reason: str) -> None:
        """The invitation into the next factory of `factory_id` ended without a factory."""
        fid = factory_id.hex()
        rec = self.store.get(fid, "factory")
        if rec is not None and fid not in self._sessions and self._abortable(rec):
            self._unfreeze(fid, rec, f"the rollover ended: {reason}")

    def on_block(self, height: int) -> None:
        """A factory frozen by a process that is gone (a restart: every record is looked at once, at the
        first block), or frozen for STALE_FREEZE_BLOCKS with no close round, with no partial signature
        given: unfreeze it (and give up its next factory). One frozen after our partial signature, whose
        close we do not hold, for `max_close_wait_blocks`: exit."""
        first, self._recovered = not self._recovered, True
        for fid in self.store.factory_ids() if first else sorted(self._live | self._signed_frozen):
            if fid in self._sessions:
                continue
            rec = self.store.get(fid, "factory")
            if rec is not None and rec.get("role") == "client" and self._waiting_for_close(rec):
                self._signed_frozen.add(fid)
                self._exit_if_overdue(fid, rec, height)
                continue
            self._signed_frozen.discard(fid)
            if rec is None or rec.get("role") != "client" or not self._abortable(rec):
                continue
            if fid not in self._live:
                self._unfreeze(fid, rec, "its ceremony did not survive a restart")
            elif height >= int(rec["frozen"]["since_height"]) + STALE_FREEZE_BLOCKS:
                self._unfreeze(fid, rec, f"no close round for {STALE_FREEZE_BLOCKS} blocks")

    @staticmethod
    def _waiting_for_close(rec: dict[str, Any]) -> bool:
        """Frozen after our partial signature, without the full close (someone withheld the rest)?"""
        freeze = rec.get("frozen") or {}
        return bool(freeze.get("partial_signed")) and rec.get("close") is None

    def _exit_if_overdue(self, fid: str, rec: dict[str, Any], height: int) -> None:
        freeze = rec["frozen"]
        since = int(freeze.get("partial_signed_height", freeze["since_height"]))
        if height < since + self.max_close_wait_blocks or freeze.get("exit_started_height") is not None:
            return
        if self.start_exit is None:
            return
        self.log(f"factory {fid}: frozen since height {since} after we signed close {freeze.get('close_txid')}, "
                 f"which nobody completed in {self.max_close_wait_blocks} blocks: starting our exit", level="unusual")
        self.start_exit(fid)
        freeze["exit_started_height"] = height
        self.store.put(fid, "factory", rec)

    @staticmethod
    def _abortable(rec: dict[str, Any]) -> bool:
        freeze = rec.get("frozen") or {}
        return (freeze.get("reason") in FREEZE_REASONS and rec.get("close") is None
                and not close_pending(rec))

    # --- freezing ---

    def _freeze(self, fid: str, rec: dict[str, Any], reason: str, next_factory: Optional[str]) -> None:
        rec["frozen"] = {"reason": reason, "since_height": self.node.blockheight(), "next_factory": next_factory,
                         "close_txid": None, "partial_signed": False}
        self.store.put(fid, "factory", rec)
        self._live.add(fid)

    def _unfreeze(self, fid: str, rec: dict[str, Any], reason: str) -> None:
        next_factory = (rec.get("frozen") or {}).get("next_factory")
        rec.pop("frozen", None)
        self.store.put(fid, "factory", rec)
        self._live.discard(fid)
        self.log(f"factory {fid}: close aborted ({reason}); unfrozen")
        if next_factory and self.store.get(next_factory, "factory") is not None:
            drop_next_factory(self.store, next_factory, f"the rollover of {fid} was aborted: {reason}")

    def _quiet_channels(self, rec: dict[str, Any], listing: Optional[list[dict[str, Any]]] = None
                        ) -> tuple[list[dict[str, Any]], str]:
        """Our channels in the factory (the leaf channel and those on our liquidity sales: a close pays
        their balances together, a rollover carries them into one channel), if they are all normal
        and hold no HTLC; else why not. From `listing` (our channels with the LSP) if given."""
        if listing is None:
            listing = self.node.peer_channels(rec["lsp"])
        chans = [ch for ch in listing if channel_in_factory(rec, ch)]
        leaf = [ch for ch in chans if f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" == rec["leaf_outpoint"]]
        if len(leaf) != 1 or any(ch.get("state") != "CHANNELD_NORMAL" for ch in chans):
            return [], "our channel in that factory is not normal"
        if any(ch.get("htlcs") for ch in chans):
            return [], "our channel in that factory has pending HTLCs"
        return chans, ""

    def _quiet_balance(self, rec: dict[str, Any], listing: list[dict[str, Any]]) -> tuple[Optional[int], str]:
        """Our balance (msat) in the factory's channels, if they are quiet (above); else why not."""
        chans, why = self._quiet_channels(rec, listing)
        return (sum(msat(ch["to_us_msat"]) for ch in chans), "") if chans else (None, why)

    def accept_rollover(self, peer: str, msg: Invite) -> Optional[str]:
        """An invitation into the next factory of one of ours: freeze our channel in it and check it;
        None if we accept, else why not (and the factory is unfrozen again)."""
        assert msg.rollover_of is not None
        fid = msg.rollover_of.hex()
        rec = self.store.get(fid, "factory")
        if rec is None or rec.get("role") != "client" or rec.get("lsp") != peer:
            return "a rollover of a factory we are not in with this LSP"
        if rec.get("frozen") or rec.get("close") is not None:
            return "that factory is already being closed"
        if rec.get("funding", {}).get("status", CONFIRMED) != CONFIRMED:
            return "that factory's funding has not confirmed"
        self._freeze(fid, rec, "rollover", msg.factory_id.hex())
        chans, why = self._quiet_channels(rec)
        balance = sum(msat(ch["to_us_msat"]) for ch in chans)
        capacity = sum(msat(ch["total_msat"]) for ch in chans) // 1000  # our channels' capacities in sat
        if not chans:
            pass
        elif msg.balance_sat + msg.inbound_sat < capacity:  # more is more inbound (our JIT balance moves in)
            why = f"the new channel's capacity is below our {len(chans)} channels' {capacity} sat"
        elif msg.push_msat != balance or msg.balance_sat != balance // 1000:
            why = f"the new channel is not pushed our balance of {balance} msat"
        if why:
            self._unfreeze(fid, rec, why)
            return why
        self.log(f"factory {fid}: frozen for its rollover into {msg.factory_id.hex()} ({balance} msat carried)")
        return None

    # --- the close round ---

    def _on_propose(self, peer: str, msg: Propose) -> None:
        fid = msg.factory_id.hex()
        if fid in self._sessions:
            return
        rec = self.store.get(fid, "factory")
        if rec is None or rec.get("role") != "client" or rec.get("lsp") != peer:
            return  # not a factory of ours with this LSP: nothing to sign
        freeze = rec.get("frozen") or {}
        why = None
        if rec.get("close") is not None:
            why = "we already hold the signed close of this factory"
        elif rec.get("funding", {}).get("status", CONFIRMED) != CONFIRMED:
            why = "the factory's funding has not confirmed"
        if why is None and not freeze:
            self._freeze(fid, rec, "close", None)
            freeze = rec["frozen"]
        self._dev_crash("client-close-on-propose")
        expect = None
        if why is None:
            expect, why = self._expectation(fid, rec, freeze.get("next_factory"))
        if why is not None or expect is None:
            self.log(f"factory {fid}: refusing the close: {why}")
            self.transport.send(peer, Abort(msg.factory_id, msg.session_id, int(AbortCode.BAD_PROPOSAL),
                                            f"close refused: {why}", None))
            if self._abortable(rec):
                self._unfreeze(fid, rec, str(why))
            return
        seckey = self.node.secret(factory_key_label(peer, msg.factory_id, "client"))
        # A retry of the close we gave a partial signature for (same txid) is signed again; any other
        # spend of the funding output is refused by the Participant (factory.spends).
        session = CloseSession(peer, Participant(expect, seckey, ledger=ledger_of(rec)), msg.session_id)
        self._sessions[fid] = session
        self._execute(fid, session, session.participant.receive(msg))

    def _expectation(self, fid: str, rec: dict[str, Any], next_factory: Optional[str]) -> tuple[Optional[Expectation], Optional[str]]:
        listing = self.node.peer_channels(rec["lsp"])  # our channels with the LSP, listed once
        balance, why = self._quiet_balance(rec, listing)
        if balance is None:
            return None, why
        txid, vout = rec["funding_outpoint"].split(":")
        value, _ = rec["path_prevouts"][0]
        funding = (OutPoint.from_hex(txid, int(vout)), int(value))
        pubkey = bytes.fromhex(rec["pubkey"])
        if next_factory:
            nxt = self.store.get(next_factory, "factory")
            if nxt is None or nxt.get("role") != "client" or nxt.get("rollover_of") != fid:
                return None, "we hold no next factory for this rollover"
            # (our channel in it is completed once every client sent its nonce: checked before we sign)
            ntxid, nvout = nxt["funding_outpoint"].split(":")
            nvalue, nscript = nxt["path_prevouts"][0]
            return Expectation(Kind.CLOSE, pubkey, funding=funding,
                               next_funding=(OutPoint.from_hex(ntxid, int(nvout)), TxOut(int(nvalue), bytes.fromhex(nscript)))), None
        payout = Tx.from_hex(rec["distribution"]).outputs[int(rec["client_index"])].script_pubkey
        params = FactoryParams.deserialize(rec["params"].encode())  # a balance below its dust limit is paid nothing
        return Expectation(Kind.CLOSE, pubkey, payout_script=payout, payout_sat=params.payout_sat(balance),
                           funding=funding), None

    def _next_channel_missing(self, fid: str) -> Optional[str]:
        """For a rollover's close: why our channel in the next factory cannot take our balance yet (see
        `next_channel_missing`), or None (also for a plain close)."""
        rec = self.store.get(fid, "factory") or {}
        next_factory = (rec.get("frozen") or {}).get("next_factory")
        if not next_factory:
            return None
        nxt = self.store.get(next_factory, "factory")
        if nxt is None:
            return "we hold no next factory for this rollover"
        return next_channel_missing(nxt, self.node.peer_channels(rec["lsp"]))

    def _execute(self, fid: str, session: CloseSession, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Persist) and a.record == "signing":
                rec = self.store.get(fid, "factory")
                assert rec is not None
                height = self.node.blockheight()
                rec["frozen"].update(partial_signed=True, close_txid=session.participant.jobs[0].tx.txid,
                                     close_txids=[t.tx.txid for t in session.participant.jobs],  # with variants
                                     scanned_height=int(rec["frozen"].get("scanned_height", height)),
                                     partial_signed_height=int(rec["frozen"].get("partial_signed_height", height)))
                self.store.put(fid, "factory", record_signing(rec, a.data["spends"]))  # before the Send
                self._signed_frozen.add(fid)
            elif isinstance(a, Persist) and a.record == "signed":
                rec = self.store.get(fid, "factory")
                assert rec is not None
                job = session.participant.jobs[0]
                rec["close"] = new_close(a.data["txs"][0], (job.prevout.value, job.prevout.script_pubkey),
                                         int(rec["frozen"].get("scanned_height", self.node.blockheight())),
                                         rec["frozen"].get("next_factory"), a.data["txs"][1:])
                self.store.put(fid, "factory", rec)
                self._dev_crash("client-close-after-sign")
            elif isinstance(a, Send):
                try:
                    self.transport.send(session.lsp, a.message)
                except Exception as e:
                    self.log(f"factory {fid}: send to the LSP failed: {e}")
            elif isinstance(a, Completed):
                self._sessions.pop(fid, None)
                self.log(f"factory {fid}: signed its cooperative close; stored, waiting for it to confirm")
            elif isinstance(a, Failed):
                self._sessions.pop(fid, None)
                rec = self.store.get(fid, "factory")
                if rec is not None and self._abortable(rec):
                    self._unfreeze(fid, rec, a.reason)
                else:
                    self.log(f"factory {fid}: close round failed after our partial signature ({a.reason}); "
                             "frozen until the close or another spend of the funding output confirms, or for "
                             f"{self.max_close_wait_blocks} blocks: then we exit")

    def _dev_crash(self, name: str) -> None:
        if self.dev_fail_at == name:
            self.log(f"dev: killing lightningd (SIGKILL) at {name}")
            os.kill(os.getppid(), signal.SIGKILL)


def next_channel_missing(nxt: dict[str, Any], listing: list[dict[str, Any]]) -> Optional[str]:
    """Why our channel in the next factory (client record `nxt`) is not among our channels with the LSP
    (`listing`) to receive our balance, or None if it is: once the close is signed the balance is in that
    leaf output only, and an output with no channel on it is a 2-of-2 we could not spend without the LSP."""
    chans = [ch for ch in listing if f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" == nxt["leaf_outpoint"]]
    if len(chans) != 1 or chans[0].get("state") not in NEXT_CHANNEL_STATES:
        return "our channel in the next factory was not completed"
    if msat(chans[0]["to_us_msat"]) != int(nxt["push_msat"]):
        return f"our channel in the next factory holds {msat(chans[0]['to_us_msat'])} msat, not {nxt['push_msat']}"
    return None
