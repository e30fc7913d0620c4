"""BIP-340 Schnorr signatures over secp256k1 (any message length), on the group layer in secp256k1.py.

MuSig2 aggregates verify with `schnorr_verify`; single-key signing (the LSP's timeout leaves) uses
`schnorr_sign`, which checks its own signature before returning it.
"""

from __future__ import annotations

from coincurve._libsecp256k1 import ffi, lib

from ..bitcoin.hashes import tagged_hash
from .secp256k1 import _CTX, N, point_mul_g


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def schnorr_sign(msg: bytes, seckey: bytes, aux_rand: bytes) -> bytes:
    """BIP-340 "Default Signing": a 64-byte signature of `msg` (any length) by `seckey`."""
    if len(seckey) != 32:
        raise ValueError("The secret key must be 32 bytes.")
    if len(aux_rand) != 32:
        raise ValueError("aux_rand must be 32 bytes.")
    d0 = int.from_bytes(seckey, "big")
    if not 1 <= d0 <= N - 1:
        raise ValueError("The secret key must be an integer in the range 1..n-1.")
    P_ = point_mul_g(d0)
    assert P_ is not None
    d = d0 if P_.has_even_y() else N - d0
    t = _xor(d.to_bytes(32, "big"), tagged_hash("BIP0340/aux", aux_rand))
    k0 = int.from_bytes(tagged_hash("BIP0340/nonce", t + P_.xonly() + msg), "big") % N
    if k0 == 0:
        raise ValueError("Failure. This happens only with negligible probability.")
    R = point_mul_g(k0)
    assert R is not None
    k = k0 if R.has_even_y() else N - k0
    e = int.from_bytes(tagged_hash("BIP0340/challenge", R.xonly() + P_.xonly() + msg), "big") % N
    sig = R.xonly() + ((k + e * d) % N).to_bytes(32, "big")
    if not schnorr_verify(msg, P_.xonly(), sig):
        raise AssertionError("own signature does not verify")
    return sig


def schnorr_verify(msg: bytes, pubkey: bytes, sig: bytes) -> bool:
    """BIP-340 "Verification": does `sig` sign `msg` under the x-only `pubkey`? (libsecp256k1's
    schnorrsig module, as coincurve ships it; the BIP-340 vectors are checked against it in the tests.)"""
    if len(pubkey) != 32:
        raise ValueError("The public key must be a 32-byte array.")
    if len(sig) != 64:
        raise ValueError("The signature must be a 64-byte array.")
    key = ffi.new("secp256k1_xonly_pubkey *")
    if not lib.secp256k1_xonly_pubkey_parse(_CTX, key, bytes(pubkey)):
        return False  # not an x coordinate on the curve
    return bool(lib.secp256k1_schnorrsig_verify(_CTX, bytes(sig), bytes(msg), len(msg), key))
