"""Tests for the SuperScalar custom-message wire codec."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superscalar.protocol import wire
from superscalar.protocol.wire import (
    MAX_MESSAGE_SIZE,
    SUPERSCALAR_MSG_TYPE,
    Abort,
    AbortCode,
    AggNonces,
    Codec,
    DecodeError,
    Done,
    EncodeError,
    Fragment,
    Message,
    Nonces,
    PartialSigs,
    Propose,
    Reassembler,
    Signatures,
    decode_bigsize,
    decode_message,
    decode_tlv_stream,
    encode_bigsize,
    encode_message,
    encode_tlv_stream,
    split_message,
)

FID = bytes(range(32))
SID = bytes(range(32, 64))
HEADER = bytes.fromhex("80e9") + b"\x01"  # 33001 big-endian, version 1

# ------------------------------------------------------------------ BigSize

# BOLT-1 Appendix A "BigSize Decoding Tests" (valid cases double as encoding tests).
BIGSIZE_VALID = [
    ("zero", 0, "00"),
    ("one byte high", 252, "fc"),
    ("two byte low", 253, "fd00fd"),
    ("two byte high", 65535, "fdffff"),
    ("four byte low", 65536, "fe00010000"),
    ("four byte high", 4294967295, "feffffffff"),
    ("eight byte low", 4294967296, "ff0000000100000000"),
    ("eight byte high", 18446744073709551615, "ffffffffffffffffff"),
]
BIGSIZE_INVALID = [
    ("two byte not canonical", "fd00fc"),
    ("four byte not canonical", "fe0000ffff"),
    ("eight byte not canonical", "ff00000000ffffffff"),
    ("two byte short read", "fd00"),
    ("four byte short read", "feffff"),
    ("eight byte short read", "ffffffffff"),
    ("one byte no read", ""),
    ("two byte no read", "fd"),
    ("four byte no read", "fe"),
    ("eight byte no read", "ff"),
]


@pytest.mark.parametrize(("name", "value", "hexbytes"), BIGSIZE_VALID)
def test_bigsize_vectors(name: str, value: int, hexbytes: str) -> None:
    raw = bytes.fromhex(hexbytes)
    assert decode_bigsize(raw) == (value, len(raw))
    assert encode_bigsize(value) == raw


@pytest.mark.parametrize(("name", "hexbytes"), BIGSIZE_INVALID)
def test_bigsize_invalid_vectors(name: str, hexbytes: str) -> None:
    with pytest.raises(DecodeError):
        decode_bigsize(bytes.fromhex(hexbytes))


@pytest.mark.parametrize("value", [-1, 1 << 64, True])
def test_bigsize_encode_out_of_range(value: int) -> None:
    with pytest.raises(EncodeError):
        encode_bigsize(value)


@given(st.integers(0, (1 << 64) - 1))
def test_bigsize_roundtrip(value: int) -> None:
    raw = encode_bigsize(value)
    assert decode_bigsize(b"junk" + raw + b"tail", 4) == (value, 4 + len(raw))


# ---------------------------------------------------------------------- TLV


def test_tlv_roundtrip_and_unknown_odd_ignored() -> None:
    stream = encode_tlv_stream([(0, b"a"), (1, b"odd"), (254, b""), (1000, b"x" * 300)])
    assert stream[:3] == b"\x00\x01a"
    assert decode_tlv_stream(stream, {0, 254, 1000}) == {0: b"a", 254: b"", 1000: b"x" * 300}
    assert decode_tlv_stream(b"", {0}) == {}


@pytest.mark.parametrize(
    "records",
    [[(2, b""), (0, b"")], [(4, b"a"), (4, b"a")]],
    ids=["decreasing", "duplicate"],
)
def test_tlv_encode_requires_increasing(records: list[tuple[int, bytes]]) -> None:
    with pytest.raises(EncodeError):
        encode_tlv_stream(records)


@pytest.mark.parametrize(
    "hexstream",
    [
        "0200" "0000",  # types decreasing
        "0000" "0000",  # duplicate type
        "0400",  # unknown even type
        "0003aabb",  # length overflows stream
        "fd000100",  # non-minimal type encoding
        "00fd000100",  # non-minimal length encoding
        "00",  # truncated: missing length
    ],
)
def test_tlv_decode_strict(hexstream: str) -> None:
    with pytest.raises(DecodeError):
        decode_tlv_stream(bytes.fromhex(hexstream), {0, 2})


def _done_payload(tail: bytes) -> bytes:
    return encode_message(Done(FID, SID)) + tail


def test_message_unknown_odd_tlv_ignored_unknown_even_rejected() -> None:
    assert decode_message(_done_payload(b"\x05\x02hi")) == Done(FID, SID)
    assert decode_message(_done_payload(b"\xfd\x75\x31\x00")) == Done(FID, SID)  # type 30001
    with pytest.raises(DecodeError, match="unknown even"):
        decode_message(_done_payload(b"\x04\x00"))
    # An odd record between the two required ones is fine.
    body = HEADER + b"\x00\x06" + b"\x00\x20" + FID + b"\x01\x00" + b"\x02\x20" + SID
    assert decode_message(body) == Done(FID, SID)


def test_message_trailing_junk_and_ordering_rejected() -> None:
    with pytest.raises(DecodeError):
        decode_message(_done_payload(b"\x00"))
    with pytest.raises(DecodeError):
        decode_message(_done_payload(b"\x00\x20" + FID))  # repeated type 0
    swapped = HEADER + b"\x00\x06" + b"\x02\x20" + SID + b"\x00\x20" + FID
    with pytest.raises(DecodeError, match="increasing"):
        decode_message(swapped)


# -------------------------------------------------------------- field rules


def test_missing_required_field() -> None:
    payload = encode_message(Nonces(FID, SID, ()))
    without = payload[: -len(b"\x04\x01\x00")]
    with pytest.raises(DecodeError, match="missing required field pubnonces"):
        decode_message(without)


def test_optional_field_absent_is_none() -> None:
    msg = Abort(FID, SID, AbortCode.TIMEOUT, "peer too slow")
    decoded = decode_message(encode_message(msg))
    assert isinstance(decoded, Abort) and decoded.culprit is None and decoded.code == 6
    blamed = dataclasses.replace(msg, culprit=3)
    assert decode_message(encode_message(blamed)) == blamed


@pytest.mark.parametrize(
    ("codec", "raw"),
    [
        (wire.BOOL, b"\x02"),
        (wire.BOOL, b""),
        (wire.BOOL, b"\x00\x00"),
        (wire.POINT33, b"\x04" + bytes(32)),
        (wire.POINT33, b"\x02" + bytes(31)),
        (wire.U16, b"\x01"),
        (wire.U32, b"\x00" * 5),
        (wire.UTF8, b"\xff"),
        (wire.UTF8, b"a" * 1001),
        (wire.VARBYTES, bytes(MAX_MESSAGE_SIZE + 1)),
        (wire.array(wire.PSIG32), b"\x02" + bytes(63)),
        (wire.array(wire.U8), b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
    ],
)
def test_codec_decode_rejects(codec: Codec[Any], raw: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(raw)


@pytest.mark.parametrize(
    ("codec", "value"),
    [
        (wire.BOOL, 1),
        (wire.U8, 256),
        (wire.U64, -1),
        (wire.U16, True),
        (wire.BYTES32, bytes(31)),
        (wire.POINT33, b"\x05" + bytes(32)),
        (wire.SIG64, "not bytes"),
        (wire.UTF8, "é" * 501),
        (wire.UTF8, "\ud800"),
        (wire.array(wire.U8), (1, 2, 300)),
    ],
)
def test_codec_encode_rejects(codec: Codec[Any], value: Any) -> None:
    with pytest.raises(EncodeError):
        codec.encode(value)


def test_fixed_size_array_reuses_the_last_tuple_encoding_only() -> None:
    codec = wire.array(wire.POINT33)
    keys = tuple(bytes([2 + i % 2]) + bytes([i]) * 32 for i in range(40))
    once = codec.encode(keys)
    assert codec.encode(keys) is once and codec.decode(once) == keys
    assert codec.encode(list(keys)) == once  # a list is encoded afresh
    assert codec.encode(()) == b"\x00" and codec.decode(b"\x00") == ()
    other = keys[:39] + (b"\x03" + bytes(32),)
    assert codec.decode(codec.encode(other)) == other
    with pytest.raises(EncodeError):
        codec.encode(keys[:39] + (b"\x05" + bytes(32),))  # checked every time it is not the memo
    assert codec.encode(keys) == once


def test_bool_codec_roundtrip() -> None:
    assert [wire.BOOL.decode(wire.BOOL.encode(b)) for b in (False, True)] == [False, True]


# ------------------------------------------------------------- envelope


def test_envelope_layout_and_constants() -> None:
    assert SUPERSCALAR_MSG_TYPE == 33001 and SUPERSCALAR_MSG_TYPE % 2 == 1
    assert wire.WIRE_VERSION == 1 and MAX_MESSAGE_SIZE == 65000
    payload = encode_message(Done(FID, SID))
    assert payload == HEADER + b"\x00\x06" + b"\x00\x20" + FID + b"\x02\x20" + SID
    assert [int(c) for c in AbortCode] == list(range(1, 10))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: b"\x80\xeb" + p[2:],  # other custom message type
        lambda p: p[:2] + b"\x02" + p[3:],  # unsupported version
        lambda p: p[:3] + b"\x00\x09" + p[5:],  # unknown kind
        lambda p: p[:3] + b"\x00\x00" + p[5:],  # kind 0 is not a message
        lambda p: p[:4],  # truncated envelope
        lambda p: p + bytes(MAX_MESSAGE_SIZE),  # too large
    ],
)
def test_envelope_rejects(mutate: Any) -> None:
    with pytest.raises(DecodeError):
        decode_message(mutate(encode_message(Done(FID, SID))))


def test_nonces_size() -> None:
    msg = Nonces(FID, SID, tuple(bytes([i]) * 66 for i in range(10)))
    envelope = 2 + 1 + 2  # msg type + version + kind
    id_records = 2 * (1 + 1 + 32)  # factory_id, session_id: type + length + 32 bytes
    array_value = 1 + 10 * 66  # bigsize count + 10 nonces = 661 bytes
    nonce_record = 1 + 3 + array_value  # type 4, length 661 needs a 3-byte bigsize
    assert len(encode_message(msg)) == envelope + id_records + nonce_record == 738


def test_encode_message_too_large() -> None:
    msg = Signatures(FID, SID, (bytes(64),) * 1100)
    with pytest.raises(EncodeError, match="split_message"):
        encode_message(msg)


def test_field_tables_match_dataclasses() -> None:
    assert sorted(wire.MESSAGE_TYPES) == list(range(1, 19))
    for kind, cls in wire.MESSAGE_TYPES.items():
        assert cls.KIND == kind
        table = sorted(cls.FIELDS.items())
        even = [t for t, _ in table if t % 2 == 0]
        assert even == list(range(0, 2 * len(even), 2))
        # odd types are later, optional extensions an older peer ignores (Invite's rollover fields)
        assert all(not f.required and t > even[-1] for t, f in table if t % 2)
        assert [f.name for _, f in table] == [f.name for f in dataclasses.fields(cls)]


# ------------------------------------------------------- hypothesis strategies


def _bytes(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=n, max_size=n)


def _cycle(xs: list[Any], n: int) -> tuple[Any, ...]:
    return tuple(xs[i % len(xs)] for i in range(n))


def _array(items: st.SearchStrategy[Any], large: int) -> st.SearchStrategy[tuple[Any, ...]]:
    """Mostly short arrays (often empty); sometimes >= ``large`` items built by cycling a few
    random ones (cheap in Hypothesis entropy, still exercising multi-byte counts)."""
    small = st.lists(items, max_size=4).map(tuple)
    big = st.builds(_cycle, st.lists(items, min_size=1, max_size=3), st.integers(large, large + 40))
    return st.one_of(small, small, big)


def strategy_for(codec: Codec[Any]) -> st.SearchStrategy[Any]:
    """Random valid values for a field codec, dispatched on the codec's name."""
    if codec.name == "array(varbytes)":  # output vectors: a few, some long
        return _array(st.binary(max_size=64) | st.binary(min_size=300, max_size=3000), 6)
    if codec.name.startswith("array("):
        return _array(strategy_for(_BY_NAME[codec.name[len("array(") : -1]]), 253)
    simple: dict[str, st.SearchStrategy[Any]] = {
        "u8": st.integers(0, 0xFF),
        "u16": st.integers(0, 0xFFFF),
        "u32": st.integers(0, 0xFFFF_FFFF),
        "u64": st.integers(0, (1 << 64) - 1),
        "bool": st.booleans(),
        "bytes32": _bytes(32),
        "locator16": _bytes(16),
        "psig32": _bytes(32),
        "sig64": _bytes(64),
        "pubnonce66": _bytes(66),
        "point33": st.builds(lambda p, x: bytes([p]) + x, st.sampled_from([2, 3]), _bytes(32)),
        "varbytes": st.binary(max_size=64) | st.builds(_cycle, st.lists(_bytes(1), min_size=1), st.integers(300, 9000)).map(b"".join),
        "utf8": st.text(max_size=200).filter(lambda s: len(s.encode()) <= 1000),
    }
    return simple[codec.name]


