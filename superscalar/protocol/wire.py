"""Versioned TLV wire codec for SuperScalar signing-ceremony messages.

Every message travels as the payload of ONE odd custom peer message (CLN
``sendcustommsg``)::

    u16 SUPERSCALAR_MSG_TYPE || u8 WIRE_VERSION || u16 kind || tlv_stream

Each message is a frozen dataclass plus a field table mapping TLV type to
``Field(name, codec)``. Messages too large for one custom message are sent
as :class:`Fragment` messages (:func:`split_message` / :class:`Reassembler`).
Decoding untrusted bytes raises :class:`DecodeError` and nothing else.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

# BOLT-1 'Lightning Message Format': odd types >= 32768 are custom, "it's ok to be odd".
SUPERSCALAR_MSG_TYPE = 33001
WIRE_VERSION = 1
# Whole custommsg payload including the 2-byte type (BOLT-1 caps messages at 65535).
MAX_MESSAGE_SIZE = 65000
MAX_UTF8_LEN = 1000

T = TypeVar("T")


class WireError(ValueError):
    """Base class of all wire codec errors."""


class DecodeError(WireError):
    """Bytes received from a peer are malformed or violate the schema."""


class EncodeError(WireError):
    """A value cannot be encoded (out of range, too large, wrong shape)."""


class AbortCode(enum.IntEnum):
    PROTOCOL_VIOLATION = 1
    BAD_PROPOSAL = 2
    BAD_NONCE = 3
    BAD_PARTIAL_SIG = 4
    BAD_SIGNATURE = 5
    TIMEOUT = 6
    PEER_DISCONNECTED = 7
    REFUSED = 8
    INTERNAL = 9


# ---------------------------------------------------------------- primitives


class Reader:
    """Cursor over untrusted bytes; every short read raises DecodeError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def read(self, n: int) -> bytes:
        pos = self._pos
        end = pos + n
        if n < 0 or end > len(self._data):
            raise DecodeError(f"truncated: need {n} bytes, have {self.remaining}")
        self._pos = end
        return self._data[pos:end]

    def uint(self, width: int) -> int:
        return int.from_bytes(self.read(width), "big")

    def bigsize(self) -> int:
        # BOLT-1 Appendix A BigSize: prefix byte selects 1/3/5/9-byte encoding.
        first = self.uint(1)
        if first < 0xFD:
            return first
        width, minimum = {0xFD: (2, 0xFD), 0xFE: (4, 0x1_0000), 0xFF: (8, 0x1_0000_0000)}[first]
        value = self.uint(width)
        # BOLT-1 Appendix A BigSize: only the minimal encoding is canonical.
        if value < minimum:
            raise DecodeError("non-canonical bigsize")
        return value

    def finish(self) -> None:
        if self.remaining:  # a value must consume exactly its bytes
            raise DecodeError(f"{self.remaining} trailing bytes")


def _uint_bytes(value: int, width: int) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << (8 * width):
        raise EncodeError(f"{value!r} is not a u{8 * width}")
    return value.to_bytes(width, "big")


