"""OutputVector: outputs kept as their consensus bytes must read back exactly as parsed outputs, and
malformed vectors must fail as strictly as the transaction parser does."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.bitcoin.encoding import ser_compact_size
from superscalar.bitcoin.errors import DecodeError
from superscalar.bitcoin.tx import MAX_MONEY, OutPoint, OutputVector, Tx, TxIn, TxOut

# Script lengths around the one-byte CompactSize limit, and runs of equal lengths (what the scanner
# batches), mixed with arbitrary ones.
scripts = st.one_of(
    st.sampled_from([b"", b"\x51\x02\x4e\x73", b"\x00\x14" + bytes(20), b"\x51\x20" + bytes(32)]),
    st.binary(max_size=300),
)
outputs = st.lists(st.builds(TxOut, st.integers(min_value=0, max_value=MAX_MONEY), scripts), max_size=40)


def vector(outs: list[TxOut]) -> bytes:
    return ser_compact_size(len(outs)) + b"".join(o.serialize() for o in outs)


@settings(max_examples=300, deadline=None)
@given(outputs, st.integers(min_value=1, max_value=50))
def test_reads_back_every_output(outs: list[TxOut], repeat: int) -> None:
    outs = outs + [outs[-1]] * repeat if outs else outs  # long runs of one script length
    ov = OutputVector(vector(outs))
    assert len(ov) == len(outs)
    assert list(ov) == outs and ov == tuple(outs) and ov[:] == tuple(outs)
    assert list(ov.values) == [o.value for o in outs]
    assert all(ov[i] == o for i, o in enumerate(outs))
    if outs:
        assert ov[-1] == outs[-1]
    tx = Tx.with_output_vector(3, (TxIn(OutPoint(bytes(32), 0)),), vector(outs))
    plain = Tx(3, (TxIn(OutPoint(bytes(32), 0)),), tuple(outs))
    assert tx.serialize() == plain.serialize() and tx.txid == plain.txid
    assert tx.legacy_size == plain.legacy_size == len(plain.serialize_without_witness())
    assert Tx.deserialize(tx.serialize()).outputs == tx.outputs


@settings(max_examples=300, deadline=None)
@given(outputs.filter(bool), st.data())
def test_truncated_or_padded_vectors_fail(outs: list[TxOut], data: st.DataObject) -> None:
    raw = vector(outs)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(DecodeError):
        OutputVector(raw[:cut])
    with pytest.raises(DecodeError):
        OutputVector(raw + data.draw(st.binary(min_size=1, max_size=10)))


def test_value_out_of_money_range_fails() -> None:
    raw = vector([TxOut(1, b"\x51")])
    too_much = ser_compact_size(1) + (MAX_MONEY + 1).to_bytes(8, "little") + raw[9:]
    with pytest.raises(DecodeError, match="out of range"):
        OutputVector(too_much)


def test_index_out_of_range() -> None:
    ov = OutputVector(vector([TxOut(1, b"\x51")] * 3))
    with pytest.raises(IndexError):
        ov[3]
    with pytest.raises(IndexError):
        ov[-4]
