"""BIP-340 official vectors (test-vectors.csv, unmodified): our signer and verifier, and libsecp256k1's
verifier through coincurve, must agree with every row."""

from __future__ import annotations

import csv

from coincurve import PublicKeyXOnly

from superscalar.crypto.bip340 import schnorr_sign, schnorr_verify

from .vectors import vector_path


def libsecp_verify(msg: bytes, pubkey: bytes, sig: bytes) -> bool:
    try:
        return bool(PublicKeyXOnly(pubkey).verify(sig, msg))
    except ValueError:  # coincurve refuses a public key that is not on the curve
        return False


def test_bip340_vectors() -> None:
    with vector_path("bip-0340/test-vectors.csv").open() as f:
        rows = list(csv.DictReader(f))
    signed = 0
    for row in rows:
        pubkey = bytes.fromhex(row["public key"])
        msg = bytes.fromhex(row["message"])
        sig = bytes.fromhex(row["signature"])
        expected = row["verification result"] == "TRUE"
        if row["secret key"]:
            assert schnorr_sign(msg, bytes.fromhex(row["secret key"]), bytes.fromhex(row["aux_rand"])) == sig, row
            signed += 1
        assert schnorr_verify(msg, pubkey, sig) is expected, row
        assert libsecp_verify(msg, pubkey, sig) is expected, row
    assert len(rows) == 19 and signed == 8