_BY_NAME = {c.name: c for c in (wire.U8, wire.U64, wire.POINT33, wire.PUBNONCE66, wire.PSIG32, wire.SIG64)}


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    kwargs = {}
    for field in cls.FIELDS.values():
        values = strategy_for(field.codec)
        kwargs[field.name] = values if field.required else st.none() | values
    return st.builds(cls, **kwargs)


ANY_MESSAGE = st.one_of([message_strategy(c) for c in wire.MESSAGE_TYPES.values()])


def _deliver(payloads: list[bytes], order: list[int] | None = None) -> Message:
    """Decode payloads; a single payload is the message, else reassemble fragments."""
    if len(payloads) == 1:
        return decode_message(payloads[0])
    reassembler = Reassembler()
    result: Message | None = None
    for i in order if order is not None else range(len(payloads)):
        out = reassembler.add(_as_fragment(payloads[i]))
        assert out is None or result is None
        result = out or result
    assert result is not None and reassembler.pending == 0 and reassembler.buffered_bytes == 0
    return result


@pytest.mark.parametrize("cls", list(wire.MESSAGE_TYPES.values()), ids=lambda c: c.__name__)
def test_roundtrip_every_kind(cls: type[Message]) -> None:
    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(message_strategy(cls))
    def check(msg: Message) -> None:
        payloads = split_message(msg)
        assert all(len(p) <= MAX_MESSAGE_SIZE for p in payloads)
        assert _deliver(payloads) == msg
        if len(payloads) == 1:
            assert encode_message(msg) == payloads[0]
            assert wire.decode_body(wire.encode_body(msg)) == msg

    check()


