"""The client's side of a liquidity sale (see `lsp/sale.py`).

Every client of the leaf signs each sale of that leaf's L-stock. A client signs only a sale that, by its
own record: comes from its factory's LSP, in a factory whose funding it has not given up on and which is
not being closed; spends exactly the leaf's current L-stock it knows (the last sale it signed, or its
leaf transaction's L-stock output: outpoint, value and script); keeps the rest of the L-stock on the same
N-of-N script; ends with the agreed anchor; and leaves exactly the factory's pre-agreed fee (rate × the
signed vsize, rebuilt by `protocol.rounds._sale_job`). The buyer (the client whose openchannel hook just
accepted a push-free zero-conf channel from that LSP, of exactly output 0's capacity) also checks that
output 0 is a P2WSH; once the channel exists its funding outpoint must be the sale's output 0 and its
funding script is checked from the client's own log like a leaf channel's (`membership.verify_leaf`).
The signed sale is appended to the `sales` list of the factory record before Done goes out; the client's
exit path then includes it (`sales.exit_additions`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..bitcoin.tx import OutPoint, OutputVector, Tx, TxOut
from ..factory.params import FactoryParams
from ..factory.tree import build_topology
from ..node import ClnNode
from ..protocol.ceremony import Action, Completed, Failed, Participant, Persist, Send
from ..protocol.rounds import Expectation, Kind
from ..protocol.wire import Abort, AbortCode, Message, Propose
from ..sales import OPEN, current_lstock, sale_entry
from ..store import Store
from ..transport import Transport
from .membership import UNVERIFIED, factory_key_label, funding_ok

EXPECT_SECONDS = 120.0  # how long an accepted sale channel open waits for its proposal


@dataclass
class SaleSignSession:
    lsp: str
    participant: Participant
    leaf: int
    mine: bool


class ClientSales:
    def __init__(self, node: ClnNode, store: Store, transport: Transport, log: Callable[[str], None]) -> None:
        self.node, self.store, self.transport, self.log = node, store, transport, log
        self._sessions: dict[str, SaleSignSession] = {}  # factory id → its sale round
        self._expected: dict[str, tuple[int, float]] = {}  # LSP → (capacity sat, when) of a sale channel it opened
        self._lock = threading.Lock()

    # --- openchannel hook ---

    def expect_channel(self, lsp: str, capacity_sat: int) -> bool:
        """A push-free channel open from `lsp`: zero-conf if it may be a sale out of the L-stock of one of
        our factories with it (a leaf whose current L-stock can fund it). Nothing is credited to it until
        a signed sale we hold names its funding outpoint (the HTLC index knows it only then)."""
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is None or rec.get("role") != "client" or rec.get("lsp") != lsp or not funding_ok(rec):
                continue
            _, (_, lstock) = self._lstock(rec)
            if capacity_sat < lstock.value:
                with self._lock:
                    self._expected[lsp] = (capacity_sat, time.monotonic())
                return True
        return False

    # --- messages ---

    def on_message(self, peer: str, msg: Message) -> bool:
        fid = msg.factory_id.hex()
        if isinstance(msg, Propose) and msg.kind == int(Kind.SALE):
            self._on_propose(peer, msg)
            return True
        session = self._sessions.get(fid)
        if session is not None and session.lsp == peer:
            self._execute(fid, session, session.participant.receive(msg))
            return True
        return False

    def on_disconnect(self, peer: str) -> None:
        for fid, session in list(self._sessions.items()):
            if session.lsp == peer:
                self._execute(fid, session, session.participant.lsp_failed("disconnected"))

    @staticmethod
    def _lstock(rec: dict[str, Any]) -> tuple[int, tuple[OutPoint, TxOut]]:
        params = FactoryParams.deserialize(rec["params"].encode())
        topology = build_topology(params.n_clients, params.leaf_arity, params.arity)
        leaf = topology.leaf_of_client[int(rec["client_index"])]
        return leaf, current_lstock(Tx.from_hex(rec["signed_path"][-1]), rec.get("sales", []), leaf)

    def _refuse(self, peer: str, msg: Message, why: str) -> None:
        self.log(f"factory {msg.factory_id.hex()}: refusing the sale: {why}")
        self.transport.send(peer, Abort(msg.factory_id, msg.session_id, int(AbortCode.BAD_PROPOSAL),
                                        f"sale refused: {why}"[:900], None))

    def _on_propose(self, peer: str, msg: Propose) -> None:
        fid = msg.factory_id.hex()
        rec = self.store.get(fid, "factory")
        if rec is None or rec.get("role") != "client" or rec.get("lsp") != peer:
            return  # not a factory of ours with this LSP: nothing to sign
        if fid in self._sessions:
            self._refuse(peer, msg, "a sale of this factory is already being signed")
            return
        why = self._check(rec, msg)
        if why is not None:
            self._refuse(peer, msg, why)
            return
        leaf, _ = self._lstock(rec)
        outputs = tuple(OutputVector(msg.path_outputs[0]))
        mine = self._is_mine(peer, outputs[0].value)
        if mine and not (len(outputs[0].script_pubkey) == 34 and outputs[0].script_pubkey[:2] == b"\x00\x20"):
            self._refuse(peer, msg, "our new channel's output is not a P2WSH")
            return
        params = FactoryParams.deserialize(rec["params"].encode())
        expect = Expectation(Kind.SALE, bytes.fromhex(rec["pubkey"]), params=params)
        seckey = self.node.secret(factory_key_label(peer, msg.factory_id, "client"))
        session = SaleSignSession(peer, Participant(expect, seckey), leaf, mine)
        self._sessions[fid] = session
        self._execute(fid, session, session.participant.receive(msg))

    def _check(self, rec: dict[str, Any], msg: Propose) -> Optional[str]:
        """Why this client will not sign the proposed sale, or None. (The fee, the anchor and the rest's
        script are checked again by the Participant against the engine's own sale builder.)"""
        if not funding_ok(rec):
            return "the factory's funding was given up on"
        if rec.get("frozen") or rec.get("close") is not None:
            return "the factory is being closed"
        if msg.params != rec["params"].encode():
            return "the factory parameters differ from ours"
        if msg.client_index != int(rec["client_index"]):
            return "our index is not the one in our record"
        if len(msg.path_outputs) != 1:
            return "a sale is one transaction"
        _, (outpoint, lstock) = self._lstock(rec)
        if OutPoint(msg.funding_txid, msg.funding_vout) != outpoint or msg.funding_value != lstock.value:
            return (f"it does not spend the leaf's current L-stock {outpoint.txid_hex}:{outpoint.vout} "
                    f"({lstock.value} sat)")
        try:
            outputs = tuple(OutputVector(msg.path_outputs[0]))
        except Exception as e:
            return f"invalid outputs: {e}"
        if len(outputs) != 3 or outputs[1].script_pubkey != lstock.script_pubkey:
            return "the rest of the L-stock must stay on the leaf's L-stock script"
        return None

    def _is_mine(self, lsp: str, capacity_sat: int) -> bool:
        with self._lock:
            expected = self._expected.get(lsp)
            if expected is None or time.monotonic() - expected[1] > EXPECT_SECONDS or expected[0] != capacity_sat:
                return False
            del self._expected[lsp]
            return True

    def _execute(self, fid: str, session: SaleSignSession, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, Persist) and a.record == "signed":
                rec = self.store.get(fid, "factory")
                assert rec is not None
                job = session.participant.jobs[0]
                tx = a.data["txs"][0]
                rec.setdefault("sales", []).append(sale_entry(
                    session.leaf, tx, job.prevout, job.tx.inputs[0].prevout, mine=session.mine, status=OPEN,
                    verified=UNVERIFIED if session.mine else None, signed_at_height=self.node.blockheight()))
                self.store.put(fid, "factory", rec)  # before Done (the Send follows)
            elif isinstance(a, Send):
                try:
                    self.transport.send(session.lsp, a.message)
                except Exception as e:
                    self.log(f"factory {fid}: send to the LSP failed: {e}")
            elif isinstance(a, Completed):
                self._sessions.pop(fid, None)
                job = session.participant.jobs[0]
                self.log(f"factory {fid}: signed liquidity sale {job.tx.txid} ({job.tx.outputs[0].value} sat channel"
                         f"{' for us' if session.mine else ''}, fee {job.fee} sat); stored in our exit path")
            elif isinstance(a, Failed):
                self._sessions.pop(fid, None)
                self.log(f"factory {fid}: sale round failed: {a.reason}")
