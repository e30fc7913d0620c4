#!/usr/bin/env python3
"""Benchmark BIP-327 MuSig2 sessions with N signers, all in one process.

For each N it times our `superscalar.crypto.musig2` (every signer's work, every partial signature verified,
final signature checked as BIP-340) and libsecp256k1's own musig module on the same inputs, and prints
one line per N: key aggregation, nonce generation, nonce aggregation, signing, partial-signature
verification, aggregation and total, in milliseconds, plus the ratio to libsecp256k1.

Usage: contrib/bench_musig2.py [N ...]      (default: 2 16 128 1024)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coincurve import PublicKeyXOnly  # type: ignore[import-untyped]  # noqa: E402
from coincurve._libsecp256k1 import ffi, lib  # type: ignore[import-untyped]  # noqa: E402
from coincurve.context import GLOBAL_CONTEXT  # type: ignore[import-untyped]  # noqa: E402

from superscalar.crypto import musig2  # noqa: E402

T = TypeVar("T")
PHASES = ("key_agg", "nonce_gen", "nonce_agg", "sign", "verify", "agg")


def timed(times: dict[str, float], phase: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    times[phase] = times.get(phase, 0.0) + (time.perf_counter() - start) * 1000
    return result


def run_ours(seckeys: list[bytes], msg: bytes) -> dict[str, float]:
    t: dict[str, float] = {}
    pubkeys = [musig2.individual_pk(sk) for sk in seckeys]
    keygen = timed(t, "key_agg", lambda: musig2.key_agg(pubkeys))
    aggpk = musig2.get_xonly_pk(keygen)
    nonces = timed(t, "nonce_gen", lambda: [
        musig2.nonce_gen(sk, pk, aggpk, msg, None) for sk, pk in zip(seckeys, pubkeys)
    ])
    aggnonce = timed(t, "nonce_agg", lambda: musig2.nonce_agg([pn for _, pn in nonces]))
    ctx = musig2.SessionContext(aggnonce, tuple(pubkeys), (), (), msg)
    psigs = timed(t, "sign", lambda: [musig2.sign(sn, sk, ctx) for (sn, _), sk in zip(nonces, seckeys)])
    ok = timed(t, "verify", lambda: all(
        musig2.partial_sig_verify_internal(ps, pn, pk, ctx)
        for ps, (_, pn), pk in zip(psigs, nonces, pubkeys)
    ))
    assert ok, "a partial signature did not verify"
    sig = timed(t, "agg", lambda: musig2.partial_sig_agg(psigs, ctx))
    assert PublicKeyXOnly(aggpk).verify(sig, msg), "aggregate signature invalid"
    return t


def run_libsecp(seckeys: list[bytes], msg: bytes) -> dict[str, float]:
    """The same session through libsecp256k1's musig module.

    Like ours, it starts from wire encodings: 33-byte public keys, 66-byte public nonces and 32-byte
    partial signatures are parsed inside the phase that receives them. Keypairs are made beforehand
    (untimed); libsecp256k1 does not check its own partial signatures.
    """
    ctx = GLOBAL_CONTEXT.ctx
    t: dict[str, float] = {}
    n = len(seckeys)
    keypairs = []
    wire_pubkeys = []
    for sk in seckeys:
        kp = ffi.new("secp256k1_keypair *")
        assert lib.secp256k1_keypair_create(ctx, kp, sk)
        pk = ffi.new("secp256k1_pubkey *")
        assert lib.secp256k1_keypair_pub(ctx, pk, kp)
        keypairs.append(kp)
        out, outlen = ffi.new("unsigned char[33]"), ffi.new("size_t *", 33)
        lib.secp256k1_ec_pubkey_serialize(ctx, out, outlen, pk, lib.SECP256K1_EC_COMPRESSED)
        wire_pubkeys.append(bytes(out))
    cache = ffi.new("secp256k1_musig_keyagg_cache *")
    agg = ffi.new("secp256k1_xonly_pubkey *")

    def key_agg() -> list[object]:
        pubkeys = []
        for b in wire_pubkeys:
            pk = ffi.new("secp256k1_pubkey *")
            assert lib.secp256k1_ec_pubkey_parse(ctx, pk, b, 33)
            pubkeys.append(pk)
        assert lib.secp256k1_musig_pubkey_agg(ctx, agg, cache, ffi.new("secp256k1_pubkey *[]", pubkeys), n)
        return pubkeys

    pubkeys = timed(t, "key_agg", key_agg)

    def gen() -> list[tuple[object, bytes]]:
        out = []
        for sk, pk in zip(seckeys, pubkeys):
            sec = ffi.new("secp256k1_musig_secnonce *")
            pub = ffi.new("secp256k1_musig_pubnonce *")
            assert lib.secp256k1_musig_nonce_gen(ctx, sec, pub, os.urandom(32), sk, pk, msg, cache, ffi.NULL)
            wire = ffi.new("unsigned char[66]")
            assert lib.secp256k1_musig_pubnonce_serialize(ctx, wire, pub)
            out.append((sec, bytes(wire)))
        return out

    nonces = timed(t, "nonce_gen", gen)
    aggnonce = ffi.new("secp256k1_musig_aggnonce *")
    session = ffi.new("secp256k1_musig_session *")

    def nonce_agg() -> list[object]:
        pubs = []
        for _, wire in nonces:
            pub = ffi.new("secp256k1_musig_pubnonce *")
            assert lib.secp256k1_musig_pubnonce_parse(ctx, pub, wire)
            pubs.append(pub)
        assert lib.secp256k1_musig_nonce_agg(ctx, aggnonce, ffi.new("secp256k1_musig_pubnonce *[]", pubs), n)
        # One shared session (public data), as our run shares its memoized session values.
        assert lib.secp256k1_musig_nonce_process(ctx, session, aggnonce, msg, cache)
        return pubs

    pubnonces = timed(t, "nonce_agg", nonce_agg)

    def sign_all() -> list[bytes]:
        out = []
        for (sec, _), kp in zip(nonces, keypairs):
            ps = ffi.new("secp256k1_musig_partial_sig *")
            assert lib.secp256k1_musig_partial_sign(ctx, ps, sec, kp, cache, session)
            wire = ffi.new("unsigned char[32]")
            assert lib.secp256k1_musig_partial_sig_serialize(ctx, wire, ps)
            out.append(bytes(wire))
        return out

    wire_psigs = timed(t, "sign", sign_all)

    def verify_all() -> list[object]:
        psigs = []
        for wire, pub, pk in zip(wire_psigs, pubnonces, pubkeys):
            ps = ffi.new("secp256k1_musig_partial_sig *")
            assert lib.secp256k1_musig_partial_sig_parse(ctx, ps, wire)
            assert lib.secp256k1_musig_partial_sig_verify(ctx, ps, pub, pk, cache, session)
            psigs.append(ps)
        return psigs

    psigs = timed(t, "verify", verify_all)
    sig = ffi.new("unsigned char[64]")
    ps_arr = ffi.new("secp256k1_musig_partial_sig *[]", psigs)
    timed(t, "agg", lambda: lib.secp256k1_musig_partial_sig_agg(ctx, sig, session, ps_arr, n))
    assert lib.secp256k1_schnorrsig_verify(ctx, sig, msg, 32, agg)
    return t


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [2, 16, 128, 1024]
    cols = " ".join(f"{p:>9}" for p in PHASES)
    print(f"{'N':>5} {'impl':>8} {cols} {'total':>9}  (ms)   ratio")
    for n in sizes:
        seckeys = [os.urandom(32) for _ in range(n)]
        msg = os.urandom(32)
        ours = run_ours(seckeys, msg)
        ref = run_libsecp(seckeys, msg)
        total_ours = sum(ours.values())
        total_ref = sum(ref.values())
        for name, t, total in (("ours", ours, total_ours), ("libsecp", ref, total_ref)):
            vals = " ".join(f"{t[p]:9.1f}" for p in PHASES)
            ratio = f"{total_ours / total_ref:6.2f}x" if name == "ours" else ""
            print(f"{n:>5} {name:>8} {vals} {total:9.1f}        {ratio}")


if __name__ == "__main__":
    main(sys.argv[1:])
