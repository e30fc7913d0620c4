"""In-process stand-ins for lightningd, for unit tests of the roles: the datastore's semantics that
`Store` relies on, and the few node calls a client makes while it joins a factory. Integration tests
run the real lightningd; these only let the roles' order of effects be checked in milliseconds."""

from __future__ import annotations

import hashlib
from typing import Any, Optional

from superscalar.bitcoin.script import p2tr_script
from superscalar.protocol.wire import Message


def node_secret(label: str) -> bytes:
    """What `makesecret` gives for `label` on these fakes' node: a fixed hash of the label, so runs repeat."""
    return hashlib.sha256(b"node seed/" + label.encode()).digest()


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
        return node_secret(label)

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


class ChannelNode(MemoryDatastore):
    """lightningd's channel listing for the HTLC index, guard and watch: `channels` is what
    listpeerchannels returns; every listing is counted in `listings`."""

    def __init__(self, height: int = 100) -> None:
        super().__init__()
        self.height = height
        self.channels: list[dict[str, Any]] = []
        self.listings: list[Optional[str]] = []  # the peer of each listing (None: all)
        self.fulfilled: set[tuple[str, int]] = set()  # (channel name, htlc id) this node fulfilled

    def blockheight(self) -> int:
        return self.height

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        self.listings.append(peer)
        return [c for c in self.channels if peer is None or c["peer_id"] == peer]

    def channel_named(self, name: str) -> list[dict[str, Any]]:
        self.listings.append(name)
        return [c for c in self.channels if name in (c["short_channel_id"], c["alias"]["local"])]

    def peer_channels_fields(self, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        self.listings.append(None)
        return [{k: v for k, v in c.items() if k in fields} for c in self.channels]

    def incoming_fulfilled(self, names: tuple[str, ...], htlc_id: int, payment_hash: str) -> bool:
        return any((n, htlc_id) in self.fulfilled for n in names)


def listed_channel(n: int, peer: str, outpoint: str, scid: Optional[str] = None,
                   htlcs: Optional[list[dict[str, Any]]] = None) -> dict[str, Any]:
    """A listpeerchannels entry: channel id n, local alias `n`x0x1, the funding outpoint given."""
    txid, vout = outpoint.split(":")
    return {"channel_id": f"{n:064x}", "peer_id": peer, "funding_txid": txid, "funding_outnum": int(vout),
            "short_channel_id": scid, "alias": {"local": f"{n}x0x1", "remote": f"{n}x0x2"},
            "htlcs": htlcs or [], "state": "CHANNELD_NORMAL"}
