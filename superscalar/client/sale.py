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
A proposal that carries a `price_msat` (inbound on demand: paid out of the payment forwarded over the new
channel, client/on_demand.py) is refused by the buyer when it is above its `InboundFeeLimit`. The signed
sale is appended to the `sales` list of the factory record (with its price) before Done goes out; the
client's exit path then includes it (`sales.exit_additions`).

Before its partial signature goes out, the sale is entered in the factory's ledger (`factory.spends`):
from then on the only spend of that L-stock output this client signs is the same sale again. An LSP
that collected every partial signature of one sale and then proposes another spend of the same
L-stock (to publish the first once the second's channel holds money) is refused until it hands over
the first (`prior_sales`, then the new sale chains from its output 1). A record that cannot be
written fails the round: no partial signature or Done goes out without it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..bitcoin.tx import OutPoint, OutputVector, Tx, TxOut
from ..crypto.bip340 import schnorr_verify
from ..factory.graph import FactoryShape, liquidity_sale
from ..factory.params import FactoryParams
from ..factory.spends import ledger_of, record_signing
from ..factory.tree import build_topology
from ..cln.node import ClnNode
from ..protocol.ceremony import Action, Completed, Failed, Participant, Persist, Send
from ..protocol.rounds import Expectation, Kind
from ..protocol.wire import Abort, AbortCode, AggNonces, Message, Nonces, Propose, Signatures
from ..sales import OPEN, current_lstock, sale_entry
from ..cln.store import Store
from ..cln.transport import Transport
from ..records import UNVERIFIED, factory_key_label, funding_ok
from .on_demand import InboundFeeLimit

EXPECT_SECONDS = 120.0  # how long an accepted sale channel open waits for its proposal


@dataclass
class SaleSignSession:
    lsp: str
    participant: Participant
    leaf: int
    mine: bool
    price_msat: int  # what we (the buyer) pay for it out of the payments forwarded over it (client/on_demand.py)


class ClientSales:
    def __init__(self, node: ClnNode, store: Store, transport: Transport, log: Callable[[str], None],
                 dev_fail_at: str = "", fee_limit: InboundFeeLimit = InboundFeeLimit()) -> None:
        self.node, self.store, self.transport, self.log = node, store, transport, log
        self.fee_limit = fee_limit  # the most we pay for a channel sold to us on demand
        # Testing only (developer mode): "sale-signatures-disconnect" drops the connection instead of taking
        # the final signatures of the first sale round (so that sale is missed and caught up later);
        # "sale-aggnonces-disconnect" drops it instead of signing (the round fails after others signed);
        # "sale-done-disconnect" (the buyer) drops it right after its Done; "sale-nonces-disconnect" (the
        # buyer) drops it instead of sending its nonce, before the LSP could complete its channel.
        self.dev_fail_at = dev_fail_at
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
            if self.dev_fail_at == "sale-aggnonces-disconnect" and isinstance(msg, AggNonces):
                self.dev_fail_at = ""
                self.log(f"dev: disconnecting from {peer} instead of signing the sale")
                self.node.rpc.call("disconnect", {"id": peer, "force": True})
                return True
            if self.dev_fail_at == "sale-signatures-disconnect" and isinstance(msg, Signatures):
                self.dev_fail_at = ""
                self.log(f"dev: disconnecting from {peer} instead of taking the sale's signatures")
                self.node.rpc.call("disconnect", {"id": peer, "force": True})
                return True
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
        if msg.prior_sales:
            rec = self._catch_up(fid, rec, msg)
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
        price = int(msg.price_msat or 0) if mine else 0
        if price > self.fee_limit.max_msat(outputs[0].value):
            self._refuse(peer, msg, f"its price {price} msat is above our limit of "
                                    f"{self.fee_limit.max_msat(outputs[0].value)} msat for {outputs[0].value} sat")
            return
        params = FactoryParams.deserialize(rec["params"].encode())
        expect = Expectation(Kind.SALE, bytes.fromhex(rec["pubkey"]), params=params)
        seckey = self.node.secret(factory_key_label(peer, msg.factory_id, "client"))
        session = SaleSignSession(peer, Participant(expect, seckey, ledger=ledger_of(rec)), leaf, mine, price)
        self._sessions[fid] = session
        self._execute(fid, session, session.participant.receive(msg))

    def _catch_up(self, fid: str, rec: dict[str, Any], msg: Propose) -> dict[str, Any]:
        """Add the earlier sales of our leaf we lack (our round ended before we got the final signature)
        from the proposal's `prior_sales`: each one that spends our current L-stock, that the engine's own
        builder rebuilds exactly (fee included) and whose key-path signature verifies for the L-stock's
        N-of-N (which needs our partial signature: we gave it only after checking that very sale).
        Returns the record (updated and stored if anything was added)."""
        params = FactoryParams.deserialize(rec["params"].encode())
        added = False
        for raw in msg.prior_sales or ():
            leaf, (outpoint, lstock) = self._lstock(rec)
            try:
                tx = Tx.from_hex(raw.hex())
                if len(tx.inputs) != 1 or tx.inputs[0].prevout != outpoint or len(tx.outputs) != 3:
                    continue  # one we hold already, or not a spend of our L-stock
                shape = FactoryShape(params, msg.pubkeys)
                rebuilt = liquidity_sale(shape, leaf, (outpoint, lstock), tx.outputs[0].value, tx.outputs[0].script_pubkey)
                witness = tx.inputs[0].witness
                if rebuilt.tx.txid != tx.txid or len(witness) != 1 or not schnorr_verify(
                        rebuilt.sighash, lstock.script_pubkey[2:], witness[0]):
                    self.log(f"factory {fid}: ignoring an earlier sale {tx.txid} we cannot verify")
                    return rec
            except Exception as e:  # a malformed transaction: nothing added
                self.log(f"factory {fid}: ignoring an earlier sale we cannot parse: {e}")
                return rec
            channel = f"{tx.txid}:0"
            mine = any(f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" == channel
                       for ch in self.node.peer_channels(rec["lsp"]))
            rec.setdefault("sales", []).append(sale_entry(
                leaf, tx, lstock, outpoint, mine=mine, status=OPEN, verified=UNVERIFIED if mine else None,
                caught_up_at_height=self.node.blockheight()))
            added = True
            self.log(f"factory {fid}: caught up with earlier sale {tx.txid} (signed by every signer of our leaf)")
        if added:
            self.store.put(fid, "factory", rec)
        return rec

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
            if isinstance(a, Persist) and a.record in ("signing", "signed"):
                try:
                    self._persist(fid, session, a)
                except Exception as e:  # not durable: nothing that follows it may go out
                    self._execute(fid, session, session.participant.abort(
                        AbortCode.INTERNAL, f"the client could not store the sale's {a.record} record: {e}"))
                    return
            elif isinstance(a, Send):
                if self.dev_fail_at == "sale-nonces-disconnect" and session.mine and isinstance(a.message, Nonces):
                    self.dev_fail_at = ""
                    self.log(f"dev: disconnecting from {session.lsp} instead of sending our nonce")
                    self.node.rpc.call("disconnect", {"id": session.lsp, "force": True})
                    continue
                self._send(fid, session, a.message)
            elif isinstance(a, Completed):
                self._sessions.pop(fid, None)
                if self.dev_fail_at == "sale-done-disconnect" and session.mine:
                    self.log(f"dev: disconnecting from {session.lsp} right after our Done")
                    self.node.rpc.call("disconnect", {"id": session.lsp, "force": True})
                job = session.participant.jobs[0]
                self.log(f"factory {fid}: signed liquidity sale {job.tx.txid} ({job.tx.outputs[0].value} sat channel"
                         f"{' for us' if session.mine else ''}, fee {job.fee} sat); stored in our exit path")
            elif isinstance(a, Failed):
                self._sessions.pop(fid, None)
                self.log(f"factory {fid}: sale round failed: {a.reason}")

    def _persist(self, fid: str, session: SaleSignSession, a: Persist) -> None:
        rec = self.store.get(fid, "factory")
        if rec is None:
            raise RuntimeError("the factory record is gone")
        if a.record == "signing":  # the ledger, before the partial signature goes out
            self.store.put(fid, "factory", record_signing(rec, a.data["spends"]))
            return
        job = session.participant.jobs[0]
        tx = a.data["txs"][0]
        # (a sale signed again after a failed round: our channel on it was completed in that round)
        mine = session.mine or any(f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" == f"{tx.txid}:0"
                                   for ch in self.node.peer_channels(session.lsp))
        rec.setdefault("sales", []).append(sale_entry(
            session.leaf, tx, job.prevout, job.tx.inputs[0].prevout, mine=mine, status=OPEN,
            verified=UNVERIFIED if mine else None, signed_at_height=self.node.blockheight(),
            **({"price_msat": session.price_msat, "price_paid_msat": 0} if session.price_msat else {})))
        self.store.put(fid, "factory", rec)  # before Done (the Send follows)

    def _send(self, fid: str, session: SaleSignSession, message: Message) -> None:
        try:
            self.transport.send(session.lsp, message)
        except Exception as e:
            self.log(f"factory {fid}: send to the LSP failed: {e}")