# --------------------------------------------------------- split/reassemble


def _big_propose() -> Propose:
    pubkeys = tuple(bytes([2 + i % 2]) + hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(1025))
    outputs = b"".join((1000 + i).to_bytes(8, "little") + b"\x96\x51\x20" + bytes([i % 256]) * 148 for i in range(1025))
    return Propose(
        FID, SID, client_index=7, params=b"p" * 500, funding_txid=bytes(32), funding_vout=1,
        funding_value=10**8, pubkeys=pubkeys, state_indices=(3, 1, 0),
        path_outputs=(b"\xfd\x2c\x01" + outputs[: 300 * 159], b"\xfd\x2c\x01" + outputs[300 * 159 : 600 * 159],
                      b"\xfd\x2c\x01" + outputs[600 * 159 : 900 * 159], b"\x00"),
        distribution=b"\x07" * 60_000, kind=0,
    )  # fmt: skip


def test_split_large_propose_out_of_order_with_duplicates() -> None:
    msg = _big_propose()
    assert len(wire.encode_body(msg)) > 190_000
    payloads = split_message(msg)
    assert len(payloads) >= 4 and all(len(p) <= MAX_MESSAGE_SIZE for p in payloads)
    assert max(len(p) for p in payloads) == MAX_MESSAGE_SIZE  # chunks are filled exactly
    order = [3, 1, 1, 0, 3, 2]  # out of order, with exact duplicates
    assert _deliver(payloads, order) == msg


