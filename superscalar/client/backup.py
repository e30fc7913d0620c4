"""A client's factory records, backed up at its helpers and restored from them
(`superscalar-helpers`; `superscalar-restore`).

Each time a factory record of ours changes, it goes (with lightningd's static channel backups, the
`staticbackup` of every channel) to each helper, sealed under a key derived from our `hsm_secret`
(crypto/backup_blob.py). A helper acknowledges with the blob's hash; every `audit_blocks` we fetch one
backup back from each helper and compare: a helper that acknowledged a backup it does not return is
logged and shown as suspect (`superscalar-getinfo`).

`restore` is for a node whose data directory was lost and that was started again from the same
`hsm_secret` (so it has the same node id, which the helpers index by, and the same key). It fetches
every backup from every connected helper and keeps, per factory, the newest that opens under our key
(one that does not is a helper's lie, reported). It checks each before writing anything: the factory
key in it is the one our node derives for that LSP and factory, the exit path is a chain of signed
spends from the funding output (factory/checks.py), and that output is the one on chain (unspent:
bitcoind's UTXO set; a spent one is reported). Then the records are written and the chain follower
carries on from them (an exit, a distribution, its funding watch).

The channels themselves live in lightningd's database, lost with the disk. Their static backups come
back too (`static_backups`), and `recover_channels` hands them to lightningd's `recoverchannel`. On
v26.06.6 that is not safe for a leaf channel: when the LSP then closes with its commitment, the stub
channel's `onchaind` fails ("Could not find resolution for output 0") and lightningd exits. So by
default a restored client gets its money through the factory: its path, or the distribution, which pays
it the channel's whole capacity when the LSP does not close or roll the factory over first.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..bitcoin.tx import Tx, TxOut
from ..crypto import musig2
from ..crypto.backup_blob import KEY_LABEL, open_backup, seal_backup
from ..factory.checks import signed_chain_refusal
from ..protocol.wire import BackupBlob, BackupFetch, BackupStore, Message, TowerAnswer
from ..records import factory_key_label

BACKUP_DOC = "backed-up"  # {factory id: {helper: SHA-256 of the blob it acknowledged}}
ALL = bytes(32)
RESEND_BLOCKS = 6
AUDIT_BLOCKS = 144
MAX_KEYS = 1_000  # wallet keys a restore hands out looking for a payout script


@dataclass
class _Fetch:
    helper: str
    count: Optional[int] = None
    blobs: dict[str, bytes] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


class ClientBackup:
    def __init__(self, node: Any, store: Any, send: Callable[[str, Message], None], helpers: tuple[str, ...],
                 log: Callable[..., None], audit_blocks: int = AUDIT_BLOCKS) -> None:
        self.node, self.store, self.send, self.helpers, self.log = node, store, send, helpers, log
        self.audit_blocks = audit_blocks
        self._key: Optional[bytes] = None
        self._lock = threading.Lock()
        self._dirty: Optional[set[str]] = None  # None: every factory (the first block)
        self._sent: dict[tuple[str, str], tuple[int, str]] = {}  # (helper, fid) -> (height, blob hash) unanswered
        self._fetches: dict[bytes, _Fetch] = {}  # fetch session -> what came back
        self._audits: dict[bytes, tuple[str, str, str, int]] = {}  # session -> (helper, fid, hash, height)
        self.suspect: dict[str, str] = {}  # helper -> what it did wrong

    def key(self) -> bytes:
        if self._key is None:
            self._key = self.node.secret(KEY_LABEL)
        return self._key

    def changed(self, factory_id: str, record: str, data: Any) -> None:
        if record == "factory":
            with self._lock:
                if self._dirty is not None:
                    self._dirty.add(factory_id)

    # --- backing up ---

    def _blob(self, fid: str, rec: dict[str, Any], height: int) -> bytes:
        try:
            scb = list(self.node.rpc.call("staticbackup", {})["scb"])
        except Exception:
            scb = []
        plain = json.dumps({"version": 1, "factory_id": fid, "saved_height": height, "factory": rec, "scb": scb},
                           sort_keys=True).encode()
        return seal_backup(self.key(), bytes.fromhex(fid), plain)

    def on_block(self, height: int) -> None:
        if not self.helpers:
            return
        due = {fid for (_, fid), (at, _) in self._sent.items() if height - at >= RESEND_BLOCKS}
        with self._lock:
            live = set(self.store.factory_ids())
            fids = live if self._dirty is None else (self._dirty | due) & live
            self._dirty = set()
        for fid in sorted(fids):
            rec = self.store.get(fid, "factory")
            if not rec or rec.get("role") != "client" or not rec.get("signed_path"):
                continue
            blob = self._blob(fid, rec, height)
            digest = hashlib.sha256(blob).digest()
            for helper in self.helpers:
                self._sent[(helper, fid)] = (height, digest.hex())
                try:
                    self.send(helper, BackupStore(bytes.fromhex(fid), digest, blob))
                except Exception as e:
                    self.log(f"helper {helper}: backup of factory {fid} not sent now ({e})", level="debug")
        if height % self.audit_blocks == 0:
            self._audit(height)
        for session, (helper, fid, _, at) in list(self._audits.items()):
            if height - at >= RESEND_BLOCKS:
                del self._audits[session]
                self._suspect(helper, f"did not return the backup of factory {fid} it acknowledged")

    def _audit(self, height: int) -> None:
        kept: dict[str, dict[str, str]] = self.store.get_doc(BACKUP_DOC) or {}
        for helper in self.helpers:
            held = [(fid, h[helper]) for fid, h in sorted(kept.items()) if helper in h]
            if not held:
                continue
            fid, digest = held[height // self.audit_blocks % len(held)]
            session = os.urandom(32)
            self._audits[session] = (helper, fid, digest, height)
            try:
                self.send(helper, BackupFetch(bytes.fromhex(fid), session))
            except Exception:
                del self._audits[session]  # not connected: audited another time

    def _suspect(self, helper: str, what: str) -> None:
        self.suspect[helper] = what
        self.log(f"helper {helper} {what}: it may not hold our backups", level="unusual")

    def on_message(self, peer: str, msg: Message) -> bool:
        if isinstance(msg, TowerAnswer):
            sent = self._sent.get((peer, msg.factory_id.hex()))
            if sent is None or sent[1] != msg.session_id.hex():
                return False
            del self._sent[(peer, msg.factory_id.hex())]
            if not msg.accepted:
                self.log(f"helper {peer} refused the backup of factory {msg.factory_id.hex()}: {msg.reason}",
                         level="unusual")
                return True
            kept: dict[str, dict[str, str]] = self.store.get_doc(BACKUP_DOC) or {}
            kept[msg.factory_id.hex()] = {**kept.get(msg.factory_id.hex(), {}), peer: sent[1]}
            self.store.put_doc(BACKUP_DOC, kept)
            return True
        if not isinstance(msg, BackupBlob):
            return False
        audit = self._audits.pop(msg.session_id, None)
        if audit is not None:
            helper, fid, digest, _ = audit
            if peer == helper and (msg.count == 0 or hashlib.sha256(msg.blob).hexdigest() != digest):
                self._suspect(helper, f"returned {'no' if msg.count == 0 else 'another'} backup of factory {fid} "
                                      "than the one it acknowledged")
            return True
        fetch = self._fetches.get(msg.session_id)
        if fetch is not None and peer == fetch.helper:
            fetch.count = msg.count
            if msg.count:
                fetch.blobs[msg.factory_id.hex()] = msg.blob
            if len(fetch.blobs) >= (fetch.count or 0):
                fetch.done.set()
        return True

    def info(self) -> dict[str, Any]:
        kept: dict[str, dict[str, str]] = self.store.get_doc(BACKUP_DOC) or {}
        with self._lock:
            dirty = len(self._dirty) if self._dirty is not None else len(self.store.factory_ids())
        return {"backed_up": {fid: sorted(h) for fid, h in kept.items()}, "suspect_helpers": dict(self.suspect),
                # records changed since the last block, and backups sent but not yet acknowledged
                "backups_pending": dirty + len(self._sent)}

    # --- restoring ---

    def restore(self, wait: float = 30.0, recover_channels: bool = False) -> dict[str, Any]:
        """Fetch, check and write back every factory backed up at our connected helpers; with
        `recover_channels`, also hand the channels' static backups to lightningd (see the module doc)."""
        fetches = []
        for helper in self.helpers:
            session = os.urandom(32)
            fetch = self._fetches[session] = _Fetch(helper)
            try:
                self.send(helper, BackupFetch(ALL, session))
                fetches.append(fetch)
            except Exception as e:
                self.log(f"helper {helper}: cannot ask for our backups: {e}", level="info")
        for fetch in fetches:
            fetch.done.wait(wait)
        for session in [s for s, f in self._fetches.items() if f in fetches]:
            del self._fetches[session]
        problems: list[dict[str, str]] = []
        newest: dict[str, dict[str, Any]] = {}
        for fetch in fetches:
            if fetch.count is None:
                problems.append({"helper": fetch.helper, "problem": "did not answer"})
            for fid, blob in fetch.blobs.items():
                plain = open_backup(self.key(), bytes.fromhex(fid), blob)
                if plain is None:
                    problems.append({"helper": fetch.helper, "factory_id": fid,
                                     "problem": "its backup does not open under our key: not ours, or altered"})
                    self._suspect(fetch.helper, f"returned a backup of factory {fid} that does not open")
                    continue
                data = json.loads(plain)
                if fid not in newest or int(data["saved_height"]) > int(newest[fid]["saved_height"]):
                    newest[fid] = {**data, "helper": fetch.helper}
        restored, refused = [], []
        scbs: set[str] = set()
        for fid, data in sorted(newest.items()):
            rec = data["factory"]
            why = self._check(fid, rec)
            if why is not None:
                refused.append({"factory_id": fid, "helper": data["helper"], "reason": why})
                continue
            if self.store.get(fid, "factory") is None:
                self.store.put(fid, "factory", rec)
                restored.append({"factory_id": fid, "helper": data["helper"], "saved_height": data["saved_height"],
                                 "funding_outpoint": rec["funding_outpoint"]})
            scbs.update(data.get("scb") or [])
        payouts = {Tx.from_hex(newest[r["factory_id"]]["factory"]["distribution"]).outputs[
                       int(newest[r["factory_id"]]["factory"]["client_index"])].script_pubkey
                   for r in restored if newest[r["factory_id"]]["factory"].get("distribution")}
        missing = self._watch_payouts(payouts)
        if missing:
            problems.append({"problem": f"{len(missing)} payout scripts are beyond the first {MAX_KEYS} wallet keys"})
        recovered: list[str] = []
        if scbs and recover_channels:
            known = {str(ch.get("channel_id")) for ch in self.node.peer_channels()}
            try:
                res = self.node.rpc.call("recoverchannel", {"scb": sorted(scbs)})
                recovered = [c for c in res.get("stubs", []) if c not in known]
            except Exception as e:
                problems.append({"problem": f"recoverchannel: {e}"})
        return {"restored": restored, "refused": refused, "problems": problems, "channels_recovered": recovered,
                "static_backups": sorted(scbs)}

    def _watch_payouts(self, scripts: set[bytes]) -> set[bytes]:
        """A fresh lightningd watches only the wallet keys it has handed out, and a distribution or close
        pays the key this client gave the LSP at creation: hand keys out (`newaddr`) until each payout
        script is among them (at most MAX_KEYS). The scripts still missing."""
        missing = set(scripts)
        for _ in range(MAX_KEYS if missing else 0):
            missing.discard(self.node.new_script())
            if not missing:
                break
        return missing

    def _check(self, fid: str, rec: dict[str, Any]) -> Optional[str]:
        """Why a backed-up record must not be written (None: it is ours, signed, and on chain)."""
        if rec.get("role") != "client":
            return "not a client's record"
        mine = musig2.individual_pk(self.node.secret(factory_key_label(str(rec["lsp"]), bytes.fromhex(fid), "client")))
        if mine.hex() != str(rec.get("pubkey")):
            return "its factory key is not the one this node derives for it"
        txs = [Tx.from_hex(h) for h in rec["signed_path"]]
        prevouts = [TxOut(int(v), bytes.fromhex(s)) for v, s in rec["path_prevouts"]]
        refusal = signed_chain_refusal([f"path/{i}" for i in range(len(txs))], txs, prevouts)
        if refusal is not None:
            return refusal
        txid, vout = str(rec["funding_outpoint"]).split(":")
        if txs[0].inputs[0].prevout.txid_hex != txid or txs[0].inputs[0].prevout.vout != int(vout):
            return "its path does not start at its funding output"
        out = self.node.rpc.call("getutxout", {"txid": txid, "vout": int(vout)})
        if out.get("amount") is not None and (_sat(out["amount"]) != prevouts[0].value
                                              or str(out.get("script")) != prevouts[0].script_pubkey.hex()):
            return "its funding output on chain is not the one its path spends"
        return None


def _sat(amount: Any) -> int:
    """`getutxout`'s amount: "123sat" (its schema's type `sat`), or msat as a number or "123msat"."""
    text = str(amount)
    if text.endswith("msat"):
        return int(text[:-4]) // 1000
    if text.endswith("sat"):
        return int(text[:-3])
    return int(text) // 1000
