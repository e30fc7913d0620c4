"""Factory records in lightningd's datastore, one subtree per factory:
``["superscalar", "factories", <factory_id>, <record>]``.

A record is JSON with a schema version. Writes use compare-and-swap on the datastore generation, so
two writers cannot silently overwrite each other; an unknown schema version is an error, never a reset.
Secret nonces are never stored here.

Reads are served from memory after the first (write-through: the datastore is written first, the
memory after it succeeded), because every block's steps read every live record and each read was a
`listdatastore` call. This plugin is the only writer of these keys; a write that finds the
generation moved (someone else wrote) is refused as before, and forgets what memory held.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Callable, Optional

from .node import ClnNode

ROOT = ["superscalar", "factories"]
DOCS = ["superscalar", "docs"]  # documents that belong to no factory (the LSP's ladder)
ARCHIVE_DOC = "archive"  # the factories whose records were deleted once nothing could need them
ARCHIVE_KEPT = 32  # summaries of the newest of them kept in that document
SCHEMA_VERSION = 1
# The fields that say which factory a `factory` record belongs to: a write that changes any of them
# would put another factory's data (another tree, another exit path) where a funded one's was.
IDENTITY = ("role", "params", "funding_outpoint", "lsp", "pubkey", "client_index", "leaf_outpoint")


class StoreError(RuntimeError):
    """A record could not be read or written as expected."""


_ABSENT = ("", -1)  # remembered: no such record

# Told of every record this store writes (factory id, record name, data) or deletes (data None).
Listener = Callable[[str, str, Optional[dict[str, Any]]], None]


class Store:
    def __init__(self, node: ClnNode, root: tuple[str, ...] = tuple(ROOT)) -> None:
        self.node = node
        self.root = list(root)  # another subtree for records that are not this node's factories (a helper's)
        self._generations: dict[tuple[str, str], int] = {}
        self._listeners: list[Listener] = []
        # (factory id or "/docs", record) -> (JSON text, generation), or _ABSENT; and the factory ids
        self._memory: dict[tuple[str, str], tuple[str, int]] = {}
        self._ids: Optional[set[str]] = None
        self._lock = threading.RLock()  # a read that misses and a write never interleave

    def listen(self, listener: Listener) -> None:
        """Call `listener` after each successful write or delete (in the writer's thread). A listener
        must not raise: the write has happened."""
        self._listeners.append(listener)

    def get(self, factory_id: str, record: str) -> Optional[dict[str, Any]]:
        return self._read([*self.root, factory_id, record], (factory_id, record), f"{factory_id}/{record}")

    def _read(self, key: list[str], generation_key: tuple[str, str], what: str) -> Optional[dict[str, Any]]:
        """A record's data (None if absent), remembering its generation for the next write."""
        with self._lock:
            found = self._memory.get(generation_key)
            if found is None:
                found = self.node.datastore_get(key) or _ABSENT
                self._memory[generation_key] = found
            if found is _ABSENT or found == _ABSENT:
                return None
            text, generation = found
            self._generations[generation_key] = generation
        data = json.loads(text)
        if data.get("schema") != SCHEMA_VERSION:
            raise StoreError(f"{what}: unknown schema version {data.get('schema')!r}")
        return dict(data["data"])

    def put(self, factory_id: str, record: str, data: dict[str, Any]) -> None:
        """Write `record`, replacing only the version this store last read or wrote. A `factory`
        record is never replaced by another factory's (see `IDENTITY`), whoever asks."""
        key = (factory_id, record)
        text = json.dumps({"schema": SCHEMA_VERSION, "data": data}, sort_keys=True)
        with self._lock:
            if record == "factory" or key not in self._generations:
                old = self.get(factory_id, record)
                if record == "factory" and old is not None:
                    changed = [k for k in IDENTITY if old.get(k) != data.get(k)]
                    if changed:
                        raise StoreError(f"{factory_id}: refusing to replace the factory record with another "
                                         f"factory's ({', '.join(changed)} differ)")
            self._write(key, [*self.root, factory_id, record], text, f"{factory_id}/{record}")
            if self._ids is not None:
                self._ids.add(factory_id)
        for listener in self._listeners:
            listener(factory_id, record, data)

    def _write(self, key: tuple[str, str], path: list[str], text: str, what: str) -> None:
        """Compare-and-swap `text` at `path` (held lock), then remember it; a failed write forgets."""
        try:
            generation = self.node.datastore_put(path, text, self._generations.get(key))
        except OSError:
            self._forget(key)
            raise  # lightningd unreachable (shutting down): not a conflict
        except Exception as e:  # the RPC error says the generation moved: someone else wrote
            self._forget(key)
            raise StoreError(f"{what}: write conflict or failure: {e}") from e
        self._generations[key] = generation
        self._memory[key] = (text, generation)

    def _forget(self, key: tuple[str, str]) -> None:
        self._memory.pop(key, None)
        self._generations.pop(key, None)

    def _deleted(self, factory_id: str, keys: list[list[str]]) -> None:
        """Delete `keys` of one factory in the datastore and in memory, in order (held lock)."""
        for key in keys:
            self.node.datastore_del(key)
            self._forget((factory_id, key[3]))
            self._memory[(factory_id, key[3])] = _ABSENT
        if self._ids is not None:
            self._ids.discard(factory_id)

    def delete_factory(self, factory_id: str) -> None:
        """Remove every record of a factory that never came to exist (an unfinished ceremony's scratch
        records). Refused once a `factory` record exists: those are kept for good."""
        with self._lock:
            if self.get(factory_id, "factory") is not None:
                raise StoreError(f"{factory_id}: a factory record is never deleted")
            keys = [k for k in self.node.datastore_list([*self.root, factory_id]) if len(k) > 3]
            self._deleted(factory_id, keys)
        for key in keys:
            for listener in self._listeners:
                listener(factory_id, key[3], None)

    def archive_factory(self, factory_id: str, summary: dict[str, Any]) -> None:
        """Delete every record of a factory that can never matter again (chain/forget.py says when),
        so that neither the datastore nor the per-block work grows with the factories a node has seen.
        What is kept is one document of bounded size: how many factories and channels were archived,
        and the summaries of the newest ARCHIVE_KEPT. It is written first, and the `factory` record
        deleted last: a crash in between leaves a factory still listed (archived again, counted once)
        or one without its `factory` record (pruned at start-up as scratch)."""
        doc = self.get_doc(ARCHIVE_DOC) or {"factories": 0, "channels": 0, "recent": []}
        if factory_id not in {r["factory_id"] for r in doc["recent"]}:
            doc["factories"] += 1
            doc["channels"] += len(summary.get("channel_ids", ()))
            doc["recent"] = [*doc["recent"], {**summary, "factory_id": factory_id}][-ARCHIVE_KEPT:]
            self.put_doc(ARCHIVE_DOC, doc)
        with self._lock:
            keys = sorted((k for k in self.node.datastore_list([*self.root, factory_id]) if len(k) > 3),
                          key=lambda k: k[3] == "factory")
            self._deleted(factory_id, keys)
        for key in keys:
            for listener in self._listeners:
                listener(factory_id, key[3], None)

    def archived(self) -> dict[str, Any]:
        """{"factories": how many were archived, "channels": their channels, "recent": the newest
        ARCHIVE_KEPT summaries, each with its factory_id}."""
        return self.get_doc(ARCHIVE_DOC) or {"factories": 0, "channels": 0, "recent": []}

    def prune_unfinished(self) -> list[str]:
        """At start-up no ceremony can be under way (their state lives in memory only): remove the
        scratch records of every factory that never got a `factory` record. Returns their ids."""
        gone = [fid for fid in self.factory_ids() if self._absent(fid)]
        for fid in gone:
            self.delete_factory(fid)
        return gone

    def _absent(self, factory_id: str) -> bool:
        """Has this factory no `factory` record? An unreadable one counts as present: it is kept, and
        whoever reads it reports the error."""
        try:
            return self.get(factory_id, "factory") is None
        except StoreError:
            return False

    def get_doc(self, name: str) -> Optional[dict[str, Any]]:
        """A document that belongs to no factory (e.g. the ladder's waiting list), or None."""
        return self._read([*DOCS, name], ("/docs", name), name)

    def put_doc(self, name: str, data: dict[str, Any]) -> None:
        """Write such a document, with the same compare-and-swap as a factory record."""
        text = json.dumps({"schema": SCHEMA_VERSION, "data": data}, sort_keys=True)
        key = ("/docs", name)
        with self._lock:
            if key not in self._generations:
                self.get_doc(name)
            self._write(key, [*DOCS, name], text, name)

    def doc_names(self, prefix: str = "") -> list[str]:
        """The names of the documents that begin with `prefix`."""
        return sorted({k[2] for k in self.node.datastore_list(DOCS) if len(k) > 2 and k[2].startswith(prefix)})

    def factory_ids(self) -> list[str]:
        with self._lock:
            if self._ids is None:
                self._ids = {k[2] for k in self.node.datastore_list(self.root) if len(k) > 2}
            return sorted(self._ids)