def test_split_small_max_size() -> None:
    msg = Signatures(FID, SID, tuple(bytes([i]) * 64 for i in range(40)))
    payloads = split_message(msg, max_size=300)
    assert len(payloads) > 10 and all(len(p) <= 300 for p in payloads)
    assert _deliver(payloads, list(reversed(range(len(payloads))))) == msg
    fragment_overhead = 5 + 3 * 34 + 2 * 4 + 2  # envelope, 3 x bytes32, index, count, chunk type+len
    assert len(split_message(msg, max_size=fragment_overhead + 1)) == len(wire.encode_body(msg))
    with pytest.raises(EncodeError, match="too small"):
        split_message(msg, max_size=fragment_overhead)
    with pytest.raises(EncodeError, match="65535"):
        split_message(Signatures(FID, SID, (bytes(64),) * 1100), max_size=fragment_overhead + 1)
    with pytest.raises(EncodeError):
        split_message(msg, max_size=MAX_MESSAGE_SIZE + 1)


def _as_fragment(payload: bytes) -> Fragment:
    fragment = decode_message(payload)
    assert isinstance(fragment, Fragment)
    return fragment


def _fragments(msg: Message, max_size: int = MAX_MESSAGE_SIZE) -> list[Fragment]:
    return [_as_fragment(p) for p in split_message(msg, max_size)]