def encode_bigsize(value: int) -> bytes:
    """Minimal BigSize encoding (BOLT-1 Appendix A BigSize)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 64:
        raise EncodeError(f"{value!r} is not a bigsize")
    if value < 0xFD:
        return bytes([value])
    if value < 0x1_0000:
        return b"\xfd" + value.to_bytes(2, "big")
    if value < 0x1_0000_0000:
        return b"\xfe" + value.to_bytes(4, "big")
    return b"\xff" + value.to_bytes(8, "big")


def decode_bigsize(data: bytes, offset: int = 0) -> tuple[int, int]:
    """Decode one canonical BigSize at ``offset``; return (value, next offset)."""
    reader = Reader(data)
    reader.read(offset)
    value = reader.bigsize()
    return value, len(data) - reader.remaining


def encode_tlv_stream(records: Sequence[tuple[int, bytes]]) -> bytes:
    """Serialize (type, value) records; types must be strictly increasing."""
    parts: list[bytes] = []
    previous = -1
    for tlv_type, value in records:
        # BOLT-1 'Type-Length-Value Format': records are ordered by strictly increasing type.
        if tlv_type <= previous:
            raise EncodeError(f"TLV type {tlv_type} not strictly increasing")
        previous = tlv_type
        parts += (encode_bigsize(tlv_type), encode_bigsize(len(value)), value)
    return b"".join(parts)


def decode_tlv_stream(data: bytes, known_types: Collection[int]) -> dict[int, bytes]:
    """Strictly parse a TLV stream, returning the values of ``known_types``."""
    reader = Reader(data)
    data, end = reader._data, len(reader._data)
    result: dict[int, bytes] = {}
    previous = -1
    # BOLT-1 'Type-Length-Value Format': the stream ends when zero bytes remain before a type.
    while reader.remaining:
        pos = reader._pos
        if pos + 2 <= end and data[pos] < 0xFD and data[pos + 1] < 0xFD:
            # One-byte type and length (most records): the checks below, without the general reader.
            tlv_type, length = data[pos], data[pos + 1]
            if tlv_type <= previous:
                raise DecodeError(f"TLV type {tlv_type} not strictly increasing")
            previous = tlv_type
            if pos + 2 + length > end:
                raise DecodeError(f"TLV {tlv_type} length {length} overflows stream")
            reader._pos = pos + 2 + length
            if tlv_type in known_types:
                result[tlv_type] = data[pos + 2 : pos + 2 + length]
            elif tlv_type % 2 == 0:
                raise DecodeError(f"unknown even TLV type {tlv_type}")
            continue
        tlv_type = reader.bigsize()
        # BOLT-1 'Type-Length-Value Format': types not strictly increasing (incl. duplicates) fail.
        if tlv_type <= previous:
            raise DecodeError(f"TLV type {tlv_type} not strictly increasing")
        previous = tlv_type
        length = reader.bigsize()
        # BOLT-1 'Type-Length-Value Format': a length exceeding the remaining bytes fails.
        if length > reader.remaining:
            raise DecodeError(f"TLV {tlv_type} length {length} overflows stream")
        value = reader.read(length)
        if tlv_type in known_types:
            result[tlv_type] = value
        # BOLT-1 'Type-Length-Value Format': unknown even types fail, unknown odd are ignored.
        elif tlv_type % 2 == 0:
            raise DecodeError(f"unknown even TLV type {tlv_type}")
    return result


# ------------------------------------------------------------- field codecs


@dataclass(frozen=True, slots=True)
class Codec(Generic[T]):
    """How one field value is written to / read from bytes."""

    name: str
    encode: Callable[[T], bytes]
    read: Callable[[Reader], T]
    fixed_size: int | None = None  # None: variable-size item
    # Fast path for arrays of fixed-size items: validate and split a whole block of `count` items.
    read_block: Callable[[bytes, int], tuple[T, ...]] | None = None
    check_block: Callable[[bytes, int], None] | None = None  # read_block's checks, without splitting

    def decode(self, data: bytes) -> T:
        """Decode a whole TLV value; trailing bytes are an error."""
        reader = Reader(data)
        value = self.read(reader)
        reader.finish()
        return value


def _uint_codec(width: int) -> Codec[int]:
    return Codec(f"u{8 * width}", lambda v: _uint_bytes(v, width), lambda r: r.uint(width), width)


U8 = _uint_codec(1)
U16 = _uint_codec(2)
U32 = _uint_codec(4)
U64 = _uint_codec(8)


def _encode_bool(value: bool) -> bytes:
    if not isinstance(value, bool):
        raise EncodeError(f"{value!r} is not a bool")
    return b"\x01" if value else b"\x00"


def _read_bool(reader: Reader) -> bool:
    byte = reader.uint(1)
    if byte > 1:
        raise DecodeError(f"bool byte must be 0 or 1, got {byte}")
    return byte == 1


BOOL = Codec("bool", _encode_bool, _read_bool, 1)


def _as_bytes(value: bytes) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise EncodeError(f"{value!r} is not bytes")
    return bytes(value)


def _fixed_bytes(name: str, size: int, prefixes: bytes | None = None) -> Codec[bytes]:
    def check(value: bytes, error: type[WireError]) -> bytes:
        if len(value) != size:
            raise error(f"{name} must be {size} bytes, got {len(value)}")
        if prefixes is not None and value[0] not in prefixes:
            raise error(f"{name} has invalid prefix byte {value[0]:#04x}")
        return value

    def check_block(block: bytes, count: int) -> None:
        # The first byte of every item is block[0::size]: one set to check them all.
        if prefixes is not None and not set(block[0 : count * size : size]) <= set(prefixes):
            raise DecodeError(f"{name} has an invalid prefix byte")

    def read_block(block: bytes, count: int) -> tuple[bytes, ...]:
        check_block(block, count)
        return struct.unpack(f"{size}s" * count, block)  # split in C: a 1,025-key list in ~20 µs

    encode: Callable[[bytes], bytes] = lambda v: check(_as_bytes(v), EncodeError)
    return Codec(name, encode, lambda r: check(r.read(size), DecodeError), size, read_block, check_block)


BYTES32 = _fixed_bytes("bytes32", 32)
POINT33 = _fixed_bytes("point33", 33, prefixes=b"\x02\x03")
PUBNONCE66 = _fixed_bytes("pubnonce66", 66)
PSIG32 = _fixed_bytes("psig32", 32)
SIG64 = _fixed_bytes("sig64", 64)


def _length_prefixed(name: str, limit: int) -> Codec[bytes]:
    def encode(value: bytes) -> bytes:
        if len(_as_bytes(value)) > limit:
            raise EncodeError(f"{name} longer than {limit} bytes")
        return encode_bigsize(len(value)) + bytes(value)

    def read(reader: Reader) -> bytes:
        length = reader.bigsize()
        if length > limit:
            raise DecodeError(f"{name} length {length} exceeds {limit}")
        return reader.read(length)

    return Codec(name, encode, read)


_ITEM = _length_prefixed("array item", (1 << 64) - 1)  # bounded by the enclosing data


def _rest_codec(
    name: str, limit: int, to_bytes: Callable[[T], bytes], from_bytes: Callable[[bytes], T]
) -> Codec[T]:
    """A field filling its whole TLV value (the TLV length delimits it), <= limit bytes."""

    def encode(value: T) -> bytes:
        raw = to_bytes(value)
        if len(raw) > limit:
            raise EncodeError(f"{name} longer than {limit} bytes")
        return raw

    def read(reader: Reader) -> T:
        if reader.remaining > limit:
            raise DecodeError(f"{name} longer than {limit} bytes")
        return from_bytes(reader.read(reader.remaining))

    return Codec(name, encode, read)


def _utf8_encode(value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except (AttributeError, UnicodeEncodeError):
        raise EncodeError(f"{value!r} is not encodable as UTF-8") from None


def _utf8_decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError("invalid UTF-8") from None


VARBYTES = _rest_codec("varbytes", MAX_MESSAGE_SIZE, _as_bytes, bytes)
UTF8 = _rest_codec("utf8", MAX_UTF8_LEN, _utf8_encode, _utf8_decode)


def array(item: Codec[T]) -> Codec[tuple[T, ...]]:
    """bigsize count, then items (variable-size items are bigsize-length-prefixed)."""
    # The last tuple of fixed-size bytes encoded, with its encoding (one tuple, swapped whole): every
    # proposal of a round carries the same key list. A tuple of bytes cannot change.
    last: list[tuple[object, bytes]] = [(object(), b"")]

    def encode(values: tuple[T, ...]) -> bytes:
        if not isinstance(values, (tuple, list)):
            raise EncodeError(f"array({item.name}) needs a tuple")
        memo = last[0]
        if memo[0] is values:
            return memo[1]
        if (item.read_block is not None and item.fixed_size is not None
                and set(map(type, values)) <= {bytes} and set(map(len, values)) <= {item.fixed_size}):  # type: ignore[arg-type]
            block = b"".join(values)  # type: ignore[arg-type]  # checked above: all bytes
            if item.check_block is not None:
                try:
                    item.check_block(block, len(values))  # the same checks as decoding (prefixes)
                except DecodeError as e:
                    raise EncodeError(str(e)) from None
            encoded = encode_bigsize(len(values)) + block
            if isinstance(values, tuple):
                last[0] = (values, encoded)
            return encoded
        parts = [encode_bigsize(len(values))]
        for value in values:
            raw = item.encode(value)
            parts.append(raw if item.fixed_size is not None else _ITEM.encode(raw))
        return b"".join(parts)

    def read(reader: Reader) -> tuple[T, ...]:
        count = reader.bigsize()
        # Every item takes >= 1 byte: refuse absurd counts before looping.
        if count * (item.fixed_size or 1) > reader.remaining:
            raise DecodeError(f"array count {count} exceeds available bytes")
        if item.fixed_size is not None:
            if item.read_block is not None:
                return item.read_block(reader.read(count * item.fixed_size), count)
            return tuple(item.read(reader) for _ in range(count))
        return tuple(item.decode(_ITEM.read(reader)) for _ in range(count))

    return Codec(f"array({item.name})", encode, read)


# ------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class Field:
    """One row of a message's field table."""

    name: str
    codec: Codec[Any]
    required: bool = True


