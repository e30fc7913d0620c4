"""Blocks, as far as a chain watcher needs them: the transactions of a serialized block.

A block is an 80-byte header, a CompactSize transaction count, then the transactions in their
witness serialization (BIP-144). Nothing here checks proof of work or the merkle root: blocks come
from our own bitcoind through lightningd.
"""

from __future__ import annotations

from .encoding import decode_all
from .errors import DecodeError
from .hashes import hash256
from .tx import Tx

HEADER_SIZE = 80
_MIN_TX_SIZE = 10  # version, two counts, locktime: a count beyond what the rest could hold is malformed


def block_transactions(data: bytes) -> tuple[Tx, ...]:
    """Every transaction of a serialized block, in block order. Raises DecodeError."""
    if len(data) < HEADER_SIZE + 1:
        raise DecodeError("block shorter than its header")
    return decode_all(lambda r: tuple(Tx.read(r) for _ in range(r.read_count(_MIN_TX_SIZE))), data[HEADER_SIZE:])


def block_hash(data: bytes) -> str:
    """The block's hash as RPCs show it: the double SHA-256 of its 80-byte header, byte-reversed, hex."""
    if len(data) < HEADER_SIZE:
        raise DecodeError("block shorter than its header")
    return hash256(data[:HEADER_SIZE])[::-1].hex()