def test_reassembler_rejects_tampered_chunk() -> None:
    frags = _fragments(_big_propose())
    chunk = bytearray(frags[2].chunk)
    chunk[100] ^= 1
    frags[2] = dataclasses.replace(frags[2], chunk=bytes(chunk))
    r = Reassembler()
    for f in frags[:-1]:
        assert r.add(f) is None
    with pytest.raises(DecodeError, match="message_id"):
        r.add(frags[-1])
    assert r.pending == 0 and r.buffered_bytes == 0


def test_reassembler_conflicting_duplicate_and_bad_fields() -> None:
    frags = _fragments(_big_propose())
    r = Reassembler()
    assert r.add(frags[0]) is None
    with pytest.raises(DecodeError, match="conflicting"):
        r.add(dataclasses.replace(frags[0], chunk=frags[0].chunk[:-1] + b"?"))
    assert r.pending == 0
    r.add(frags[0])
    with pytest.raises(DecodeError, match="count"):
        r.add(dataclasses.replace(frags[1], count=5))
    for bad in (
        dataclasses.replace(frags[0], index=4),
        dataclasses.replace(frags[0], count=0, index=0),
        dataclasses.replace(frags[0], chunk=b""),
    ):
        with pytest.raises(DecodeError):
            Reassembler().add(bad)


def test_reassembler_limits() -> None:
    frags = _fragments(_big_propose())
    with pytest.raises(DecodeError, match="exceed"):
        small = Reassembler(max_total=100_000)
        for f in frags:
            small.add(f)
    assert small.buffered_bytes <= 100_000
    r = Reassembler(max_pending=2)
    for n in range(2):
        r.add(dataclasses.replace(frags[0], message_id=bytes([n]) * 32))
    with pytest.raises(DecodeError, match="partial"):
        r.add(dataclasses.replace(frags[0], message_id=b"\x09" * 32))
    r.clear()
    assert r.pending == 0 and r.buffered_bytes == 0