def _table(*rows: Field) -> Mapping[int, Field]:
    """factory_id/session_id at TLV types 0 and 2, then ``rows`` at 4, 6, 8, ..."""
    head = (Field("factory_id", BYTES32), Field("session_id", BYTES32))
    return {2 * i: row for i, row in enumerate(head + rows)}


@dataclass(frozen=True, slots=True)
class Message:
    """Base of all ceremony messages. Arrays are tuples."""

    KIND: ClassVar[int] = 0
    FIELDS: ClassVar[Mapping[int, Field]] = _table()
    factory_id: bytes
    session_id: bytes


@dataclass(frozen=True, slots=True)
class Propose(Message):
    KIND: ClassVar[int] = 1
    FIELDS: ClassVar[Mapping[int, Field]] = {
        **_table(
            Field("client_index", U32),
            Field("params", VARBYTES),
            Field("funding_txid", BYTES32),
            Field("funding_vout", U32),
            Field("funding_value", U64),
            Field("pubkeys", array(POINT33)),
            Field("state_indices", array(U8)),
            Field("path_outputs", array(VARBYTES)),
            Field("distribution", VARBYTES),
            Field("kind", U8),
        ),
        # Odd (optional): a sale's earlier signed sales of the same leaf, oldest first, for a client that
        # missed one (its round ended before it got the final signature); each is self-authenticating.
        23: Field("prior_sales", array(VARBYTES), required=False),
        # Odd (optional): what the buyer of a sale pays for it out of the payments the LSP forwards over its
        # new channel (inbound on demand: each such HTLC arrives short by its bLIP-25 `extra_fee`); absent: 0.
        25: Field("price_msat", U64, required=False),
        # Odd (optional): a plain close is signed with this many fee variants (`factory.graph.fee_variants`,
        # which each client rebuilds and checks); absent: none (a rollover's close, whose txid funds the
        # next factory, can have none).
        27: Field("fee_variants", U8, required=False),
    }
    client_index: int
    params: bytes
    funding_txid: bytes
    funding_vout: int
    funding_value: int
    pubkeys: tuple[bytes, ...]
    state_indices: tuple[int, ...]
    path_outputs: tuple[bytes, ...]  # per layer, the state tx's outputs as the distribution below
    distribution: bytes  # the distribution tx's outputs, consensus-serialized (count, then outputs)
    kind: int  # 0 construction, 1 state advance, 2 liquidity sale, 3 cooperative close
    prior_sales: tuple[bytes, ...] | None = None  # signed transactions (SALE only)
    price_msat: int | None = None  # SALE only: the buyer's price, deducted from forwards over its channel
    fee_variants: int | None = None  # CLOSE only: how many fee variants are signed with the close


