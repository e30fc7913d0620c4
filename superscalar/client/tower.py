"""A client's side of its helpers' watchtower (`superscalar-helpers=<node id>,...`).

lightningd calls the `commitment_revocation` hook each time a peer revokes a commitment of a channel
with us, with the penalty transaction that would take that peer's balance if the commitment ever
appeared on chain. Only we can publish it, and only while online: a client that sleeps through the
peer's `to_self_delay` loses that protection. So each penalty is sealed under its commitment's txid
(crypto/tower_blob.py) and sent to every helper. It is written to the datastore first
(``["superscalar", "tower-out", <helper>, <locator>]``) and deleted once the helper answered, so a
restart, or a helper that was away, gets it sent again when the helper connects.
"""

from __future__ import annotations

import hashlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Protocol

from ..chain.lifecycle import LIFECYCLE, watch_of
from ..crypto.tower_blob import LOCATOR_BYTES, seal
from ..factory.lifecycle import escalate_blocks
from ..protocol.wire import HelpExit, HelpPackage, Message, TowerAnswer, TowerStore

ROOT = ["superscalar", "tower-out"]


class TowerClientNode(Protocol):
    def datastore_put(self, key: list[str], value: str, generation: Optional[int]) -> int: ...
    def datastore_del(self, key: list[str]) -> None: ...
    def datastore_values(self, prefix: list[str]) -> list[tuple[list[str], str]]: ...


def session_of(locator: bytes) -> bytes:
    """A request's id: its locator, padded (the answer names what it answers)."""
    return locator + bytes(32 - LOCATOR_BYTES)


class TowerClient:
    def __init__(self, node: TowerClientNode, send: Callable[[str, Message], None], helpers: tuple[str, ...],
                 log: Callable[..., None]) -> None:
        self.node, self.send, self.helpers, self.log = node, send, helpers, log
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="superscalar-tower")  # in order
        self._lock = threading.Lock()
        self.acknowledged: dict[str, int] = {}  # per helper: blobs it said it holds (its last answer)
        self.refused: dict[str, str] = {}  # per helper: the reason of its last refusal

    def on_revocation(self, commitment_txid: str, penalty_tx: str, channel_id: str, commitnum: int) -> None:
        """The hook's payload: sealed and sent to every helper, in the background (the hook returns)."""
        if self.helpers:
            self._worker.submit(self._guard, commitment_txid, bytes.fromhex(penalty_tx), channel_id, commitnum)

    def _guard(self, commitment_txid: str, penalty: bytes, channel_id: str, commitnum: int) -> None:
        try:
            locator, blob = seal(commitment_txid, penalty)
            value = json.dumps({"channel_id": channel_id, "commitnum": commitnum, "blob": blob.hex()})
            for helper in self.helpers:
                try:
                    self.node.datastore_put([*ROOT, helper, locator.hex()], value, None)
                except OSError:
                    raise
                except Exception:  # already pending (the same revocation again)
                    pass
                self._send(helper, locator, channel_id, blob)
        except Exception as e:
            self.log(f"helper: guarding commitment {commitment_txid} of channel {channel_id}: {e!r}", level="unusual")

    def _send(self, helper: str, locator: bytes, channel_id: str, blob: bytes) -> None:
        try:
            self.send(helper, TowerStore(bytes.fromhex(channel_id), session_of(locator), locator, blob))
        except Exception as e:  # not connected: sent again when it connects
            self.log(f"helper {helper}: not sent now ({e}); kept to send again", level="debug")

    def on_connect(self, peer: str) -> None:
        """A helper came back: everything it has not answered goes again."""
        if peer in self.helpers:
            self._worker.submit(self._resend, peer)

    def _resend(self, helper: str) -> None:
        try:
            for key, text in self.node.datastore_values([*ROOT, helper]):
                data = json.loads(text)
                self._send(helper, bytes.fromhex(key[-1]), str(data["channel_id"]), bytes.fromhex(data["blob"]))
        except Exception as e:
            self.log(f"helper {helper}: resending: {e!r}", level="unusual")

    def on_message(self, peer: str, msg: Message) -> bool:
        """A helper's answer: the blob is no longer ours to keep (kept there, or refused for good)."""
        if not isinstance(msg, TowerAnswer):
            return False
        if peer not in self.helpers:
            return True
        locator = msg.session_id[:LOCATOR_BYTES]
        with self._lock:
            if msg.accepted:
                self.acknowledged[peer] = msg.stored
            else:
                self.refused[peer] = str(msg.reason)
        if not msg.accepted:
            self.log(f"helper {peer} refused to keep the penalty for locator {locator.hex()}: {msg.reason}",
                     level="unusual")
        self._worker.submit(self._drop, peer, locator)
        return True

    def _drop(self, helper: str, locator: bytes) -> None:
        try:
            self.node.datastore_del([*ROOT, helper, locator.hex()])
        except Exception:
            pass  # answered twice

    def pending(self) -> int:
        return sum(len(self.node.datastore_values([*ROOT, h])) for h in self.helpers)

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {"helpers": [{"id": h, "acknowledged_blobs": self.acknowledged.get(h, 0),
                                 "last_refusal": self.refused.get(h)} for h in self.helpers],
                    "pending_blobs": self.pending()}


