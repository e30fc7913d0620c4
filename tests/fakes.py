"""In-process stand-ins for lightningd, for unit tests of the roles: the datastore's semantics that
`Store` relies on, and the few node calls a client makes while it joins a factory. Integration tests
run the real lightningd; these only let the roles' order of effects be checked in milliseconds."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from superscalar.bitcoin.script import p2tr_script
from superscalar.protocol.wire import Message


class MemoryDatastore:
    """lightningd's datastore: must-create, must-replace at a generation; every write is journaled."""

    def __init__(self, journal: Optional[list[tuple[str, Any]]] = None) -> None:
        self.data: dict[tuple[str, ...], tuple[str, int]] = {}
        self.journal = journal if journal is not None else []

    def datastore_get(self, key: list[str]) -> Optional[tuple[str, int]]:
        return self.data.get(tuple(key))

    def datastore_put(self, key: list[str], value: str, generation: Optional[int]) -> int:
        k = tuple(key)
        if generation is None:
            if k in self.data:
                raise RuntimeError("already exists")
            self.data[k] = (value, 0)
        else:
            if k not in self.data or self.data[k][1] != generation:
                raise RuntimeError("generation mismatch")
            self.data[k] = (value, generation + 1)
        self.journal.append(("put", k))
        return self.data[k][1]

    def datastore_del(self, key: list[str]) -> None:
        del self.data[tuple(key)]
        self.journal.append(("del", tuple(key)))

    def datastore_list(self, prefix: list[str]) -> list[list[str]]:
        return [list(k) for k in self.data if list(k[:len(prefix)]) == prefix]


class ClientNode(MemoryDatastore):
    """What `Client` asks of lightningd while it joins: height, secrets, a payout script."""

    def __init__(self, height: int, journal: Optional[list[tuple[str, Any]]] = None) -> None:
        super().__init__(journal)
        self.height = height
        self.addresses = 0

    def blockheight(self) -> int:
        return self.height

    def secret(self, label: str) -> bytes:
        return hashlib.sha256(b"node seed/" + label.encode()).digest()

    def new_script(self) -> bytes:
        self.addresses += 1
        return p2tr_script(hashlib.sha256(b"addr" + bytes([self.addresses])).digest())

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        return []


class Outbox:
    """A transport that journals what it sends."""

    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.journal = journal

    def send(self, peer: str, msg: Message) -> None:
        self.journal.append(("send", (peer, msg)))