@dataclass(frozen=True, slots=True)
class Nonces(Message):
    KIND: ClassVar[int] = 2
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("pubnonces", array(PUBNONCE66)))
    pubnonces: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class AggNonces(Message):
    KIND: ClassVar[int] = 3
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("aggnonces", array(PUBNONCE66)))
    aggnonces: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class PartialSigs(Message):
    KIND: ClassVar[int] = 4
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("psigs", array(PSIG32)))
    psigs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Signatures(Message):
    KIND: ClassVar[int] = 5
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("sigs", array(SIG64)))
    sigs: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Done(Message):
    KIND: ClassVar[int] = 6
    FIELDS: ClassVar[Mapping[int, Field]] = _table()


@dataclass(frozen=True, slots=True)
class Abort(Message):
    KIND: ClassVar[int] = 7
    FIELDS: ClassVar[Mapping[int, Field]] = _table(
        Field("code", U16), Field("reason", UTF8), Field("culprit", U32, required=False)
    )
    code: int
    reason: str
    culprit: int | None = None


@dataclass(frozen=True, slots=True)
class Fragment(Message):
    """One piece of an oversized message body; ids are those of the inner message."""

    KIND: ClassVar[int] = 8
    FIELDS: ClassVar[Mapping[int, Field]] = _table(
        Field("message_id", BYTES32), Field("index", U16), Field("count", U16), Field("chunk", VARBYTES)
    )
    message_id: bytes
    index: int
    count: int
    chunk: bytes


