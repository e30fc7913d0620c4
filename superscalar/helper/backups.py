"""Clients' encrypted backups, kept by their helper (`superscalar-helper=true`).

A client sends, for each of its factories, its records sealed under a key only its node can derive
(crypto/backup_blob.py), again whenever they change; the helper keeps the newest per factory
(``["superscalar", "backups", <client>, <factory id>]``), at most `PackageLimits.per_client` factories
and `package_bytes` bytes each, and gives them back to the node that proves the same id (the peer of
the connection: a fresh node restored from the same `hsm_secret` has it). It cannot read them.

`withhold` (testing only: `superscalar-dev-fail-at=helper-withhold-backups`) acknowledges and keeps
nothing, the lie a client's audit (client/backup.py) must catch.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Optional

from ..protocol.wire import BackupBlob, BackupFetch, BackupStore, TowerAnswer
from .distributions import PackageLimits

ROOT = ["superscalar", "backups"]
ALL = bytes(32)


class Backups:
    def __init__(self, node: Any, limits: PackageLimits, log: Callable[..., None], withhold: bool = False) -> None:
        self.node, self.limits, self.log, self.withhold = node, limits, log, withhold

    def _held(self, client: str) -> dict[str, tuple[str, int]]:
        """factory id -> (blob hex, generation)."""
        return {key[3]: (text, 0) for key, text in self.node.datastore_values([*ROOT, client])}

    def keep(self, client: str, msg: BackupStore) -> TowerAnswer:
        held = self._held(client)
        fid = msg.factory_id.hex()
        def answer(accepted: bool, reason: Optional[str] = None) -> TowerAnswer:
            return TowerAnswer(msg.factory_id, msg.session_id, int(accepted), len(held), reason)
        if msg.session_id != hashlib.sha256(msg.blob).digest():
            return answer(False, "session_id must be the blob's SHA-256")
        if len(msg.blob) > self.limits.package_bytes:
            return answer(False, f"a backup is at most {self.limits.package_bytes} bytes")
        if fid not in held and len(held) >= self.limits.per_client:
            return answer(False, f"{self.limits.per_client} backups kept for this client already")
        if self.withhold:
            return answer(True)  # the lie: acknowledged, not kept
        found = self.node.datastore_get([*ROOT, client, fid])
        self.node.datastore_put([*ROOT, client, fid], msg.blob.hex(), found[1] if found else None)
        if fid not in held:
            held[fid] = (msg.blob.hex(), 0)
        return answer(True)

    def fetch(self, client: str, msg: BackupFetch) -> list[BackupBlob]:
        """What the client gets back: each backup of its (or of `msg.factory_id`), one message each."""
        held = self._held(client)
        wanted = sorted(held) if msg.factory_id == ALL else [f for f in held if f == msg.factory_id.hex()]
        if not wanted:
            return [BackupBlob(msg.factory_id, msg.session_id, 0, 0, b"")]
        return [BackupBlob(bytes.fromhex(fid), msg.session_id, i, len(wanted), bytes.fromhex(held[fid][0]))
                for i, fid in enumerate(wanted)]

    def info(self) -> dict[str, Any]:
        clients = sorted({k[2] for k in self.node.datastore_list(ROOT) if len(k) > 2})
        return {"backups": {c: len(self._held(c)) for c in clients}}
