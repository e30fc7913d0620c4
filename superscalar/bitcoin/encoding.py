"""Low-level serialization helpers: fixed-width integers, CompactSize, reader.

Mirrors the ``ser_*``/``deser_*`` helpers of Bitcoin Core's functional test
framework, but all decoding goes through :class:`ByteReader`, which raises
:class:`DecodeError` on every malformed input.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from .errors import BitcoinError, DecodeError

__all__ = [
    "MAX_SIZE",
    "ByteReader",
    "ser_compact_size",
    "ser_i32",
    "ser_string",
    "ser_string_vector",
    "ser_u8",
    "ser_u16",
    "ser_u32",
    "ser_u64",
]

# Bitcoin Core serialize.h MAX_SIZE: upper bound of any CompactSize we accept.
MAX_SIZE = 0x02000000


def ser_u8(n: int) -> bytes:
    """Serialize an unsigned 8-bit integer."""
    return _ser_uint(n, 1)


def ser_u16(n: int) -> bytes:
    """Serialize an unsigned 16-bit little-endian integer."""
    return _ser_uint(n, 2)


def ser_u32(n: int) -> bytes:
    """Serialize an unsigned 32-bit little-endian integer."""
    if not 0 <= n <= 0xFFFFFFFF:
        raise BitcoinError(f"value out of uint32 range: {n}")
    return n.to_bytes(4, "little")


def ser_u64(n: int) -> bytes:
    """Serialize an unsigned 64-bit little-endian integer."""
    return _ser_uint(n, 8)


def ser_i32(n: int) -> bytes:
    """Serialize a signed 32-bit little-endian integer."""
    if not -(1 << 31) <= n < (1 << 31):
        raise BitcoinError(f"value out of int32 range: {n}")
    return n.to_bytes(4, "little", signed=True)


def _ser_uint(n: int, width: int) -> bytes:
    if not 0 <= n < (1 << (8 * width)):
        raise BitcoinError(f"value out of uint{8 * width} range: {n}")
    return n.to_bytes(width, "little")


def ser_compact_size(n: int) -> bytes:
    """Serialize a CompactSize unsigned integer (canonical, shortest form)."""
    if n < 0 or n >= 1 << 64:
        raise BitcoinError(f"CompactSize out of range: {n}")
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def ser_string(data: bytes) -> bytes:
    """Serialize a byte string with a CompactSize length prefix."""
    return ser_compact_size(len(data)) + data


def ser_string_vector(items: Iterable[bytes]) -> bytes:
    """Serialize a vector of byte strings (e.g. a witness stack)."""
    items = tuple(items)
    return ser_compact_size(len(items)) + b"".join(ser_string(i) for i in items)


class ByteReader:
    """Cursor over an immutable byte string; every read failure is a DecodeError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Number of unread bytes."""
        return len(self._data) - self._pos

    def at_end(self) -> bool:
        """True once every byte has been consumed."""
        return self._pos == len(self._data)

    def peek(self, n: int) -> bytes:
        """Return up to the next ``n`` bytes without consuming them."""
        return self._data[self._pos : self._pos + n]

    def read(self, n: int) -> bytes:
        """Consume exactly ``n`` bytes."""
        if n < 0 or n > self.remaining:
            raise DecodeError(f"truncated: need {n} bytes, have {self.remaining}")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def read_u8(self) -> int:
        """Consume an unsigned 8-bit integer."""
        return self.read(1)[0]

    def read_u16(self) -> int:
        """Consume an unsigned 16-bit little-endian integer."""
        return int.from_bytes(self.read(2), "little")

    def read_u32(self) -> int:
        """Consume an unsigned 32-bit little-endian integer."""
        return int.from_bytes(self.read(4), "little")

    def read_i32(self) -> int:
        """Consume a signed 32-bit little-endian integer."""
        return int.from_bytes(self.read(4), "little", signed=True)

    def read_u64(self) -> int:
        """Consume an unsigned 64-bit little-endian integer."""
        return int.from_bytes(self.read(8), "little")

    def read_compact_size(self, max_value: int = MAX_SIZE) -> int:
        """Consume a canonical CompactSize no larger than ``max_value``."""
        first = self.read_u8()
        if first < 0xFD:
            n = first
        elif first == 0xFD:
            n = self.read_u16()
            if n < 0xFD:
                raise DecodeError("non-canonical CompactSize")
        elif first == 0xFE:
            n = self.read_u32()
            if n <= 0xFFFF:
                raise DecodeError("non-canonical CompactSize")
        else:
            n = self.read_u64()
            if n <= 0xFFFFFFFF:
                raise DecodeError("non-canonical CompactSize")
        if n > max_value:
            raise DecodeError(f"CompactSize too large: {n} > {max_value}")
        return n

    def read_count(self, min_item_size: int = 1) -> int:
        """Consume a CompactSize element count, bounded by the bytes left.

        Guards allocation: a count whose items could not possibly fit in the
        remaining input is rejected before any list is built.
        """
        n = self.read_compact_size()
        if n * max(min_item_size, 1) > self.remaining:
            raise DecodeError(f"count {n} exceeds remaining input")
        return n

    def read_bytes(self) -> bytes:
        """Consume a CompactSize-prefixed byte string."""
        return self.read(self.read_compact_size())

    def read_bytes_vector(self) -> tuple[bytes, ...]:
        """Consume a CompactSize-counted vector of byte strings."""
        return tuple(self.read_bytes() for _ in range(self.read_count(1)))

    def expect_end(self) -> None:
        """Raise DecodeError if unread bytes remain."""
        if not self.at_end():
            raise DecodeError(f"{self.remaining} trailing bytes")


_T = TypeVar("_T")


def decode_all(parse: Callable[[ByteReader], _T], data: bytes) -> _T:
    """Run ``parse`` over all of ``data``; trailing bytes or any validation failure is a DecodeError."""
    reader = ByteReader(data)
    try:
        obj = parse(reader)
    except DecodeError:
        raise
    except BitcoinError as exc:
        raise DecodeError(str(exc)) from exc
    reader.expect_end()
    return obj