@dataclass(frozen=True, slots=True)
class Invite(Message):
    """LSP → client: join factory `factory_id` with a channel of these amounts (session_id: the
    invitation's id). `params` are the factory parameters, serialized as in Propose."""

    KIND: ClassVar[int] = 9
    # Odd types for the rollover fields (BOLT-1 "it's ok to be odd"): an older client ignores them.
    FIELDS: ClassVar[Mapping[int, Field]] = {
        **_table(Field("params", VARBYTES), Field("balance_sat", U64), Field("inbound_sat", U64)),
        11: Field("rollover_of", BYTES32, required=False),
        13: Field("push_msat", U64, required=False),
    }
    params: bytes
    balance_sat: int
    inbound_sat: int
    # A rollover of factory `rollover_of`: the channel is pushed exactly `push_msat`, the client's
    # balance in its frozen channel of that factory (balance_sat is its floor in sat).
    rollover_of: bytes | None = None
    push_msat: int | None = None


@dataclass(frozen=True, slots=True)
class Accept(Message):
    """client → LSP: the client joins with this factory key and wants the distribution paid here."""

    KIND: ClassVar[int] = 10
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("pubkey", POINT33), Field("payout_script", VARBYTES))
    pubkey: bytes
    payout_script: bytes


@dataclass(frozen=True, slots=True)
class Leave(Message):
    """client → LSP: at the next cooperative close or rollover of `factory_id`, pay me on chain instead
    of carrying me into the next factory (session_id: a fresh id of the request)."""

    KIND: ClassVar[int] = 11
    FIELDS: ClassVar[Mapping[int, Field]] = _table()


LOCATOR16 = _fixed_bytes("locator16", 16)


