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

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Protocol

from ..chain.lifecycle import LIFECYCLE, watch_of
from ..crypto.tower_blob import LOCATOR_BYTES, seal
from ..factory.lifecycle import escalate_blocks
from ..protocol.wire import HelpPackage, Message, TowerAnswer, TowerStore

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
RESEND_BLOCKS = 6  # a package not answered is sent again after this many blocks (or on reconnect)


class HelperPackages:
    """Each of our factories' signed distribution and fee variants, sent to every helper
    (helper/distributions.py): published by the helper if the factory reaches its distribution height
    unclosed while we sleep."""

    def __init__(self, store: Any, send: Callable[[str, Message], None], helpers: tuple[str, ...],
                 log: Callable[..., None]) -> None:
        self.store, self.send, self.helpers, self.log = store, send, helpers, log
        self._sent: dict[tuple[str, str], int] = {}  # (helper, factory id) -> height sent, unanswered

    def on_block(self, height: int) -> None:
        if not self.helpers:
            return
        acked: dict[str, dict[str, str]] = self.store.get_doc(PACKAGES_DOC) or {}
        live = set(self.store.factory_ids())
        if any(fid not in live for fid in acked):
            acked = {fid: h for fid, h in acked.items() if fid in live}
            self.store.put_doc(PACKAGES_DOC, acked)
        for fid in sorted(live):
            todo = [h for h in self.helpers if h not in acked.get(fid, {})
                    and height - self._sent.get((h, fid), -RESEND_BLOCKS) >= RESEND_BLOCKS]
            if not todo:
                continue
            rec = self.store.get(fid, "factory")
            if not rec or rec.get("role") != "client" or (self.store.get(fid, LIFECYCLE) or {}).get("funding_spent"):
                continue  # closed, rolled over, distributed or exited: nothing left for a helper to publish
            watch = watch_of(fid, rec)
            if watch is None or not watch.distributions or height >= watch.params.timeout(0):
                continue
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

    def on_message(self, peer: str, msg: Message) -> bool:
        """A helper's answer to a package (its session id is the factory id)."""
        if not isinstance(msg, TowerAnswer) or msg.session_id != msg.factory_id:
            return False
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

    def info(self) -> dict[str, Any]:
        acked: dict[str, list[str]] = self.store.get_doc(PACKAGES_DOC) or {}
        return {"factories": {fid: helpers for fid, helpers in acked.items()}}
