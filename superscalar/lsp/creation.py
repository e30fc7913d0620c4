"""The LSP role: create a factory with clients that run this plugin, over real CLN channels.

`Lsp.create` runs in a worker thread (the plugin's `superscalar-create` is an async method) and walks
the steps in the order that keeps everyone's money safe:
  1. invite each client and collect its key and payout script;
  2. `fundchannel_start` a zero-conf channel with each client (its funding script goes in the leaf);
  3. prepare the funding transaction in CLN's wallet (`fundpsbt`, `addpsbtoutput`: inputs reserved);
  4. run the signing ceremony; every client stores its signed exit path before it reports Done;
  5. `fundchannel_complete` each channel with its (unbroadcast) leaf transaction;
  6. only then sign and broadcast the funding transaction (`signpsbt`, `sendpsbt`).
Any failure before step 6 cancels the opens and discards the prepared funding, releasing its inputs.
Ceremony messages arrive through the custommsg hook (`on_message`) on pyln's main thread.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, TypeVar

from ..crypto import musig2
from ..bitcoin.psbt import Psbt, PsbtInput, PsbtOutput
from ..bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from ..chain.exits import CLOSING_STATES
from ..factory.graph import Factory, FactoryScripts
from ..factory.params import ClientTerms, FactoryParams
from ..cln.node import ClnNode, PreparedTx
from ..protocol.ceremony import Action, Completed, Coordinator, Failed, Persist, grouped_sends
from ..protocol.rounds import construction_round
from ..protocol.wire import Abort, AbortCode, Accept, Invite, Message
from ..records import factory_key_label, path_entry
from ..cln.store import Store, StoreError
from ..cln.transport import Transport

ParamsFor = Callable[[int, int], FactoryParams]  # (n_clients, start height) → parameters
T = TypeVar("T")
R = TypeVar("R")
MAX_PARALLEL_OPENS = 32


def each_peer(fn: Callable[[T], R], items: Sequence[T]) -> list[R | Exception]:
    """`fn` over `items` (one per peer), concurrently: lightningd runs one open at a time per peer
    and any number across peers (ARCHITECTURE-HOSTING.md), and each RPC waits on that peer's
    round trip. Each item's result, or the exception it raised, in the order given."""
    def attempt(item: T) -> R | Exception:
        try:
            return fn(item)
        except Exception as e:  # the caller undoes what succeeded, then raises the first failure
            return e
    if len(items) <= 1:
        return [attempt(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL_OPENS, len(items))) as pool:
        return list(pool.map(attempt, items))


def _raise_first(results: list[R | Exception]) -> list[R]:
    for r in results:
        if isinstance(r, Exception):
            raise r
    return [r for r in results if not isinstance(r, Exception)]


class CreateError(RuntimeError):
    """superscalar-create failed; nothing was broadcast and reserved inputs were released."""


@dataclass(frozen=True)
class ClientSpec:
    node_id: str
    balance_sat: int
    inbound_sat: int


@dataclass
class Pending:
    factory_id: bytes
    clients: list[ClientSpec]
    params: FactoryParams
    invite_id: bytes
    accepts: dict[int, Accept] = field(default_factory=dict)
    refused: Optional[str] = None
    coordinator: Optional[Coordinator] = None
    outcome: Optional[Completed | Failed] = None
    cond: threading.Condition = field(default_factory=threading.Condition)

    def index_of(self, peer: str) -> Optional[int]:
        return next((i for i, c in enumerate(self.clients) if c.node_id == peer), None)

    def number_by_key(self) -> list[ClientSpec]:
        """Renumber the clients (once all accepted) in the order of their factory keys, and return them
        so: every signer set's key list is then in BIP-327 KeySort order but for the LSP's key, and
        sorting it (which everyone checking the tree does) takes linear time."""
        order = sorted(range(len(self.clients)), key=lambda i: self.accepts[i].pubkey)
        with self.cond:
            self.accepts = {new: self.accepts[old] for new, old in enumerate(order)}
            self.clients = [self.clients[i] for i in order]
        return self.clients