@dataclass(frozen=True, slots=True)
class TowerStore(Message):
    """client → helper: keep this sealed penalty transaction (crypto/tower_blob.py) until a commitment
    whose txid begins with `locator` confirms. `factory_id` carries the channel id it guards (for the
    helper's bounds), `session_id` the request's id, echoed in the answer."""

    KIND: ClassVar[int] = 12
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("locator", LOCATOR16), Field("blob", VARBYTES))
    locator: bytes
    blob: bytes


@dataclass(frozen=True, slots=True)
class TowerAnswer(Message):
    """helper → client: the blob of request `session_id` was kept (`accepted` 1, with how many of this
    client's blobs the helper now holds) or refused (0, with the reason)."""

    KIND: ClassVar[int] = 13
    FIELDS: ClassVar[Mapping[int, Field]] = {
        **_table(Field("accepted", U8), Field("stored", U32)),
        9: Field("reason", UTF8, required=False),
    }
    accepted: int
    stored: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class HelpPackage(Message):
    """client → helper: factory `factory_id`'s signed distribution and its fee variants (cheapest first),
    each spending the funding output (`prevout_value`, `prevout_script`). If that output is still
    unspent once their locktime passes, publish them, the next variant every `step_blocks` blocks,
    until `until_height` (the factory's first timeout). Answered by a TowerAnswer whose session_id is
    the factory id."""

    KIND: ClassVar[int] = 14
    FIELDS: ClassVar[Mapping[int, Field]] = _table(
        Field("txs", array(VARBYTES)), Field("prevout_value", U64), Field("prevout_script", VARBYTES),
        Field("step_blocks", U32), Field("until_height", U32))
    txs: tuple[bytes, ...]
    prevout_value: int
    prevout_script: bytes
    step_blocks: int
    until_height: int


@dataclass(frozen=True, slots=True)
class HelpExit(Message):
    """client → helper: factory `factory_id`'s signed exit path for this client, parents first (`names`,
    `txs`, and the output each spends: `prevout_values`, `prevout_scripts`), with what the exit needs
    (chain/routing.py ExitPlan). Published, and bumped by CPFP on each transaction's P2A anchor with the
    helper's coins, once the funding output is spent by the path's first transaction (somebody started
    the tree), or at once with `act_now` 1 (the client's LSP stopped answering). session_id: a hash of
    the path, echoed by the TowerAnswer."""

    KIND: ClassVar[int] = 15
    FIELDS: ClassVar[Mapping[int, Field]] = _table(
        Field("names", array(VARBYTES)), Field("txs", array(VARBYTES)), Field("prevout_values", array(U64)),
        Field("prevout_scripts", array(VARBYTES)), Field("bump_after", U32), Field("timeout_height", U32),
        Field("dw_step", U32), Field("lstock_csv", U32), Field("act_now", U8))
    names: tuple[bytes, ...]
    txs: tuple[bytes, ...]
    prevout_values: tuple[int, ...]
    prevout_scripts: tuple[bytes, ...]
    bump_after: int
    timeout_height: int
    dw_step: int  # 0: none
    lstock_csv: int  # 0: none
    act_now: int


@dataclass(frozen=True, slots=True)
class BackupStore(Message):
    """client → helper: keep this encrypted backup of factory `factory_id` (crypto/backup_blob.py) in
    place of any earlier one; session_id: the blob's SHA-256, echoed by the TowerAnswer."""

    KIND: ClassVar[int] = 16
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("blob", VARBYTES))
    blob: bytes


@dataclass(frozen=True, slots=True)
class BackupFetch(Message):
    """client → helper: send back my backup of `factory_id` (all zeros: every factory of mine)."""

    KIND: ClassVar[int] = 17
    FIELDS: ClassVar[Mapping[int, Field]] = _table()


