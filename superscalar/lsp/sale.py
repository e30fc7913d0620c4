"""The LSP's liquidity sale: a new channel for a client out of its leaf's L-stock, live.

`Seller.sell` (synchronous; run it in a worker thread: it waits on the leaf's clients) walks the steps in
the order that keeps everyone's money safe:
  1. checks: the factory is ours, funded, not frozen, closing or exited; the buyer is its client; every
     signer of the buyer's leaf (the LSP and each client of the leaf) is connected with a normal channel;
     the leaf's current L-stock (the last sale's rest output, or the leaf's own) can fund the channel
     (checked with a same-sized script before anything is opened);
  2. `fundchannel_start` a zero-conf channel with the buyer, no push (its funding script is output 0);
  3. the sale transaction (`factory.graph.liquidity_sale`: the fee is the factory's pre-agreed rate ×
     its signed vsize, paid from the L-stock) is signed in a SALE round by the LSP and every client of
     the leaf; each client checks it against its own view (`client/sale.py`) and stores it before Done;
  4. the fully signed sale is appended to the factory record (`sales`, see `superscalar/sales.py`)
     before any client is sent the final signature, so the exit path exists before anything commits;
  5. once the clients' Done is in, the sale is `open` on the channel completed during step 3 (below).
A failure before step 4 cancels the open: nothing changed. After it the sale is kept for good (a signer
never signs two spends of one output): the next sale chains off its rest output.

The buyer's channel is completed before anyone can sign: the sale's txid is final once it is proposed
(key-path spends), so when every signer has sent its nonce the LSP runs `fundchannel_complete` with the
unsigned sale and only then sends the aggregate nonces (without which no partial signature can be
made). An open that fails then fails the round with nothing signed (the open is cancelled); a round
that fails after it closes the completed channel, which nothing backs (its funding is withheld, so
lightningd deletes it). So no signed sale has an output 0 without a channel: a buyer that drops the
connection after its Done has its channel already, and costs the L-stock nothing.

A round that failed after the aggregate nonces went out may have partial signatures of the leaf's
clients behind it: each of them entered that sale in its ledger (`factory.spends`) and will sign no
other spend of the L-stock. The sale is then kept as `unfinished_sales[leaf]` (durable), with its
channel, and the next sale of that leaf first signs it again, unchanged; the channel is then backed
(`open`), or if it is gone meanwhile the sale is kept as `unopened` (its output 0 backs nothing), then
the new sale chains off its output 1.

After a restart (`resume`, at the first block): a sale stored "signed" whose channel exists (the node died after
`fundchannel_complete`, before the record) gets its channel id; one whose open died with the process is
marked "unopened" (its output 0 backs no channel; the L-stock chain continues from its output 1). A round
that had not reached step 4 left nothing behind.

The price the buyer pays for the inbound (`fee_sat`, `superscalar.sales.sale_fee_sat`: base + ppm of the
capacity) is reported, not collected here: the caller collects it (an LSPS1 order paid beforehand, or the
JIT forward deducting it).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..bitcoin.psbt import Psbt, PsbtInput, PsbtOutput
from ..bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from ..chain.retire import retire_channels
from ..factory.errors import FactoryError
from ..factory.graph import TX_VERSION, Factory, TreeTx, anchor_output, liquidity_sale
from ..cln.node import ClnNode
from ..protocol.ceremony import Action, Completed, Coordinator, Failed, Persist, Send
from ..protocol.rounds import Round, sale_round
from ..protocol.wire import AbortCode, AggNonces, Message
from ..sales import OPEN, SIGNED, UNOPENED, current_lstock, sale_entry, sale_fee_sat
from ..records import factory_key_label
from ..cln.store import Store
from ..cln.transport import Transport
from .closing import factory_from_record
from .creation import _seckey

DUMMY_P2WSH = b"\x00\x20" + bytes(32)  # a channel script of the real size, to size the sale before opening


def _pending_entry(sale: TreeTx, buyer: str, leaf: int, height: int) -> dict[str, Any]:
    """A sale that may be signed without its record being written yet (`opening_sales`,
    `unfinished_sales`): enough to rebuild and check it."""
    return {"tx": sale.tx.to_hex(), "prevout": [sale.prevout.value, sale.prevout.script_pubkey.hex()],
            "capacity_sat": sale.tx.outputs[0].value, "script": sale.tx.outputs[0].script_pubkey.hex(),
            "buyer": buyer, "leaf": leaf, "height": height}


class SaleError(RuntimeError):
    """The sale did not happen; nothing changed (the open was cancelled, nothing was signed)."""


@dataclass
class SaleSession:
    factory_id: bytes
    peers: list[str]  # node id per client index of the factory
    buyer: str
    leaf: int
    coordinator: Optional[Coordinator] = None
    outcome: Optional[Completed | Failed] = None
    stored: bool = False  # the fully signed sale is in the factory record
    withheld: bool = False  # testing only: "lsp-sale-withhold"
    error: Optional[str] = None  # storing it failed
    open_first: bool = False  # a new sale: the buyer's channel is completed before the aggregate nonces go out
    deferred: Optional[list[Action]] = None  # the aggregate nonces and what follows, held until then
    # the aggregate nonces went out (the Coordinator's `aggnonces_sent` says it made them, which with
    # `open_first` is before they are sent): only then may a client hold a partial signature
    aggnonces_out: bool = False
    channel_id: Optional[str] = None  # the buyer's channel on output 0
    cond: threading.Condition = field(default_factory=threading.Condition)


class Seller:
    def __init__(self, node: ClnNode, store: Store, transport: Transport, log: Callable[[str], None],
                 timeout: float = 60.0, fee_base_sat: int = 0, fee_ppm: int = 0, dev_fail_at: str = "",
                 crash: Callable[[str], None] = lambda _: None) -> None:
        # Testing only (developer mode): "lsp-sale-overfee" proposes a sale taking 1,000 sat more fee than
        # agreed; "lsp-sale-lstock-script" pays the rest of the L-stock to the LSP's wallet;
        # "lsp-sale-kill-after-sign" kills lightningd once the signed sale is stored, before the open completes;
        # "lsp-sale-withhold" plays the double-spending LSP: it keeps a fully signed sale to itself (not in
        # its record, no final signature sent), drops the clients and later proposes another sale of the
        # same L-stock.
        self.node, self.store, self.transport, self.log = node, store, transport, log
        self.timeout, self.fee_base_sat, self.fee_ppm = timeout, fee_base_sat, fee_ppm
        self.dev_fail_at, self._crash = dev_fail_at, crash
        self._sessions: dict[bytes, SaleSession] = {}
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # factories with a sale under way in this process
        self._recovered = False  # the records an earlier process left were looked at

    def fee_sat(self, capacity_sat: int) -> int:
        return sale_fee_sat(capacity_sat, self.fee_base_sat, self.fee_ppm)

    # --- messages (custommsg hook thread) ---

    def on_message(self, peer: str, msg: Message) -> bool:
        session = self._sessions.get(msg.factory_id)
        if session is None or session.coordinator is None:
            return False
        if peer not in session.peers:
            return True
        with session.cond:
            self._execute(session, session.coordinator.receive(session.peers.index(peer), msg))
            session.cond.notify_all()
        return True

    def on_disconnect(self, peer: str) -> None:
        for session in list(self._sessions.values()):
            if session.coordinator is not None and peer in session.peers:
                with session.cond:
                    self._execute(session, session.coordinator.peer_failed(session.peers.index(peer), "disconnected"))
                    session.cond.notify_all()

    def _execute(self, session: SaleSession, actions: list[Action]) -> None:
        fid = session.factory_id.hex()
        for a in actions:
            if isinstance(a, Persist) and a.record == "signed" and self.dev_fail_at == "lsp-sale-withhold":
                session.withheld = True  # testing only: keep it, tell nobody, drop the signers
                self.log(f"dev: withholding signed sale {a.data['txs'][0].txid}; disconnecting the signers")
                for peer in session.peers:
                    self.node.rpc.call("disconnect", {"id": peer, "force": True})
                return
            if isinstance(a, Persist) and a.record == "signed":
                # Everyone signed: stored before any client is sent the signature (the Sends follow).
                assert session.coordinator is not None
                job = session.coordinator.round.jobs[0]
                tx = a.data["txs"][0]
                try:
                    rec = self.store.get(fid, "factory")
                    assert rec is not None
                    rec.setdefault("sales", []).append(sale_entry(
                        session.leaf, tx, job.prevout, job.tx.inputs[0].prevout, peer_id=session.buyer,
                        status=SIGNED, channel_id=session.channel_id, signed_at_height=self.node.blockheight()))
                    rec.get("opening_sales", {}).pop(tx.txid, None)
                    self.store.put(fid, "factory", rec)
                    session.stored = True
                except Exception as e:  # not stored: nobody may get the signature
                    session.error = f"storing the signed sale failed: {e}"
                    self._execute(session, session.coordinator.peer_failed(session.coordinator.clients[0], session.error,
                                                                           AbortCode.INTERNAL))
                    return
            elif isinstance(a, Send) and isinstance(a.message, AggNonces) and session.open_first and session.channel_id is None:
                # every signer sent its nonce: the buyer's channel is completed before anyone can sign
                session.deferred = actions[actions.index(a):]
                session.cond.notify_all()
                return
            elif isinstance(a, Send):
                if isinstance(a.message, AggNonces):
                    session.aggnonces_out = True
                try:
                    self.transport.send(session.peers[a.peer], a.message)
                except Exception as e:  # a peer gone: the round fails through on_disconnect
                    self.log(f"sale in {fid}: send to {session.peers[a.peer]} failed: {e}")
            elif isinstance(a, (Completed, Failed)):
                session.outcome = a

    # --- superscalar-sell-inbound (a worker thread) ---

    def sell(self, factory_id: str, client_id: str, capacity_sat: int,
             progress: Callable[[str], None] = lambda _: None, price_msat: int = 0) -> dict[str, Any]:
        """Sell `capacity_sat` of inbound to `client_id` in factory `factory_id` (see the module docstring).
        Returns the new channel (channel_id, short_channel_id alias, funding outpoint), the sale
        transaction, its fee and the L-stock left, and the price `fee_sat`. A `price_msat` is proposed to the
        buyer (it refuses one above its limit) and recorded: it is deducted from the HTLCs forwarded over
        the new channel (lsp/inbound.py). Raises SaleError."""
        with self._lock:
            if factory_id in self._busy:
                raise SaleError(f"factory {factory_id}: a sale is already under way")
            self._busy.add(factory_id)
        try:
            return self._sell(factory_id, client_id, capacity_sat, progress, price_msat)
        finally:
            with self._lock:
                self._busy.discard(factory_id)

    def _sell(self, factory_id: str, client_id: str, capacity_sat: int, progress: Callable[[str], None],
              price_msat: int) -> dict[str, Any]:
        rec = self.store.get(factory_id, "factory")
        if rec is None or rec.get("role") != "lsp":
            raise SaleError(f"no factory {factory_id} of which this node is the LSP")
        if rec.get("stage") != "funded" or rec.get("frozen") or rec.get("close") is not None:
            raise SaleError(f"factory {factory_id} cannot sell now (stage {rec.get('stage')}, "
                            f"frozen {bool(rec.get('frozen'))}, close {bool(rec.get('close'))})")
        if self.store.get(factory_id, "exit") is not None:
            raise SaleError(f"factory {factory_id} is being exited")
        peers = [str(c["peer_id"]) for c in rec["channels"]]
        if client_id not in peers:
            raise SaleError(f"{client_id} is not a client of factory {factory_id}")
        if any(s.get("peer_id") == client_id and s.get("buyer_failed") for s in rec.get("sales", [])):
            # A buyer that let a signed sale's open fail (it dropped the connection after signing) cost
            # us that output 0: once per factory, not again.
            raise SaleError(f"a sale to {client_id} in factory {factory_id} was signed but its channel never "
                            "opened: no more sales to it in this factory")
        factory = factory_from_record(rec)
        buyer = peers.index(client_id)
        leaf = factory.topology.leaf_of_client[buyer]
        signers = factory.topology.nodes[leaf].clients
        live = {c.get("channel_id"): c for c in self.node.peer_channels()}
        offline = [peers[c] for c in signers
                   if not ((ch := live.get(rec["channels"][c].get("channel_id"))) and ch.get("peer_connected")
                           and ch.get("state") == "CHANNELD_NORMAL")]
        if offline:
            raise SaleError(f"every signer of the leaf must be online with a normal channel; not: {', '.join(offline)}")
        leaf_tx = Tx.from_hex(next(t[1] for t in rec["txs"] if t[0] == rec["paths"][buyer][-1]))
        fid = bytes.fromhex(factory_id)
        lsp_sk = _seckey(self.node.secret(factory_key_label(self.node.node_id(), fid, "lsp")))
        rec = self._finish_unfinished(factory_id, rec, factory, leaf, peers, lsp_sk, leaf_tx, progress)
        sales = list(rec.get("sales", []))
        lstock = current_lstock(leaf_tx, sales, leaf)
        try:
            liquidity_sale(factory, leaf, lstock, capacity_sat, DUMMY_P2WSH)  # fits? (nothing opened yet)
        except FactoryError as e:
            raise SaleError(f"L-stock {lstock[1].value} sat: {e}") from None
        progress(f"opening a {capacity_sat} sat channel to {client_id} on leaf {leaf}'s L-stock "
                 f"({lstock[0].txid_hex}:{lstock[0].vout}, {lstock[1].value} sat)")
        script = self.node.fundchannel_start(client_id, capacity_sat, 0)
        session = SaleSession(fid, peers, client_id, leaf, open_first=True)
        sale: Optional[TreeTx] = None
        kept = False
        try:
            sale = self._dev_sale(factory, leaf, lstock, capacity_sat, script, rec)
            progress(f"signing sale {sale.tx.txid} ({sale.fee} sat fee) with {len(signers)} clients of the leaf")
            self._sessions[fid] = session
            with session.cond:
                round_ = self._round(factory, sale, lstock[0], leaf, fid, sales)
                if price_msat:
                    round_ = dataclasses.replace(round_, proposals={c: dataclasses.replace(p, price_msat=price_msat)
                                                                    for c, p in round_.proposals.items()})
                session.coordinator = Coordinator(round_, lsp_sk)
                self._execute(session, session.coordinator.start())
                session.cond.wait_for(lambda: session.outcome is not None or session.deferred is not None, self.timeout)
            if session.outcome is None and session.deferred is not None:
                self._open(factory_id, session, sale, buyer, progress)
            with session.cond:
                session.cond.wait_for(lambda: session.outcome is not None or session.stored, self.timeout)
            if not session.stored:
                with session.cond:
                    if session.outcome is None:
                        self._execute(session, session.coordinator.peer_failed(signers[0], "timed out", AbortCode.TIMEOUT))
                reason = session.error or getattr(session.outcome, "reason", "timed out")
                if session.aggnonces_out and not session.withheld:
                    self._keep_unfinished(factory_id, leaf, sale, client_id, session.channel_id)
                    kept = True
                raise SaleError(f"sale round failed: {reason}")
        except Exception:
            self._sessions.pop(fid, None)
            if sale is not None:
                self._forget_opening(factory_id, sale.tx.txid)
            if session.channel_id is None:
                try:
                    self.node.fundchannel_cancel(client_id)
                except Exception as e:
                    self.log(f"sale in {factory_id}: fundchannel_cancel {client_id}: {e}")
            elif not kept:  # completed, but nobody signed: its funding can never exist
                self.log(f"sale in {factory_id}: closing channel {session.channel_id}, which no signed sale backs")
                retire_channels(self.node, [session.channel_id], self.log, set())
            raise
        # The sale is signed and stored, its channel complete: from here on it is kept.
        assert session.channel_id is not None
        if self.dev_fail_at == "lsp-sale-kill-after-sign":
            self._crash("lsp-sale-kill-after-sign")
        with session.cond:  # the clients' Done (they stored it too)
            session.cond.wait_for(lambda: session.outcome is not None, self.timeout)
        self._sessions.pop(fid, None)
        if not isinstance(session.outcome, Completed):
            self.log(f"sale in {factory_id}: not every client confirmed it stored the sale "
                     f"({getattr(session.outcome, 'reason', 'timed out')}); it is signed and kept")
        channel_id = session.channel_id
        self._set(factory_id, sale.tx.txid, status=OPEN, channel_id=channel_id, price_msat=price_msat)
        ch = next((c for c in self.node.peer_channels(client_id) if c.get("channel_id") == channel_id), {})
        alias = (ch.get("alias") or {}).get("local")
        progress(f"channel {channel_id} ({alias}) open on the sale's output 0")
        return {"factory_id": factory_id, "peer_id": client_id, "channel_id": channel_id, "short_channel_id": alias,
                "funding_outpoint": f"{sale.tx.txid}:0", "capacity_sat": capacity_sat, "sale_txid": sale.tx.txid,
                "sale_fee_sat": sale.fee, "sale_vsize": sale.vsize, "feerate_per_kvb": factory.params.feerate_per_kvb,
                "lstock_before_sat": lstock[1].value, "lstock_after_sat": sale.tx.outputs[1].value,
                "anchor_sat": sale.tx.outputs[2].value, "fee_sat": self.fee_sat(capacity_sat), "leaf": leaf,
                "price_msat": price_msat}

    def _open(self, factory_id: str, session: SaleSession, sale: TreeTx, buyer: int,
              progress: Callable[[str], None]) -> None:
        """Every signer sent its nonce: complete the buyer's channel on output 0 (the sale's txid is final
        before anyone signs), then let the aggregate nonces go out. The sale is first noted in
        `opening_sales` (durable): a restart then knows a channel may exist that only this sale backs.
        An open that fails fails the round: nobody has signed anything."""
        rec = self.store.get(factory_id, "factory")
        assert rec is not None and session.coordinator is not None
        rec.setdefault("opening_sales", {})[sale.tx.txid] = _pending_entry(sale, session.buyer, session.leaf,
                                                                          self.node.blockheight())
        self.store.put(factory_id, "factory", rec)
        psbt = Psbt(sale.tx, (PsbtInput(witness_utxo=sale.prevout),), tuple(PsbtOutput() for _ in sale.tx.outputs))
        try:
            channel_id = self.node.fundchannel_complete(session.buyer, psbt.to_base64())
        except Exception as e:
            with session.cond:
                if session.outcome is None:
                    self._execute(session, session.coordinator.peer_failed(
                        buyer, f"its channel could not be completed: {e}", AbortCode.PEER_DISCONNECTED))
            raise SaleError(f"the buyer's channel could not be completed before signing (nothing was signed): {e}")
        with session.cond:
            session.channel_id = channel_id
            deferred, session.deferred = session.deferred or [], None
            if session.outcome is None:
                progress(f"channel {channel_id} completed on the sale's output 0; signing")
                self._execute(session, deferred)

    def _forget_opening(self, factory_id: str, txid: str) -> None:
        rec = self.store.get(factory_id, "factory")
        if rec is not None and txid in rec.get("opening_sales", {}):
            rec["opening_sales"].pop(txid)
            self.store.put(factory_id, "factory", rec)

    def _keep_unfinished(self, factory_id: str, leaf: int, sale: TreeTx, buyer: str, channel_id: Optional[str]) -> None:
        """A sale round that failed after clients may have sent partial signatures: its clients will sign
        no other spend of this L-stock, so the next sale of the leaf signs it again first (and the
        buyer's channel, completed before the signing, is then backed by it)."""
        rec = self.store.get(factory_id, "factory")
        assert rec is not None
        rec.setdefault("unfinished_sales", {})[str(leaf)] = {
            **_pending_entry(sale, buyer, leaf, self.node.blockheight()), "channel_id": channel_id}
        rec.get("opening_sales", {}).pop(sale.tx.txid, None)
        self.store.put(factory_id, "factory", rec)
        self.log(f"sale in {factory_id}: round failed after partial signatures may have gone out; sale "
                 f"{sale.tx.txid} is kept and signed again, unchanged, before the next sale of leaf {leaf}")

    def _finish_unfinished(self, factory_id: str, rec: dict[str, Any], factory: Factory, leaf: int,
                           peers: list[str], lsp_sk: bytes, leaf_tx: Tx,
                           progress: Callable[[str], None]) -> dict[str, Any]:
        """Sign the leaf's unfinished sale again, unchanged, and keep it as `unopened` (no channel was
        completed on it); returns the record. Raises SaleError if that round fails too."""
        pending = (rec.get("unfinished_sales") or {}).get(str(leaf))
        if pending is None:
            return rec
        lstock = current_lstock(leaf_tx, rec.get("sales", []), leaf)
        sale = liquidity_sale(factory, leaf, lstock, int(pending["capacity_sat"]), bytes.fromhex(pending["script"]))
        if sale.tx.to_hex() != pending["tx"]:  # the L-stock moved on (it cannot, but never sign a variant)
            raise SaleError(f"leaf {leaf}'s unfinished sale no longer spends its L-stock; refusing to sell")
        fid = bytes.fromhex(factory_id)
        progress(f"signing again, unchanged, the unfinished sale {sale.tx.txid} of leaf {leaf}")
        session = SaleSession(fid, peers, pending["buyer"], leaf)
        self._sessions[fid] = session
        try:
            with session.cond:
                session.coordinator = Coordinator(self._round(factory, sale, lstock[0], leaf, fid,
                                                              list(rec.get("sales", []))), lsp_sk)
                self._execute(session, session.coordinator.start())
                session.cond.wait_for(lambda: session.outcome is not None, self.timeout)
                if session.outcome is None:
                    self._execute(session, session.coordinator.peer_failed(
                        factory.topology.nodes[leaf].clients[0], "timed out", AbortCode.TIMEOUT))
        finally:
            self._sessions.pop(fid, None)
        if not session.stored:
            raise SaleError(f"the unfinished sale {sale.tx.txid} of leaf {leaf} must be signed again first: "
                            f"{session.error or getattr(session.outcome, 'reason', 'timed out')}")
        stored = self.store.get(factory_id, "factory")
        assert stored is not None
        entry = next(s for s in stored["sales"] if s["txid"] == sale.tx.txid)
        channel = next((c for c in self.node.peer_channels(pending["buyer"])
                        if pending.get("channel_id") and c.get("channel_id") == pending["channel_id"]
                        and c.get("state") in ("CHANNELD_NORMAL", "CHANNELD_AWAITING_LOCKIN")), None)
        if channel is not None:
            entry.update(status=OPEN, channel_id=channel["channel_id"])
        else:
            entry.update(status=UNOPENED, reason="signed again after a failed round; its channel is gone")
        stored["unfinished_sales"].pop(str(leaf), None)
        self.store.put(factory_id, "factory", stored)
        self.log(f"sale in {factory_id}: unfinished sale {sale.tx.txid} signed again: "
                 + (f"its channel {channel['channel_id']} is backed" if channel else "kept as unopened (no channel)"))
        return stored

    @staticmethod
    def _round(factory: Factory, sale: TreeTx, lstock: OutPoint, leaf: int, fid: bytes,
               sales: list[dict[str, Any]]) -> Round:
        """The SALE round; each proposal carries the leaf's earlier signed sales, so a client that missed
        the end of an earlier round (it never got the final signature) can catch up (client/sale.py)."""
        round_ = sale_round(factory, sale, lstock, leaf, fid, secrets.token_bytes(32))
        prior = tuple(bytes.fromhex(s["tx"]) for s in sales if int(s["leaf"]) == leaf)
        if not prior:
            return round_
        return dataclasses.replace(round_, proposals={c: dataclasses.replace(p, prior_sales=prior)
                                                      for c, p in round_.proposals.items()})

    def _dev_sale(self, factory: Factory, leaf: int, lstock: tuple[OutPoint, TxOut], capacity_sat: int,
                  script: bytes, rec: dict[str, Any]) -> TreeTx:
        sale = liquidity_sale(factory, leaf, lstock, capacity_sat, script)
        if self.dev_fail_at not in ("lsp-sale-overfee", "lsp-sale-lstock-script"):
            return sale
        # Testing only: a proposal no client may sign.
        channel, rest, anchor = sale.tx.outputs
        if self.dev_fail_at == "lsp-sale-overfee":
            rest = TxOut(rest.value - 1_000, rest.script_pubkey)
        else:
            rest = TxOut(rest.value, bytes.fromhex(rec["scripts"]["lsp"]))
        tx = Tx(TX_VERSION, (TxIn(lstock[0], sequence=sale.tx.inputs[0].sequence),), (channel, rest, anchor))
        assert anchor == anchor_output(factory.params)
        return TreeTx(sale.name, tx, sale.prevout, sale.spend)

    def mark(self, factory_id: str, txid: str, **fields: Any) -> None:
        """Record `fields` in sale `txid` of factory `factory_id` (durable)."""
        self._set(factory_id, txid, **fields)

    def _set(self, factory_id: str, txid: str, **fields: Any) -> None:
        rec = self.store.get(factory_id, "factory")
        assert rec is not None
        entry = next(s for s in rec["sales"] if s["txid"] == txid)
        entry.update(fields)
        self.store.put(factory_id, "factory", rec)

    def _resume_openings(self, fid: str, rec: dict[str, Any], by_outpoint: dict[str, dict[str, Any]]) -> None:
        """Sales whose round a restart cut short after the buyer's channel was being completed: with no
        channel, nobody signed (the aggregate nonces wait for the channel): forgotten. With one, partial
        signatures may exist: kept as the leaf's unfinished sale, signed again before the next sale of
        the leaf, which then backs the channel."""
        stored = {s["txid"] for s in rec.get("sales", [])}
        for txid, pending in list(rec.get("opening_sales", {}).items()):
            rec["opening_sales"].pop(txid)
            ch = by_outpoint.get(f"{txid}:0")
            if txid in stored:
                continue
            if ch is None:
                self.log(f"factory {fid}: sale {txid} was cut short by a restart before its channel existed: "
                         "nothing was signed")
                continue
            rec.setdefault("unfinished_sales", {})[str(pending["leaf"])] = {**pending, "channel_id": ch["channel_id"]}
            self.log(f"factory {fid}: sale {txid} was cut short by a restart after its channel {ch['channel_id']} "
                     "was completed: it is signed again before the next sale of its leaf")

    def resume(self, height: int = 0) -> None:
        """Sales stored "signed" by a process that is gone (see the module docstring); looked at once, at
        the first block after a start (within a process every sale leaves "signed" before it ends)."""
        if self._recovered:
            return
        self._recovered = True
        with self._lock:
            busy = set(self._busy)
        for fid in self.store.factory_ids():
            if fid in busy:
                continue
            rec = self.store.get(fid, "factory")
            if rec is None or rec.get("role") != "lsp" or not (
                    rec.get("opening_sales") or any(s.get("status") == SIGNED for s in rec.get("sales", []))):
                continue
            by_outpoint = {f"{c.get('funding_txid')}:{c.get('funding_outnum')}": c for c in self.node.peer_channels()}
            self._resume_openings(fid, rec, by_outpoint)
            for s in rec["sales"]:
                if s.get("status") != SIGNED:
                    continue
                ch = by_outpoint.get(s["channel_outpoint"])
                if ch is not None:
                    s.update(status=OPEN, channel_id=ch["channel_id"])
                    self.log(f"factory {fid}: sale {s['txid']}: its channel {ch['channel_id']} exists")
                else:
                    s.update(status=UNOPENED, reason="the open did not survive a restart")
                    self.log(f"factory {fid}: sale {s['txid']} is signed but its channel was never completed: "
                             "output 0 backs nothing; the L-stock goes on from its output 1")
            self.store.put(fid, "factory", rec)
