"""Transaction serialization, ids, weight and validation."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.bitcoin.encoding import ByteReader, ser_compact_size
from superscalar.bitcoin.errors import BitcoinError, DecodeError
from superscalar.bitcoin.hashes import hash160, ripemd160, tagged_hash, _ripemd160_py
from superscalar.bitcoin.tx import MAX_MONEY, OutPoint, Tx, TxIn, TxOut


# -- Hypothesis strategies ---------------------------------------------------------
U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
VERSIONS = st.one_of(st.sampled_from([1, 2, 3]), U32)

outpoints = st.builds(OutPoint, st.binary(min_size=32, max_size=32), U32)
witness_stacks = st.lists(st.binary(max_size=80), max_size=4).map(tuple)
tx_outs = st.builds(TxOut, st.integers(min_value=0, max_value=MAX_MONEY), st.binary(max_size=60))


def tx_ins(with_witness: bool) -> st.SearchStrategy[TxIn]:
    """Inputs, with empty witnesses unless ``with_witness``."""
    wit = witness_stacks if with_witness else st.just(())
    return st.builds(TxIn, outpoints, st.binary(max_size=40), U32, wit)


def txs(with_witness: bool = True, min_inputs: int = 1) -> st.SearchStrategy[Tx]:
    """Transactions with at least ``min_inputs`` inputs (0-input txs are ambiguous)."""
    return st.builds(
        Tx,
        VERSIONS,
        st.lists(tx_ins(with_witness), min_size=min_inputs, max_size=4).map(tuple),
        st.lists(tx_outs, max_size=4).map(tuple),
        U32,
    )


# Genesis block coinbase (block 0), txid well known.
GENESIS_COINBASE = (
    "01000000010000000000000000000000000000000000000000000000000000000000000000ffffffff4d04ffff001d"
    "0104455468652054696d65732030332f4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f"
    "66207365636f6e64206261696c6f757420666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0"
    "fe5548271967f1a67130b7105cd6a828e03909a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c38"
    "4df7ba0b8d578a4c702b6bf11d5fac00000000"
)
GENESIS_TXID = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"

# BIP-143 "Native P2WPKH" signed example (input 0 P2PK, input 1 P2WPKH).
BIP143_SIGNED = (
    "01000000000102fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f000000004948304502"
    "21008b9d1dc26ba6a9cb62127b02742fa9d754cd3bebf337f7a55d114c8e5cdd30be022040529b194ba3f9281a99f2b1"
    "c0a19c0489bc22ede944ccf4ecbab4cc618ef3ed01eeffffffef51e1b804cc89d182d279655c3aa89e815b1b309fe287"
    "d9b2b55d57b90ec68a0100000000ffffffff02202cb206000000001976a9148280b37df378db99f66f85c95a783a76ac"
    "7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe6a21b2d50ce2f0167faa815988ac000247304402203609"
    "e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c4518331561406f90300e8f33"
    "58f51928d43c212a8caed02de67eebee0121025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07ae"
    "ee635711000000"
)


def test_genesis_coinbase() -> None:
    tx = Tx.from_hex(GENESIS_COINBASE)
    assert tx.to_hex() == GENESIS_COINBASE
    assert tx.txid == GENESIS_TXID
    assert tx.txid_bytes == bytes.fromhex(GENESIS_TXID)[::-1]
    assert tx.wtxid == tx.txid
    assert not tx.has_witness
    size = len(GENESIS_COINBASE) // 2
    assert tx.weight == 4 * size and tx.vsize == size == 204
    assert tx.outputs[0].value == 50 * 100_000_000
    assert tx.outpoint(0) == OutPoint.from_hex(GENESIS_TXID, 0)


def test_segwit_tx_weight_and_ids() -> None:
    tx = Tx.from_hex(BIP143_SIGNED)
    assert tx.to_hex() == BIP143_SIGNED
    assert tx.has_witness and tx.inputs[0].witness == () and len(tx.inputs[1].witness) == 2
    base = len(tx.serialize_without_witness())
    total = len(tx.serialize())
    assert (base, total) == (233, 343)
    # BIP-141: weight = base * 3 + total; vsize = ceil(weight / 4).
    assert tx.weight == 233 * 3 + 343 == 1042
    assert tx.vsize == 261
    assert tx.txid != tx.wtxid
    stripped = tx.without_witnesses()
    assert stripped.txid == tx.txid
    assert stripped.serialize() == tx.serialize_without_witness()
    assert stripped.weight == 4 * 233
    back = stripped.with_witness(1, tx.inputs[1].witness)
    assert back == tx


def test_versions_parse() -> None:
    base = Tx(1, (TxIn(OutPoint(b"\xab" * 32, 1), b"", 0xFFFFFFFD),), (TxOut(330, b"\x51"),), 0)
    for version in (1, 2, 3, 0, 0xFFFFFFFF, 0x80000000):
        tx = dataclasses.replace(base, version=version)
        assert Tx.deserialize(tx.serialize()) == tx
        assert tx.serialize()[:4] == version.to_bytes(4, "little")


def test_construction_validation() -> None:
    op = OutPoint(bytes(32), 0)
    with pytest.raises(BitcoinError):
        OutPoint(bytes(31), 0)
    with pytest.raises(BitcoinError):
        OutPoint(bytes(32), 1 << 32)
    with pytest.raises(BitcoinError):
        TxIn(op, sequence=-1)
    with pytest.raises(BitcoinError):
        TxOut(MAX_MONEY + 1, b"")
    with pytest.raises(BitcoinError):
        TxOut(-1, b"")
    with pytest.raises(BitcoinError):
        Tx(1 << 32, (), (), 0)
    with pytest.raises(BitcoinError):
        Tx(2, (), (), 1 << 32)
    assert TxOut(MAX_MONEY, b"").value == MAX_MONEY
    # Lists are frozen into tuples.
    tx = Tx(2, [TxIn(op, witness=[b"a"])], [TxOut(1, b"")], 0)  # type: ignore[arg-type]
    assert isinstance(tx.inputs, tuple) and tx.inputs[0].witness == (b"a",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tx.version = 3  # type: ignore[misc]
    with pytest.raises(BitcoinError):
        tx.with_witness(1, [b""])
    # Witness items must be bytes, however the input is made.
    with pytest.raises(BitcoinError):
        TxIn(op, witness=("a",))  # type: ignore[arg-type]
    with pytest.raises(BitcoinError):
        tx.with_witness(0, [b"ok", 7])  # type: ignore[list-item]


def _sample() -> Tx:
    return Tx(2, (TxIn(OutPoint(b"\x01" * 32, 0), witness=(b"\x02",)),), (TxOut(1000, b"\x51"),), 0)


def test_decode_errors() -> None:
    good = _sample().serialize()
    with pytest.raises(DecodeError, match="trailing"):
        Tx.deserialize(good + b"\x00")
    for cut in range(len(good)):
        with pytest.raises(DecodeError):
            Tx.deserialize(good[:cut])
    # Superfluous witness record: flag set but all stacks empty.
    legacy = _sample().without_witnesses().serialize()
    fake = legacy[:4] + b"\x00\x01" + legacy[4:-4] + b"\x00" + legacy[-4:]
    with pytest.raises(DecodeError, match="superfluous"):
        Tx.deserialize(fake)
    # Unknown flag bits.
    with pytest.raises(DecodeError):
        Tx.deserialize(good[:5] + b"\x03" + good[6:])
    # Non-canonical CompactSize input count.
    with pytest.raises(DecodeError, match="non-canonical"):
        Tx.deserialize(legacy[:4] + b"\xfd\x01\x00" + legacy[5:])
    # Huge counts are refused before allocating.
    with pytest.raises(DecodeError):
        Tx.deserialize(b"\x02\x00\x00\x00" + b"\xfe\xff\xff\xff\x01")
    with pytest.raises(DecodeError):
        Tx.deserialize(b"\x02\x00\x00\x00" + b"\xff" + b"\xff" * 8)
    # Out-of-range amount becomes a DecodeError, not a bare BitcoinError.
    bad_value = legacy.replace((1000).to_bytes(8, "little"), (MAX_MONEY + 1).to_bytes(8, "little"))
    with pytest.raises(DecodeError):
        Tx.deserialize(bad_value)
    with pytest.raises(DecodeError):
        Tx.from_hex("zz")
    with pytest.raises(DecodeError):
        Tx.deserialize("00" * 10)  # type: ignore[arg-type]


def test_compact_size_and_reader() -> None:
    for n, enc in [(0, "00"), (252, "fc"), (253, "fdfd00"), (0xFFFF, "fdffff"), (0x10000, "fe00000100"),
                   (0xFFFFFFFF, "feffffffff"), (1 << 32, "ff0000000001000000")]:
        assert ser_compact_size(n).hex() == enc
        assert ByteReader(bytes.fromhex(enc)).read_compact_size(max_value=1 << 64) == n
    for bad in ("fdfc00", "fe ffff0000", "ff ffffffff00000000", "fd00"):
        with pytest.raises(DecodeError):
            ByteReader(bytes.fromhex(bad.replace(" ", ""))).read_compact_size(max_value=1 << 64)
    with pytest.raises(DecodeError, match="too large"):
        ByteReader(bytes.fromhex("fe00000010")).read_compact_size()


def test_hashes() -> None:
    assert ripemd160(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"
    assert _ripemd160_py(b"abc").hex() == "8eb208f7e05d987a9b044a8e98c6b087f15a0bfc"
    assert _ripemd160_py(b"a" * 1000) == ripemd160(b"a" * 1000)
    g = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    assert hash160(g).hex() == "751e76e8199196d454941c45d1b3a323f1433bd6"
    assert len(tagged_hash("TapLeaf", b"")) == 32


@given(txs(with_witness=True))
@settings(max_examples=300)
def test_roundtrip_random(tx: Tx) -> None:
    data = tx.serialize()
    back = Tx.deserialize(data)
    assert back == tx
    assert back.serialize() == data
    assert Tx.deserialize(tx.serialize_without_witness()) == tx.without_witnesses()
    assert tx.weight == len(tx.serialize_without_witness()) * 3 + len(data)
    assert tx.vsize * 4 >= tx.weight > (tx.vsize - 1) * 4


@given(txs(with_witness=False))
def test_roundtrip_legacy(tx: Tx) -> None:
    assert not tx.has_witness
    assert Tx.deserialize(tx.serialize(), allow_witness=False) == tx
    assert tx.weight == 4 * len(tx.serialize())


@given(st.binary(max_size=400))
@settings(max_examples=500)
def test_random_bytes_only_decode_error(data: bytes) -> None:
    try:
        tx = Tx.deserialize(data)
    except DecodeError:
        return
    assert tx.serialize() == data or Tx.deserialize(tx.serialize()) == tx


@given(txs(), st.data())
@settings(max_examples=300)
def test_mutated_bytes_only_decode_error(tx: Tx, data: st.DataObject) -> None:
    raw = bytearray(tx.serialize())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            Tx.deserialize(candidate)
        except DecodeError:
            pass