class Lsp:
    def __init__(self, node: ClnNode, store: Store, transport: Transport, params_for: ParamsFor,
                 log: Callable[[str], None], timeout: float = 60.0, dev_fail_at: str = "",
                 silent: Callable[[list[str]], list[str]] = lambda peers: []) -> None:
        self.node, self.store, self.transport = node, store, transport
        # which of these peers has not spoken SuperScalar on its connection (lsp/onboarding.py): we
        # invite none of them
        self.silent = silent
        # testing only: "lsp-before-broadcast" stops the plugin there; "lsp-fake-leaf" completes the first
        # client's channel with a transaction that is not its leaf
        self.dev_fail_at = dev_fail_at
        self.params_for = params_for
        self.log = log
        self.timeout = timeout
        self._pending: dict[bytes, Pending] = {}

    # --- called from the custommsg hook ---

    def on_message(self, peer: str, msg: Message) -> bool:
        """Handle `msg` if it belongs to a factory this LSP is creating; True if it did."""
        pending = self._pending.get(msg.factory_id)
        if pending is None:
            return False
        index = pending.index_of(peer)
        if index is None:
            return True  # not one of its clients: ignore
        with pending.cond:
            if isinstance(msg, Accept) and pending.coordinator is None:
                if msg.session_id == pending.invite_id and index not in pending.accepts:
                    pending.accepts[index] = msg
            elif isinstance(msg, Abort) and pending.coordinator is None:
                pending.refused = f"client {peer} refused: {msg.reason}"
            elif pending.coordinator is not None:
                self._execute(pending, pending.coordinator.receive(index, msg))
            pending.cond.notify_all()
        return True

    def on_disconnect(self, peer: str) -> None:
        for pending in list(self._pending.values()):
            index = pending.index_of(peer)
            if index is None:
                continue
            with pending.cond:
                if pending.coordinator is not None:
                    self._execute(pending, pending.coordinator.peer_failed(index, "disconnected"))
                else:
                    pending.refused = f"client {peer} disconnected"
                pending.cond.notify_all()

    def _execute(self, pending: Pending, actions: list[Action]) -> None:
        fid = pending.factory_id.hex()
        for a in grouped_sends(actions):
            if isinstance(a, Persist):
                self.store.put(fid, f"lsp-{a.record}", a.jsonable())
            elif isinstance(a, list):  # a round to every client: concurrently
                self.send_all([(pending.clients[s.peer].node_id, s.message) for s in a])
            elif isinstance(a, (Completed, Failed)):
                pending.outcome = a

    def send_all(self, sends: list[tuple[str, Message]]) -> None:
        """Send each (peer, message), the peers concurrently; a peer that just went away is logged (its
        round fails through `peer_failed`, or the wait for its answer times out)."""
        for (peer, _), e in zip(sends, self.transport.send_many(sends)):
            if e is not None:
                self.log(f"send to {peer} failed: {e}")

    def _wait(self, pending: Pending, done: Callable[[], bool], what: str) -> None:
        with pending.cond:
            if not pending.cond.wait_for(lambda: done() or pending.refused is not None, self.timeout):
                raise CreateError(f"timed out waiting for {what}")
            if pending.refused is not None and not done():
                raise CreateError(pending.refused)

    # --- superscalar-create, in a worker thread ---

    def create(self, clients: list[ClientSpec], progress: Callable[[str], None] = lambda _: None,
               height: int = 0) -> dict[str, Any]:
        """Create a factory (see the module docstring); `progress` is told each step as it starts. Its
        timelines start at our block height, or at `height` (a block notification already seen) if
        lightningd's reported height still lags it."""
        if not clients or len({c.node_id for c in clients}) != len(clients):
            raise CreateError("clients must be distinct and at least one")
        silent = self.silent([c.node_id for c in clients])
        if silent:
            raise CreateError(f"{len(silent)} peers have not spoken SuperScalar on their connection (not connected, "
                              f"no plugin, or not configured to join us): {', '.join(silent)}")
        params = self.params_for(len(clients), max(self.node.blockheight(), height))
        if self.dev_fail_at == "lsp-start-height-zero":
            params = dataclasses.replace(params, start_height=0)
        fid = secrets.token_bytes(32)
        if self.dev_fail_at.startswith("lsp-reuse-id="):
            fid = bytes.fromhex(self.dev_fail_at.split("=", 1)[1])
        pending = Pending(fid, clients, params, secrets.token_bytes(32))
        self._pending[fid] = pending
        record: dict[str, Any] = {}
        opened: list[str] = []  # peers with a pending open
        completed: list[str] = []  # channel ids completed on a leaf that is not funded yet
        prepared: Optional[PreparedTx] = None
        try:
            progress(f"inviting {len(clients)} clients to factory {fid.hex()}")
            invites = [(c.node_id, Invite(fid, pending.invite_id, params.serialize(), c.balance_sat, c.inbound_sat))
                       for c in clients]
            _raise_first([e for e in self.transport.send_many(invites) if e is not None])
            self._wait(pending, lambda: len(pending.accepts) == len(clients), "clients to accept")
            given = {c.node_id: i for i, c in enumerate(clients)}
            clients = pending.number_by_key()
            lsp_sk = _seckey(self.node.secret(factory_key_label(self.node.node_id(), fid, "lsp")))
            pubkeys = [musig2.individual_pk(lsp_sk)] + [pending.accepts[i].pubkey for i in range(len(clients))]
            progress("all clients accepted; opening their leaf channels")
            started = each_peer(lambda c: self.node.fundchannel_start(c.node_id, c.balance_sat + c.inbound_sat,
                                                                     c.balance_sat * 1000), clients)
            opened.extend(c.node_id for c, r in zip(clients, started) if not isinstance(r, Exception))
            channels = _raise_first(started)
            factory = Factory(params, [ClientTerms(c.balance_sat, c.inbound_sat) for c in clients], pubkeys,
                              FactoryScripts(tuple(channels), tuple(pending.accepts[i].payout_script for i in range(len(clients))),
                                             self.node.new_script()))
            funding_out = factory.funding_output
            prepared = self.node.prepare_payment(funding_out.script_pubkey, funding_out.value)
            # If this node dies before the factory is recorded, its restart releases these inputs.
            self.store.put(fid.hex(), "lsp-funding", {"psbt": prepared.psbt})
            funding_txid = prepared.txid
            vout = next(i for i, o in enumerate(prepared.tx.outputs) if o == funding_out)
            graph = factory.graph(OutPoint.from_hex(funding_txid, vout))
            progress(f"funding {funding_out.value} sat prepared ({funding_txid}); signing {len(graph.txs()) + 1} transactions")
            with pending.cond:
                pending.coordinator = Coordinator(construction_round(factory, graph, fid, secrets.token_bytes(32)), lsp_sk)
                self._execute(pending, pending.coordinator.start())
            self._dev_crash_point("lsp-kill-mid-ceremony", kill_node=True)
            self._wait(pending, lambda: pending.outcome is not None, "the signing ceremony")
            if isinstance(pending.outcome, Failed):
                raise CreateError(f"ceremony failed: {pending.outcome.reason}")
            progress("every client holds its signed exit path; completing the channels")
            # From here on the factory is recorded first: a restart resumes (or aborts) from the record.
            record = _lsp_record(factory, graph, clients, [None] * len(clients))
            signed = {t.name: tx for t, tx in zip(pending.coordinator.round.jobs, pending.outcome.signed)}
            record["txs"] = [path_entry(t.name, signed[t.name].to_hex(), t.prevout.value, t.prevout.script_pubkey)
                             for t in graph.txs()]
            record["paths"] = [[t.name for t in graph.path_txs(i)] for i in range(len(clients))]
            record["distribution"] = signed["distribution"].to_hex()
            record["distribution_variants"] = [signed[t.name].to_hex() for t in graph.distributions()[1:]]
            record["funding_psbt"] = prepared.psbt
            record["stage"] = "completing"
            self.store.put(fid.hex(), "factory", record)
            psbts = []
            for i, c in enumerate(clients):
                leaf = graph.states[factory.topology.leaf_of_client[i]]
                psbt = Psbt(leaf.tx, (PsbtInput(witness_utxo=leaf.prevout),), tuple(PsbtOutput() for _ in leaf.tx.outputs))
                if self.dev_fail_at == "lsp-fake-leaf" and i == 0:
                    psbt = _fake_funding(leaf.tx.outputs[leaf.tx.outputs.index(TxOut(c.balance_sat + c.inbound_sat, channels[i]))])
                psbts.append(psbt.to_base64())
            # testing only: "lsp-mid-completion" completes one channel, records it and dies
            batches = [[0], list(range(1, len(clients)))] if self.dev_fail_at == "lsp-mid-completion" else [list(range(len(clients)))]
            for batch in batches:
                done = each_peer(lambda i: self.node.fundchannel_complete(clients[i].node_id, psbts[i]), batch)
                for i, channel_id in zip(batch, done):
                    if not isinstance(channel_id, Exception):
                        opened.remove(clients[i].node_id)
                        record["channels"][i]["channel_id"] = channel_id
                        completed.append(channel_id)
                self.store.put(fid.hex(), "factory", record)
                _raise_first(done)
                self._dev_crash_point("lsp-mid-completion", kill_node=True)
            # Every channel now exists on both sides: the funding must go out, never be abandoned.
            record["stage"] = "funding"
            self.store.put(fid.hex(), "factory", record)
            prepared, opened, completed = None, [], []  # nothing to undo: a failed broadcast is retried per block
            progress("broadcasting the funding transaction")
            self._dev_crash_point("lsp-before-broadcast")
            funding_txid_sent = self.broadcast_funding(fid.hex(), record)
            return {"factory_id": fid.hex(), "funding_txid": funding_txid_sent, "funding_outpoint": f"{funding_txid_sent}:{vout}",
                    "channels": sorted(record["channels"], key=lambda ch: given[ch["peer_id"]])}  # as the caller listed them
        except Exception:
            self._abort(pending, opened, prepared, completed)
            if completed:
                record["stage"] = "abandoned"
                self.store.put(fid.hex(), "factory", record)
            raise
        finally:
            self._pending.pop(fid, None)
            try:
                if self.store.get(fid.hex(), "factory") is None:
                    self.store.delete_factory(fid.hex())  # the ceremony's scratch records
            except Exception as e:  # never hide the error that ended the ceremony; a restart prunes them
                self.log(f"factory {fid.hex()}: removing scratch records: {e}")

    def broadcast_funding(self, factory_id: str, record: dict[str, Any]) -> str:
        """Sign and broadcast a recorded factory's funding transaction (stage "funding" → "funded").
        The txid that went out must be the one the tree was signed over: anything else leaves every
        exit path spending an output that does not exist."""
        txid, _ = record["funding_outpoint"].split(":")
        if self.dev_fail_at == "lsp-never-broadcast":
            self.log(f"dev: factory {factory_id}: not broadcasting the funding transaction")
            sent = txid
        elif self.dev_fail_at == "lsp-wrong-funding":
            sent = self._dev_wrong_funding(record)
        else:
            sent = self.node.send_prepared(PreparedTx(txid, record["funding_psbt"]))
            if sent != txid:
                record["stage"] = "funding-mismatch"
                self.store.put(factory_id, "factory", record)
                raise CreateError(f"factory {factory_id}: sendpsbt broadcast {sent}, not the signed funding {txid}")
        record["stage"] = "funded"
        self.store.put(factory_id, "factory", record)
        self.log(f"factory {factory_id} funded by {txid}")
        return str(txid)

    def _dev_wrong_funding(self, record: dict[str, Any]) -> str:
        """Testing only: pay the same output from other wallet coins, then release the signed funding's
        inputs, so the transaction that goes out is not the one the tree was signed over."""
        txid, _ = record["funding_outpoint"].split(":")
        signed = Psbt.from_base64(record["funding_psbt"]).tx
        out = next(o for o in signed.outputs if o.value == record["funding_value_sat"])
        other = self.node.prepare_payment(out.script_pubkey, out.value)  # the signed one's inputs stay reserved
        sent = self.node.send_prepared(other)
        self.node.discard_prepared(PreparedTx(txid, record["funding_psbt"]))
        self.log(f"dev: funded by {sent} instead of the signed {txid}")
        return sent

    def resume(self) -> None:
        """After a restart (called on each block): a factory whose channels all exist gets its funding
        broadcast (or is found funded: the node died between `sendpsbt` and the record); one whose
        channels were still being completed is abandoned, its inputs released (a pending open does not
        survive a restart, so those channels do not exist) and its completed channels closed, block
        after block until none is left open (a crash may come between the record and the closes)."""
        for fid in self.store.factory_ids():
            if fid in {p.factory_id.hex() for p in self._pending.values()}:
                continue
            record = self.store.get(fid, "factory")
            if record is None or record.get("role") != "lsp" or record.get("stage") in (None, "funded"):
                continue
            if record["stage"] == "abandoned":
                if not record.get("unbacked_closed") and self._close_unbacked(fid, record) == 0:
                    record["unbacked_closed"] = True
                    self.store.put(fid, "factory", record)
            elif record["stage"] == "funding":
                txid, vout = record["funding_outpoint"].split(":")
                try:
                    if self.node.output_exists(txid, int(vout)):
                        record["stage"] = "funded"
                        self.store.put(fid, "factory", record)
                        self.log(f"factory {fid}: its funding {txid} was already out")
                    else:
                        self.broadcast_funding(fid, record)
                except Exception as e:
                    self.log(f"factory {fid}: funding broadcast failed, retrying next block: {e}")
            elif record["stage"] == "completing":
                txid, _ = record["funding_outpoint"].split(":")
                try:
                    self.node.discard_prepared(PreparedTx(txid, record["funding_psbt"]))
                except Exception as e:
                    self.log(f"factory {fid}: releasing inputs: {e}")
                record["stage"] = "abandoned"
                self.store.put(fid, "factory", record)
                self.log(f"factory {fid}: abandoned after a restart during channel completion; nothing was broadcast")
                self._close_unbacked(fid, record)

    def _close_unbacked(self, factory_id: str, record: dict[str, Any]) -> int:
        """Close every channel of an abandoned factory that was completed on its unfunded leaf: nothing
        backs it, so neither side may go on crediting it (fundchannel_cancel cannot undo a completed
        open). Each close becomes a mutual close whose transaction can never confirm; both sides stop
        using the channel at once. Returns how many were still open (0: nothing left to close)."""
        ids = {c["channel_id"] for c in record["channels"] if c.get("channel_id")}
        leaves = {c["funding_outpoint"] for c in record["channels"]}  # also finds one completed just before a crash
        open_ = [str(ch["channel_id"]) for ch in self.node.peer_channels()
                 if (ch.get("channel_id") in ids or f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" in leaves)
                 and ch.get("state") not in CLOSING_STATES]
        for channel_id in open_:
            threading.Thread(target=self._close, args=(factory_id, channel_id), daemon=True).start()
        return len(open_)

    def _close(self, factory_id: str, channel_id: str) -> None:
        try:
            self.log(f"factory {factory_id}: closing unbacked channel {channel_id}: {self.node.close(channel_id)}")
        except Exception as e:
            self.log(f"factory {factory_id}: closing unbacked channel {channel_id}: {e}")

    def release_unfinished(self) -> None:
        """At start-up: release the wallet inputs of a funding prepared for a factory that was never
        recorded (the node died during its ceremony); the records themselves are pruned after this."""
        for fid in self.store.factory_ids():
            try:
                if self.store.get(fid, "factory") is not None:
                    continue
                funding = self.store.get(fid, "lsp-funding")
            except StoreError as e:  # kept; the HTLC check fails closed on it
                self.log(f"factory {fid}: unreadable record left alone: {e}")
                continue
            if funding is None:
                continue
            try:
                self.node.discard_prepared(PreparedTx("", funding["psbt"]))
                self.log(f"factory {fid}: released the inputs of a funding whose ceremony never completed")
            except Exception as e:  # already spent or released
                self.log(f"factory {fid}: releasing inputs: {e}")

    def _dev_crash_point(self, name: str, kill_node: bool = False) -> None:
        if self.dev_fail_at == name and kill_node:
            self.log(f"dev: killing lightningd (SIGKILL) at {name}")
            os.kill(os.getppid(), signal.SIGKILL)
        if self.dev_fail_at == name:
            self.log(f"dev: stopping the plugin at {name}")
            os._exit(1)

    def _abort(self, pending: Pending, opened: list[str], prepared: Optional[PreparedTx], completed: list[str]) -> None:
        with pending.cond:
            if pending.coordinator is None or pending.outcome is None:
                for c in pending.clients:
                    try:
                        self.transport.send(c.node_id, Abort(pending.factory_id, pending.invite_id,
                                                             int(AbortCode.REFUSED), "factory creation aborted", None))
                    except Exception as e:  # the peer may be gone already
                        self.log(f"abort to {c.node_id}: {e}")
        for peer in opened:
            try:
                self.node.fundchannel_cancel(peer)
            except Exception as e:
                self.log(f"fundchannel_cancel {peer}: {e}")
        if prepared is not None:
            self.node.discard_prepared(prepared)
        ids = set(completed)
        for ch in self.node.peer_channels() if ids else []:
            if ch.get("channel_id") in ids:
                threading.Thread(target=self._close, args=(pending.factory_id.hex(), str(ch["channel_id"])),
                                 daemon=True).start()


def _fake_funding(channel_output: TxOut) -> Psbt:
    """Testing only (superscalar-dev-fail-at=lsp-fake-leaf): a misbehaving LSP's funding transaction for a
    channel that pays the right script but is not the client's leaf."""
    from ..bitcoin.hashes import sha256

    tx = Tx(2, (TxIn(OutPoint(sha256(b"not a factory leaf"), 0)),), (channel_output,))
    return Psbt(tx, (PsbtInput(witness_utxo=TxOut(channel_output.value + 1_000, b"\x00\x14" + bytes(20))),), (PsbtOutput(),))


def _seckey(secret: bytes) -> bytes:
    k = int.from_bytes(secret, "big")
    if not 0 < k < musig2.N:
        raise CreateError("derived key out of range")
    return secret


def _lsp_record(factory: Factory, graph: Any, clients: list[ClientSpec], channel_ids: list[Optional[str]]) -> dict[str, Any]:
    params = factory.params
    chans = []
    for i, (c, cid) in enumerate(zip(clients, channel_ids)):
        op = graph.channel_outpoint(i)
        exit_path = graph.exit_path(i)
        chans.append({"peer_id": c.node_id, "channel_id": cid, "funding_outpoint": f"{op.txid_hex}:{op.vout}",
                      "capacity_msat": factory.terms[i].capacity_sat * 1000,
                      "early_warning_blocks": exit_path.early_warning_blocks(params.confirm_blocks),
                      "exit": {"transactions": len(exit_path.txs), "vbytes": exit_path.vbytes,
                               "fee_sat": exit_path.fee, "wait_blocks": sum(exit_path.waits)}})
    return {
        "role": "lsp", "params": params.serialize().decode(), "state": list(graph.state),
        "pubkeys": [k.hex() for k in factory.keys.pubkeys],
        "terms": [[t.balance_sat, t.inbound_sat] for t in factory.terms],
        "scripts": {"channels": [s.hex() for s in factory.scripts.channels],
                    "payouts": [s.hex() for s in factory.scripts.payouts], "lsp": factory.scripts.lsp_payout.hex()},
        "funding_outpoint": f"{graph.funding.txid_hex}:{graph.funding.vout}",
        "funding_value_sat": factory.funding_output.value,
        "channels": chans,
    }
