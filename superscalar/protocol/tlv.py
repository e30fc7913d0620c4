"""BOLT-1 "Type-Length-Value Format" streams, as lightningd hands an onion hop payload or an
`update_add_htlc` TLV stream to the `htlc_accepted` hook (hex), and as the hook may hand them back.
Pure: bytes in, bytes out."""

from __future__ import annotations

from typing import Optional

# BOLT-4 "Packet Structure", payload TLVs of an onion hop
AMT_TO_FORWARD = 2
OUTGOING_CLTV_VALUE = 4
SHORT_CHANNEL_ID = 6
PAYMENT_DATA = 8  # payment_secret (32 bytes) then total_msat (tu64)
# bLIP-25 "Forward Underpaying HTLCs": update_add_htlc TLV, u64 msat the forwarder deducted
EXTRA_FEE = 65537

U64_MAX = 2**64 - 1

Stream = list[tuple[int, bytes]]


class TlvError(ValueError):
    """A TLV stream that BOLT-1 does not allow."""


def bigsize(value: int) -> bytes:
    """BOLT-1 "BigSize": the minimal encoding of a u64."""
    if not 0 <= value <= U64_MAX:
        raise TlvError(f"bigsize {value} out of range")
    if value < 0xFD:
        return bytes([value])
    if value <= 0xFFFF:
        return b"\xfd" + value.to_bytes(2, "big")
    if value <= 0xFFFFFFFF:
        return b"\xfe" + value.to_bytes(4, "big")
    return b"\xff" + value.to_bytes(8, "big")


def read_bigsize(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position); rejects a non-minimal encoding."""
    if pos >= len(data):
        raise TlvError("truncated bigsize")
    first = data[pos]
    width = {0xFD: 2, 0xFE: 4, 0xFF: 8}.get(first, 0)
    if width == 0:
        return first, pos + 1
    if pos + 1 + width > len(data):
        raise TlvError("truncated bigsize")
    value = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
    if value < {2: 0xFD, 4: 0x10000, 8: 0x100000000}[width]:
        raise TlvError("non-minimal bigsize")
    return value, pos + 1 + width


def parse_stream(data: bytes) -> Stream:
    """Records in order; types must strictly increase (BOLT-1)."""
    records: Stream = []
    pos = 0
    while pos < len(data):
        kind, pos = read_bigsize(data, pos)
        length, pos = read_bigsize(data, pos)
        if pos + length > len(data):
            raise TlvError(f"record {kind}: truncated value")
        if records and kind <= records[-1][0]:
            raise TlvError(f"record {kind} after record {records[-1][0]}: types must increase")
        records.append((kind, data[pos:pos + length]))
        pos += length
    return records


def serialize_stream(records: Stream) -> bytes:
    return b"".join(bigsize(kind) + bigsize(len(value)) + value for kind, value in sorted(records))


def tu64(value: int) -> bytes:
    """BOLT-1 truncated u64: big-endian without leading zero bytes."""
    if not 0 <= value <= U64_MAX:
        raise TlvError(f"tu64 {value} out of range")
    return value.to_bytes(8, "big").lstrip(b"\x00")


def read_tu64(value: bytes) -> int:
    if len(value) > 8 or (value and value[0] == 0):
        raise TlvError("non-minimal or too long tu64")
    return int.from_bytes(value, "big")


def get(records: Stream, kind: int) -> Optional[bytes]:
    return next((v for k, v in records if k == kind), None)


def replace(records: Stream, kind: int, value: bytes) -> Stream:
    """The stream with record `kind` set to `value` (added if absent)."""
    return sorted([(k, v) for k, v in records if k != kind] + [(kind, value)])


def hop_payload(with_length: bytes) -> Stream:
    """An onion hop payload as lightningd's `htlc_accepted` hook shows it (`onion.payload`: a BigSize
    length, then the TLV stream)."""
    length, pos = read_bigsize(with_length, 0)
    if pos + length != len(with_length):
        raise TlvError("hop payload length does not match")
    return parse_stream(with_length[pos:])


def extra_fee(update_add_tlvs: bytes) -> int:
    """bLIP-25 `extra_fee` of an `update_add_htlc` TLV stream: 0 if absent; exactly 8 bytes if present."""
    value = get(parse_stream(update_add_tlvs), EXTRA_FEE)
    if value is None:
        return 0
    if len(value) != 8:
        raise TlvError("extra_fee must be 8 bytes")
    return int.from_bytes(value, "big")