PACKAGES_DOC = "helped-by"  # {factory id: {helper: "kept" or its refusal}}
PATHS_DOC = "helped-exits-by"  # {factory id: {helper: the hash of the path it keeps, "acting", or its refusal}}
RESEND_BLOCKS = 6  # a package not answered is sent again after this many blocks (or on reconnect)


class HelperPackages:
    """Each of our factories' signed distribution and fee variants, sent to every helper
    (helper/distributions.py): published by the helper if the factory reaches its distribution height
    unclosed while we sleep."""

    def __init__(self, store: Any, send: Callable[[str, Message], None], helpers: tuple[str, ...],
                 log: Callable[..., None], plan_of: Optional[Callable[[str], Any]] = None,
                 coinless: Callable[[], bool] = lambda: False) -> None:
        self.store, self.send, self.helpers, self.log = store, send, helpers, log
        self.plan_of = plan_of  # factory id -> its ExitPlan (chain/routing.py), for the helper's exit
        self.coinless = coinless  # does this node own no coin to bump its own exit?
        self._sent: dict[tuple[str, str], int] = {}  # (helper, factory id) -> height sent, unanswered
        # (helper, factory id) -> (height, what it will hold: the path's hash or "acting", the request's session)
        self._paths: dict[tuple[str, str], tuple[int, str, bytes]] = {}
        self._dirty: Optional[set[str]] = None  # factories whose records changed since the last block (None: all)
        self._dirty_lock = threading.Lock()

    def on_block(self, height: int) -> None:
        if not self.helpers:
            return
        acked: dict[str, dict[str, str]] = self.store.get_doc(PACKAGES_DOC) or {}
        live = set(self.store.factory_ids())
        if any(fid not in live for fid in acked):
            acked = {fid: h for fid, h in acked.items() if fid in live}
            self.store.put_doc(PACKAGES_DOC, acked)
        # what changed since the last block (a record written), and what waits for an answer too long
        due = {fid for (_, fid), at in self._sent.items() if height - at >= RESEND_BLOCKS} | \
              {fid for (_, fid), (at, _, _) in self._paths.items() if height - at >= RESEND_BLOCKS}
        with self._dirty_lock:
            fids = live if self._dirty is None else (self._dirty | due) & live
            self._dirty = set()
        for fid in sorted(fids):
            rec = self.store.get(fid, "factory")
            if not rec or rec.get("role") != "client":
                continue
            spent = (self.store.get(fid, LIFECYCLE) or {}).get("funding_spent")
            watch = watch_of(fid, rec)
            if watch is None or height >= watch.params.timeout(0) or (spent and spent.get("by") != "tree"):
                continue  # never funded, over, or closed or distributed: nothing for a helper to publish
            self._send_path(fid, height)
            todo = [h for h in self.helpers if h not in acked.get(fid, {})
                    and height - self._sent.get((h, fid), -RESEND_BLOCKS) >= RESEND_BLOCKS]
            if spent or not todo or not watch.distributions:
                continue  # the tree is out: the distribution can no longer be
            value, script = watch.funding_prevout
            msg = HelpPackage(bytes.fromhex(fid), bytes.fromhex(fid), tuple(t.serialize() for t in watch.distributions),
                              value, script, escalate_blocks(watch.params.timeout_margin_blocks),
                              watch.params.timeout(0))
            for helper in todo:
                self._sent[(helper, fid)] = height
                try:
                    self.send(helper, msg)
                except Exception as e:  # not connected: again later
                    self.log(f"helper {helper}: factory {fid}'s distribution not sent now ({e})", level="debug")

    def changed(self, factory_id: str, record: str, data: Any) -> None:
        """A store listener: a record of `factory_id` was written (its path or exit may have changed)."""
        with self._dirty_lock:
            if self._dirty is not None:
                self._dirty.add(factory_id)

    def _path_message(self, fid: str, act_now: bool) -> Optional[HelpExit]:
        if self.plan_of is None:
            return None
        try:
            plan = self.plan_of(fid)
        except ValueError:
            return None  # never funded: no path
        return HelpExit(bytes.fromhex(fid), hashlib.sha256(b"".join(bytes.fromhex(t[1]) for t in plan.txs)).digest(),
                        tuple(str(t[0]).encode() for t in plan.txs), tuple(bytes.fromhex(t[1]) for t in plan.txs),
                        tuple(int(t[2]) for t in plan.txs), tuple(bytes.fromhex(t[3]) for t in plan.txs),
                        int(plan.bump_after), int(plan.timeout_height), int(plan.dw_step or 0),
                        int(plan.lstock_csv or 0), int(act_now))

    def _send_path(self, fid: str, height: int) -> None:
        """Our signed path to each helper that does not hold this version of it; with `act_now` once our
        own exit is under way and we own no coin to bump it."""
        exit_ = self.store.get(fid, "exit")
        acting = exit_ is not None and exit_.get("status") not in ("closed", "cancelled", "conflicted") and self.coinless()
        msg = self._path_message(fid, acting)
        if msg is None:
            return
        kept: dict[str, dict[str, str]] = self.store.get_doc(PATHS_DOC) or {}
        want = "acting" if acting else msg.session_id.hex()
        for helper in self.helpers:
            held = kept.get(fid, {}).get(helper)
            if held in (want, "acting") or (held or "").startswith("refused"):
                continue
            sent = self._paths.get((helper, fid))
            if sent is not None and sent[1] == want and height - sent[0] < RESEND_BLOCKS:
                continue
            self._paths[(helper, fid)] = (height, want, msg.session_id)
            try:
                self.send(helper, msg)
            except Exception as e:
                self.log(f"helper {helper}: factory {fid}'s exit path not sent now ({e})", level="debug")

    def act_now(self, fid: str) -> list[str]:
        """Ask every helper to publish our path of `fid` now (our LSP stopped answering); the helpers sent to."""
        msg = self._path_message(fid, True)
        if msg is None:
            raise ValueError(f"factory {fid}: no exit path of ours to hand over")
        sent = []
        for helper in self.helpers:
            self._paths[(helper, fid)] = (-RESEND_BLOCKS, "acting", msg.session_id)
            try:
                self.send(helper, msg)
                sent.append(helper)
            except Exception as e:
                self.log(f"helper {helper}: exit request not sent now ({e}); again at the next block", level="info")
        return sent

    def _path_answer(self, peer: str, msg: TowerAnswer) -> bool:
        fid = msg.factory_id.hex()
        sent = self._paths.get((peer, fid))
        if sent is None or sent[2] != msg.session_id:
            return False
        del self._paths[(peer, fid)]
        if not msg.accepted:
            self.log(f"helper {peer} refused factory {fid}'s exit path: {msg.reason}", level="unusual")
        kept: dict[str, dict[str, str]] = self.store.get_doc(PATHS_DOC) or {}
        kept[fid] = {**kept.get(fid, {}), peer: sent[1] if msg.accepted else f"refused: {msg.reason}"}
        self.store.put_doc(PATHS_DOC, kept)
        return True

    def on_message(self, peer: str, msg: Message) -> bool:
        """A helper's answer to a package (its session id is the factory id) or to a path."""
        if not isinstance(msg, TowerAnswer):
            return False
        if msg.session_id != msg.factory_id:
            return peer in self.helpers and self._path_answer(peer, msg)
        fid = msg.factory_id.hex()
        if peer not in self.helpers or (peer, fid) not in self._sent:
            return True
        del self._sent[(peer, fid)]
        if not msg.accepted:
            self.log(f"helper {peer} refused factory {fid}'s distribution: {msg.reason}", level="unusual")
        acked: dict[str, dict[str, str]] = self.store.get_doc(PACKAGES_DOC) or {}
        acked[fid] = {**acked.get(fid, {}), peer: "kept" if msg.accepted else f"refused: {msg.reason}"}
        self.store.put_doc(PACKAGES_DOC, acked)
        return True

    def on_connect(self, peer: str) -> None:
        for key in [k for k in self._sent if k[0] == peer]:
            self._sent[key] = -RESEND_BLOCKS  # due at the next block
        for key in [k for k in self._paths if k[0] == peer]:
            self._paths[key] = (-RESEND_BLOCKS, *self._paths[key][1:])

    def info(self) -> dict[str, Any]:
        acked: dict[str, dict[str, str]] = self.store.get_doc(PACKAGES_DOC) or {}
        paths: dict[str, dict[str, str]] = self.store.get_doc(PATHS_DOC) or {}
        return {"factories": acked, "exit_paths": paths}