@dataclass(frozen=True, slots=True)
class BackupBlob(Message):
    """helper → client: backup `index` of `count` answering fetch `session_id` (count 0: none kept)."""

    KIND: ClassVar[int] = 18
    FIELDS: ClassVar[Mapping[int, Field]] = _table(Field("index", U16), Field("count", U16), Field("blob", VARBYTES))
    index: int
    count: int
    blob: bytes


MESSAGE_TYPES: Mapping[int, type[Message]] = {
    cls.KIND: cls
    for cls in (Propose, Nonces, AggNonces, PartialSigs, Signatures, Done, Abort, Fragment, Invite, Accept, Leave,
                TowerStore, TowerAnswer, HelpPackage, HelpExit, BackupStore, BackupFetch, BackupBlob)
}


# ------------------------------------------------------------------ envelope


def encode_body(msg: Message) -> bytes:
    """u16 kind || TLV stream (the message without the custommsg envelope)."""
    if MESSAGE_TYPES.get(msg.KIND) is not type(msg):
        raise EncodeError(f"unregistered message class {type(msg).__name__}")
    records = []
    for tlv_type, field in sorted(msg.FIELDS.items()):
        value = getattr(msg, field.name)
        if value is None:
            if field.required:
                raise EncodeError(f"{type(msg).__name__}.{field.name} is required")
            continue
        records.append((tlv_type, field.codec.encode(value)))
    return _uint_bytes(msg.KIND, 2) + encode_tlv_stream(records)


def decode_body(data: bytes) -> Message:
    """Inverse of :func:`encode_body`; no size limit is applied here."""
    reader = Reader(data)
    kind = reader.uint(2)
    cls = MESSAGE_TYPES.get(kind)
    if cls is None:
        raise DecodeError(f"unknown message kind {kind}")
    values = decode_tlv_stream(reader.read(reader.remaining), cls.FIELDS.keys())
    kwargs: dict[str, Any] = {}
    for tlv_type, field in cls.FIELDS.items():
        if tlv_type in values:
            kwargs[field.name] = field.codec.decode(values[tlv_type])
        elif field.required:
            raise DecodeError(f"{cls.__name__} is missing required field {field.name}")
    return cls(**kwargs)


def _envelope(body: bytes) -> bytes:
    return _uint_bytes(SUPERSCALAR_MSG_TYPE, 2) + _uint_bytes(WIRE_VERSION, 1) + body


def encode_message(msg: Message) -> bytes:
    """Full custommsg payload: u16 type || u8 version || u16 kind || TLV stream."""
    payload = _envelope(encode_body(msg))
    if len(payload) > MAX_MESSAGE_SIZE:
        raise EncodeError(f"message is {len(payload)} bytes > {MAX_MESSAGE_SIZE}; use split_message")
    return payload


def decode_message(data: bytes) -> Message:
    """Decode a full custommsg payload; any malformation raises DecodeError."""
    if len(data) > MAX_MESSAGE_SIZE:
        raise DecodeError(f"message is {len(data)} bytes > {MAX_MESSAGE_SIZE}")
    reader = Reader(data)
    msg_type = reader.uint(2)
    if msg_type != SUPERSCALAR_MSG_TYPE:
        raise DecodeError(f"not a superscalar message (type {msg_type})")
    version = reader.uint(1)
    if version != WIRE_VERSION:
        raise DecodeError(f"unsupported wire version {version}")
    return decode_body(reader.read(reader.remaining))


# ----------------------------------------------------------------- splitting


