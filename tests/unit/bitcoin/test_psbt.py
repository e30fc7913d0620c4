"""BIP-174 version 0 PSBT encoding."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.bitcoin.encoding import ser_compact_size
from superscalar.bitcoin.errors import BitcoinError, DecodeError
from superscalar.bitcoin.psbt import Psbt, PsbtInput, PsbtOutput
from superscalar.bitcoin.tx import MAX_MONEY, OutPoint, Tx, TxIn, TxOut

_U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
tx_outs = st.builds(TxOut, st.integers(min_value=0, max_value=MAX_MONEY), st.binary(max_size=60))
witness_stacks = st.lists(st.binary(max_size=80), max_size=4).map(tuple)


def unsigned_txs() -> st.SearchStrategy[Tx]:
    """Transactions with empty scriptSigs and witnesses, as a PSBT holds."""
    ins = st.builds(TxIn, st.builds(OutPoint, st.binary(min_size=32, max_size=32), _U32), st.just(b""), _U32)
    return st.builds(
        Tx,
        st.one_of(st.sampled_from([1, 2, 3]), _U32),
        st.lists(ins, min_size=1, max_size=3).map(tuple),
        st.lists(tx_outs, max_size=3).map(tuple),
        _U32,
    )

# BIP-174 "Test Vectors", valid: "PSBT with one P2PKH input. Outputs are empty".
BIP174_P2PKH = (
    "cHNidP8BAHUCAAAAASaBcTce3/KF6Tet7qSze3gADAVmy7OtZGQXE8pCFxv2AAAAAAD+////AtPf9QUAAAAAGXapFNDFmQPFusKGh2"
    "DpD9UhpGZap2UgiKwA4fUFAAAAABepFDVF5uM7gyxHBQ8k0+65PJwDlIvHh7MuEwAAAQD9pQEBAAAAAAECiaPHHqtNIOA3G7ukzG"
    "mPopXJRjr6Ljl/hTPMti+VZ+UBAAAAFxYAFL4Y0VKpsBIDna89p95PUzSe7LmF/////4b4qkOnHf8USIk6UwpyN+9rRgi7st0tAX"
    "HmOuxqSJC0AQAAABcWABT+Pp7xp0XpdNkCxDVZQ6vLNL1TU/////8CAMLrCwAAAAAZdqkUhc/xCX/Z4Ai7NK9wnGIZeziXikiIrH"
    "L++E4sAAAAF6kUM5cluiHv1irHU6m80GfWx6ajnQWHAkcwRAIgJxK+IuAnDzlPVoMR3HyppolwuAJf3TskAinwf4pfOiQCIAGLON"
    "fc0xTnNMkna9b7QPZzMlvEuqFEyADS8vAtsnZcASED0uFWdJQbrUqZY3LLh+GFbTZSYG2YVi/jnF6efkE/IQUCSDBFAiEA0SuFLY"
    "Xc2WHS9fSrZgZU327tzHlMDDPOXMMJ/7X85Y0CIGczio4OFyXBl/saiK9Z9R5E5CVbIBZ8hoQDHAXR8lkqASECI7cr7vCWXRC+B3"
    "jv7NYfysb3mk6haTkzgHNEZPhPKrMAAAAAAAAA"
)

SPK = bytes.fromhex("5120" + "79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


def _unsigned() -> Tx:
    return Tx(
        2,
        (TxIn(OutPoint(b"\x01" * 32, 0), sequence=0xFFFFFFFD), TxIn(OutPoint(b"\x02" * 32, 3))),
        (TxOut(90_000, SPK), TxOut(240, bytes.fromhex("51024e73"))),
        0,
    )


def test_bip174_vector() -> None:
    psbt = Psbt.from_base64(BIP174_P2PKH)
    assert psbt.to_base64() == BIP174_P2PKH
    assert len(psbt.inputs) == 1 and len(psbt.outputs) == 2
    # The input map holds a non-witness UTXO (type 0x00), kept raw; it is the spent tx.
    (key, value), = psbt.inputs[0].unknown
    assert key == b"\x00"
    assert Tx.deserialize(value).txid_bytes == psbt.tx.inputs[0].prevout.txid


def test_roundtrip_and_extract() -> None:
    tx = _unsigned()
    psbt = Psbt.from_tx(tx)
    assert Psbt.deserialize(psbt.serialize()) == psbt
    sig = b"\x33" * 64
    psbt = psbt.with_input(0, PsbtInput(witness_utxo=TxOut(100_000, SPK), final_script_witness=(sig,)))
    psbt = psbt.with_input(
        1,
        PsbtInput(
            witness_utxo=TxOut(1_000, SPK),
            final_script_witness=(b"", b"\x51"),
            unknown=((b"\xfc\x05hello\x01", b"proprietary"), (b"\x13" + b"\x00" * 32, b"\x01" * 65)),
        ),
    )
    psbt = dataclasses.replace(psbt, outputs=(PsbtOutput(((b"\x05" + bytes(32), b"x"),)), PsbtOutput()))
    back = Psbt.from_base64(psbt.to_base64())
    assert back == psbt
    assert back.serialize() == psbt.serialize()
    signed = back.extract_tx()
    assert signed.inputs[0].witness == (sig,) and signed.inputs[1].witness == (b"", b"\x51")
    assert signed.txid == tx.txid
    assert signed.without_witnesses() == tx
    with pytest.raises(BitcoinError, match="not finalized"):
        Psbt.from_tx(tx).extract_tx()


def _psbt_bytes(global_pairs: list[tuple[bytes, bytes]], maps: list[list[tuple[bytes, bytes]]]) -> bytes:
    def ser_map(pairs: list[tuple[bytes, bytes]]) -> bytes:
        out = b"".join(ser_compact_size(len(k)) + k + ser_compact_size(len(v)) + v for k, v in pairs)
        return out + b"\x00"

    return b"psbt\xff" + ser_map(global_pairs) + b"".join(ser_map(m) for m in maps)


def test_strict_decoding() -> None:
    tx = _unsigned()
    raw_tx = tx.serialize()
    utx = (b"\x00", raw_tx)
    ok = _psbt_bytes([utx], [[], [], [], []])
    assert Psbt.deserialize(ok) == Psbt.from_tx(tx)
    with_script_sig = dataclasses.replace(tx, inputs=(TxIn(OutPoint(b"\x01" * 32, 0), b"\x51"),))
    txout = TxOut(1, SPK).serialize()
    bad_cases = {
        "magic": b"psbt\x00" + ok[5:],
        "trailing": ok + b"\x00",
        "truncated": ok[:-1],
        "missing tx": _psbt_bytes([], []),
        "duplicate global": _psbt_bytes([utx, utx], [[], [], [], []]),
        "too few maps": _psbt_bytes([utx], [[], [], []]),
        "tx key data": _psbt_bytes([(b"\x00\x01", raw_tx)], [[], [], [], []]),
        "version 2": _psbt_bytes([utx, (b"\xfb", b"\x02\x00\x00\x00")], [[], [], [], []]),
        "scriptSig": _psbt_bytes(
            [(b"\x00", with_script_sig.serialize())],
            [[], [], []],
        ),
        "witness tx": _psbt_bytes([(b"\x00", tx.with_witness(0, [b"\x01"]).serialize())], [[], [], [], []]),
        "duplicate input key": _psbt_bytes([utx], [[(b"\x01", txout)] * 2, [], [], []]),
        "bad witness utxo": _psbt_bytes([utx], [[(b"\x01", txout + b"\x00")], [], [], []]),
        "witness utxo key data": _psbt_bytes([utx], [[(b"\x01\x00", txout)], [], [], []]),
        "bad final witness": _psbt_bytes([utx], [[(b"\x08", b"\x02\x01")], [], [], []]),
        "noncanonical key type": _psbt_bytes([utx], [[(b"\xfd\x01\x00", b"")], [], [], []]),
    }
    for name, data in bad_cases.items():
        try:
            Psbt.deserialize(data)
        except DecodeError:
            continue
        pytest.fail(f"accepted invalid PSBT: {name}")
    assert Psbt.deserialize(_psbt_bytes([utx, (b"\xfb", bytes(4))], [[], [], [], []])).unknown == (
        (b"\xfb", bytes(4)),
    )
    for text in ("not base64!", "cHNidP8=", "", "é"):
        with pytest.raises(DecodeError):
            Psbt.from_base64(text)


def test_construction_validation() -> None:
    tx = _unsigned()
    with pytest.raises(BitcoinError):
        Psbt(tx, (PsbtInput(),), (PsbtOutput(), PsbtOutput()))
    with pytest.raises(BitcoinError):
        Psbt(tx.with_witness(0, [b"\x01"]), (PsbtInput(), PsbtInput()), (PsbtOutput(), PsbtOutput()))
    with pytest.raises(BitcoinError):
        PsbtInput(unknown=((b"\x01", b""),))  # known type in unknown
    with pytest.raises(BitcoinError):
        PsbtInput(unknown=((b"\x10", b""), (b"\x10", b"")))
    with pytest.raises(BitcoinError):
        PsbtOutput(unknown=((b"", b""),))


_pairs = st.lists(
    st.tuples(st.binary(min_size=1, max_size=10).filter(lambda k: k[0] < 0xFD), st.binary(max_size=20)),
    max_size=3,
    unique_by=lambda p: p[0],
)


@st.composite
def psbts(draw: st.DrawFn) -> Psbt:
    tx = draw(unsigned_txs())
    inputs = []
    for _ in tx.inputs:
        unknown = [p for p in draw(_pairs) if p[0][0] not in (0x01, 0x07, 0x08)]
        inputs.append(
            PsbtInput(
                draw(st.none() | tx_outs),
                draw(st.none() | st.binary(max_size=30)),
                draw(st.none() | witness_stacks),
                tuple(unknown),
            )
        )
    outputs = tuple(PsbtOutput(tuple(draw(_pairs))) for _ in tx.outputs)
    glob = tuple(p for p in draw(_pairs) if p[0][0] not in (0x00, 0xFB))
    return Psbt(tx, tuple(inputs), outputs, glob)


@given(psbts())
@settings(max_examples=200)
def test_psbt_roundtrip(psbt: Psbt) -> None:
    data = psbt.serialize()
    assert Psbt.deserialize(data) == psbt
    assert Psbt.from_base64(psbt.to_base64()) == psbt
    assert base64.b64decode(psbt.to_base64()) == data


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_random_bytes_only_decode_error(data: bytes) -> None:
    for candidate in (data, b"psbt\xff" + data):
        try:
            Psbt.deserialize(candidate)
        except DecodeError:
            pass


@given(psbts(), st.data())
@settings(max_examples=300)
def test_mutated_psbt_only_decode_error(psbt: Psbt, data: st.DataObject) -> None:
    raw = bytearray(psbt.serialize())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    for candidate in (bytes(raw), bytes(raw[:cut])):
        try:
            Psbt.deserialize(candidate)
        except DecodeError:
            pass