def test_reassembler_rejects_nested_fragment_and_id_mismatch() -> None:
    inner = Fragment(FID, SID, bytes(32), 0, 1, b"x")
    body = wire.encode_body(inner)
    outer = Fragment(FID, SID, hashlib.sha256(body).digest(), 0, 1, body)
    with pytest.raises(DecodeError, match="nested"):
        Reassembler().add(outer)
    body = wire.encode_body(Done(FID, SID))
    wrong = Fragment(SID, FID, hashlib.sha256(body).digest(), 0, 1, body)
    with pytest.raises(DecodeError, match="ids differ"):
        Reassembler().add(wrong)


@settings(max_examples=40, deadline=None)
@given(
    ANY_MESSAGE,
    st.integers(200, 5000),
    st.randoms(use_true_random=False),
)
def test_split_reassemble_property(msg: Message, max_size: int, rnd: Any) -> None:
    if isinstance(msg, Fragment) and len(encode_message(msg)) > max_size:
        with pytest.raises(EncodeError, match="Fragment"):
            split_message(msg, max_size)
        return
    payloads = split_message(msg, max_size)
    assert all(len(p) <= max_size for p in payloads)
    order = list(range(len(payloads))) * 2
    rnd.shuffle(order)
    if len(payloads) == 1:
        assert decode_message(payloads[0]) == msg
    else:
        r = Reassembler()
        results = [r.add(_as_fragment(payloads[i])) for i in order]
        assert msg in results


# -------------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_only_decode_error(data: bytes) -> None:
    try:
        msg = decode_message(data)
    except DecodeError:
        return
    # Anything accepted must re-encode to a decodable equivalent message.
    assert decode_message(encode_message(msg)) == msg


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    _decode_only_decode_error(data)


@FUZZ
@given(st.sampled_from(range(1, 12)), st.binary(max_size=400))
def test_fuzz_random_tlv_after_valid_header(kind: int, tail: bytes) -> None:
    _decode_only_decode_error(HEADER + kind.to_bytes(2, "big") + tail)


@FUZZ
@given(ANY_MESSAGE, st.data())
def test_fuzz_mutations_and_truncations(msg: Message, data: st.DataObject) -> None:
    payload = split_message(msg)[0]
    pos = data.draw(st.integers(0, len(payload) - 1))
    byte = data.draw(st.integers(0, 255))
    _decode_only_decode_error(payload[:pos] + bytes([byte]) + payload[pos + 1 :])
    _decode_only_decode_error(payload[:pos])
    _decode_only_decode_error(payload[:pos] + bytes([byte]) + payload[pos:])


@FUZZ
@given(st.lists(st.builds(Fragment, _bytes(32), _bytes(32), _bytes(32), st.integers(0, 5),
                          st.integers(0, 5), st.binary(max_size=40)), max_size=12))  # fmt: skip
def test_fuzz_reassembler(fragments: list[Fragment]) -> None:
    r = Reassembler(max_total=200, max_pending=3)
    for f in fragments:
        try:
            r.add(f)
        except DecodeError:
            pass
        assert r.pending <= 3 and r.buffered_bytes <= 200


def test_sale_proposal_carries_prior_sales_as_an_odd_field() -> None:
    base = Propose(FID, SID, client_index=1, params=b"p", funding_txid=bytes(32), funding_vout=1, funding_value=10**5,
                   pubkeys=(b"\x02" + bytes(32),), state_indices=(), path_outputs=(b"\x00",), distribution=b"", kind=2)
    with_prior = dataclasses.replace(base, prior_sales=(b"\x01" * 200, b"\x02" * 210))
    assert wire.decode_body(wire.encode_body(with_prior)) == with_prior
    assert wire.decode_body(wire.encode_body(base)).prior_sales is None  # absent: older LSPs send none
