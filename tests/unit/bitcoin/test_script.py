"""Script builders, minimal pushes and number encoding."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from superscalar.bitcoin.address import segwit_address
from superscalar.bitcoin.errors import BitcoinError
from superscalar.bitcoin.hashes import sha256
from superscalar.bitcoin.script import (
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKSEQUENCEVERIFY,
    OP_CHECKSIG,
    OP_DROP,
    cltv_leaf_script,
    csv_leaf_script,
    funding_script_2of2,
    p2a_script,
    p2pkh_script,
    p2tr_script,
    p2wpkh_script,
    p2wsh_script,
    push_data,
    push_int,
    script_num,
    witness_program,
)

# BOLT-3 Appendix B "Funding Transaction Test Vectors".
BOLT3_LOCAL_FUNDING_PUBKEY = bytes.fromhex(
    "023da092f6980e58d2c037173180e9a465476026ee50f96695963e8efe436f54eb"
)
BOLT3_REMOTE_FUNDING_PUBKEY = bytes.fromhex(
    "030e9f7b623d2ccc7c9bd44d66d5ce21ce504c0acf6385a132cec6d3c39fa711c1"
)
BOLT3_FUNDING_WITNESS_SCRIPT = (
    "5221023da092f6980e58d2c037173180e9a465476026ee50f96695963e8efe436f54eb21030e9f7b623d2ccc7c9bd44d"
    "66d5ce21ce504c0acf6385a132cec6d3c39fa711c152ae"
)
XONLY = bytes.fromhex("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")


def test_bolt3_funding_script() -> None:
    ws = funding_script_2of2(BOLT3_LOCAL_FUNDING_PUBKEY, BOLT3_REMOTE_FUNDING_PUBKEY)
    assert ws.hex() == BOLT3_FUNDING_WITNESS_SCRIPT
    # Key order does not matter: keys are sorted lexicographically.
    assert funding_script_2of2(BOLT3_REMOTE_FUNDING_PUBKEY, BOLT3_LOCAL_FUNDING_PUBKEY) == ws
    assert p2wsh_script(ws) == b"\x00\x20" + sha256(ws)
    with pytest.raises(BitcoinError):
        funding_script_2of2(BOLT3_LOCAL_FUNDING_PUBKEY[1:], BOLT3_REMOTE_FUNDING_PUBKEY)
    with pytest.raises(BitcoinError):
        funding_script_2of2(b"\x04" + BOLT3_LOCAL_FUNDING_PUBKEY[1:], BOLT3_REMOTE_FUNDING_PUBKEY)


@pytest.mark.parametrize(
    ("n", "enc"),
    [
        (0, ""), (1, "01"), (-1, "81"), (16, "10"), (127, "7f"), (128, "8000"), (-128, "8080"),
        (255, "ff00"), (256, "0001"), (-255, "ff80"), (32767, "ff7f"), (32768, "008000"),
        (0x7FFFFFFF, "ffffff7f"), (-0x7FFFFFFF, "ffffffff"), (0x80000000, "0000008000"),
        (0xFFFFFFFF, "ffffffff00"), (500_000_000, "0065cd1d"),
    ],
)
def test_script_num(n: int, enc: str) -> None:
    assert script_num(n).hex() == enc


@given(st.integers(min_value=-(1 << 39), max_value=1 << 39))
def test_script_num_minimal(n: int) -> None:
    enc = script_num(n)
    # BIP-62 rule 4: no superfluous trailing 0x00/0x80 byte.
    if enc:
        assert enc[-1] & 0x7F or (len(enc) > 1 and enc[-2] & 0x80)
    mag = int.from_bytes(enc, "little") if enc else 0
    if enc and enc[-1] & 0x80:
        mag = -(mag & ~(0x80 << (8 * (len(enc) - 1))))
    assert mag == n


def test_push_data_minimal() -> None:
    assert push_data(b"") == b"\x00"
    assert push_data(b"\x01") == b"\x51"
    assert push_data(b"\x10") == b"\x60"
    assert push_data(b"\x81") == b"\x4f"
    assert push_data(b"\x00") == b"\x01\x00"
    assert push_data(b"\x11") == b"\x01\x11"
    assert push_data(b"a" * 75) == b"\x4b" + b"a" * 75
    assert push_data(b"a" * 76) == b"\x4c\x4c" + b"a" * 76
    assert push_data(b"a" * 255)[:2] == b"\x4c\xff"
    assert push_data(b"a" * 256)[:3] == b"\x4d\x00\x01"
    assert push_data(b"a" * 65536)[:5] == b"\x4e\x00\x00\x01\x00"
    assert push_int(0) == b"\x00" and push_int(-1) == b"\x4f" and push_int(16) == b"\x60"
    assert push_int(17) == b"\x01\x11" and push_int(144) == b"\x02\x90\x00"


def test_timelock_leaves() -> None:
    cltv = cltv_leaf_script(800_000, XONLY)
    tail = bytes([32]) + XONLY + bytes([OP_CHECKSIG])
    assert cltv == b"\x03\x00\x35\x0c" + bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP]) + tail
    assert cltv_leaf_script(500_000_000, XONLY)[:5].hex() == "040065cd1d"
    assert cltv_leaf_script(0xFFFFFFFF, XONLY)[:6].hex() == "05ffffffff00"
    assert cltv_leaf_script(10, XONLY)[:1] == b"\x5a"
    csv = csv_leaf_script(144, XONLY)
    assert csv == b"\x02\x90\x00" + bytes([OP_CHECKSEQUENCEVERIFY, OP_DROP]) + tail
    assert csv_leaf_script(1, XONLY)[:2] == bytes([0x51, OP_CHECKSEQUENCEVERIFY])
    for bad in (-1, 1 << 32):
        with pytest.raises(BitcoinError):
            cltv_leaf_script(bad, XONLY)
    for bad in (-1, 0x10000):
        with pytest.raises(BitcoinError):
            csv_leaf_script(bad, XONLY)
    with pytest.raises(BitcoinError):
        csv_leaf_script(10, XONLY[:31])


def test_output_scripts() -> None:
    pub = bytes.fromhex("0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
    h = bytes.fromhex("751e76e8199196d454941c45d1b3a323f1433bd6")
    assert p2wpkh_script(pub).hex() == "0014" + h.hex()
    assert p2wpkh_script(h) == p2wpkh_script(pub)
    assert p2pkh_script(pub).hex() == "76a914" + h.hex() + "88ac"
    assert p2tr_script(XONLY).hex() == "5120" + XONLY.hex()
    assert p2a_script().hex() == "51024e73"
    assert segwit_address("bc", p2a_script()) == "bc1pfeessrawgf"
    assert witness_program(p2a_script()) == (1, b"\x4e\x73")
    assert witness_program(p2tr_script(XONLY)) == (1, XONLY)
    assert witness_program(p2wpkh_script(h)) == (0, h)
    assert witness_program(p2pkh_script(h)) is None
    assert witness_program(b"\x51\x01\x00") is None
    assert witness_program(b"\x00\x14" + h + b"\x00") is None
    with pytest.raises(BitcoinError):
        p2tr_script(pub)
    with pytest.raises(BitcoinError):
        p2wpkh_script(b"\x05" + pub[1:])