def split_message(msg: Message, max_size: int = MAX_MESSAGE_SIZE) -> list[bytes]:
    """Encode ``msg`` as one payload, or as Fragment payloads each <= max_size."""
    if not 0 < max_size <= MAX_MESSAGE_SIZE:
        raise EncodeError(f"max_size must be in 1..{MAX_MESSAGE_SIZE}")
    body = encode_body(msg)
    whole = _envelope(body)
    if len(whole) <= max_size:
        return [whole]
    if isinstance(msg, Fragment):
        raise EncodeError("a Fragment cannot itself be fragmented")
    message_id = hashlib.sha256(body).digest()
    probe = Fragment(msg.factory_id, msg.session_id, message_id, 0, 1, b"")
    overhead = len(_envelope(encode_body(probe)))  # includes chunk's TLV type and 1-byte length
    chunk_size = max_size - overhead
    while chunk_size > 0 and len(encode_bigsize(chunk_size)) - 1 + overhead + chunk_size > max_size:
        chunk_size -= 1
    if chunk_size <= 0:
        raise EncodeError(f"max_size {max_size} too small for fragments")
    count = -(-len(body) // chunk_size)
    if count > 0xFFFF:
        raise EncodeError(f"message needs {count} fragments (> 65535)")
    pieces = (body[i * chunk_size : (i + 1) * chunk_size] for i in range(count))
    ids = (msg.factory_id, msg.session_id, message_id)
    return [_envelope(encode_body(Fragment(*ids, i, count, c))) for i, c in enumerate(pieces)]


class Reassembler:
    """Collects Fragment messages into whole messages with bounded memory.

    Pure state machine: ``add`` returns the decoded message once its last
    fragment arrives, None while incomplete, and raises DecodeError for any
    invalid or inconsistent fragment (a partial found corrupt is dropped).
    """

    __slots__ = ("max_total", "max_pending", "_partials", "_buffered")

    def __init__(self, max_total: int = 4 * 1024 * 1024, max_pending: int = 16) -> None:
        self.max_total = max_total
        self.max_pending = max_pending
        # (factory_id, session_id, message_id) -> (count, {index: chunk})
        self._partials: dict[tuple[bytes, bytes, bytes], tuple[int, dict[int, bytes]]] = {}
        self._buffered = 0

    @property
    def pending(self) -> int:
        return len(self._partials)

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def clear(self) -> None:
        self._partials.clear()
        self._buffered = 0

    def _drop(self, key: tuple[bytes, bytes, bytes]) -> None:
        _, chunks = self._partials.pop(key)
        self._buffered -= sum(len(c) for c in chunks.values())

    def add(self, fragment: Fragment) -> Message | None:
        if fragment.count == 0 or fragment.index >= fragment.count:
            raise DecodeError(f"fragment index {fragment.index} not below count {fragment.count}")
        if not fragment.chunk:
            raise DecodeError("empty fragment chunk")
        key = (fragment.factory_id, fragment.session_id, fragment.message_id)
        if key not in self._partials:
            if len(self._partials) >= self.max_pending:
                raise DecodeError(f"more than {self.max_pending} partial messages")
            self._partials[key] = (fragment.count, {})
        count, chunks = self._partials[key]
        if fragment.count != count:
            self._drop(key)
            raise DecodeError(f"fragment count {fragment.count} != {count}")
        existing = chunks.get(fragment.index)
        if existing is not None:
            if existing != fragment.chunk:
                self._drop(key)
                raise DecodeError(f"conflicting duplicate of fragment {fragment.index}")
            return None
        if self._buffered + len(fragment.chunk) > self.max_total:
            if not chunks:
                del self._partials[key]
            raise DecodeError(f"reassembly would exceed {self.max_total} bytes")
        chunks[fragment.index] = fragment.chunk
        self._buffered += len(fragment.chunk)
        if len(chunks) < count:
            return None
        self._drop(key)
        body = b"".join(chunks[i] for i in range(count))
        if hashlib.sha256(body).digest() != fragment.message_id:
            raise DecodeError("reassembled body does not match message_id")
        msg = decode_body(body)
        if isinstance(msg, Fragment):
            raise DecodeError("nested fragment")
        if (msg.factory_id, msg.session_id) != (fragment.factory_id, fragment.session_id):
            raise DecodeError("fragment ids differ from inner message ids")
        return msg

