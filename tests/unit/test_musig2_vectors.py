"""BIP-327 official test vectors, one test per vector file, read unmodified from ../shared/vectors."""

from __future__ import annotations

from typing import Any, Callable, Optional

import pytest

from superscalar.crypto import musig2
from superscalar.crypto.bip328 import aggregate_xpub
from superscalar.crypto.musig2 import InvalidContributionError, SecNonce, SessionContext

from .vectors import load_json


def fromhex_all(items: list[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in items]


def expect_error(case: dict[str, Any], fn: Callable[[], object]) -> None:
    """Run fn and check it fails the way the vector says (type, signer, contribution or message)."""
    err = case["error"]
    if err["type"] == "invalid_contribution":
        with pytest.raises(InvalidContributionError) as exc:
            fn()
        assert exc.value.signer == err["signer"], case
        if "contrib" in err:
            assert exc.value.contrib == err["contrib"], case
    elif err["type"] == "value":
        with pytest.raises(ValueError) as vexc:
            fn()
        assert str(vexc.value) == err["message"], case
    else:
        raise AssertionError(f"unknown error type in vector: {err}")


def test_key_sort_vectors() -> None:
    v = load_json("bip-0327/vectors/key_sort_vectors.json")
    pubkeys = fromhex_all(v["pubkeys"])
    before = list(pubkeys)
    assert musig2.key_sort(pubkeys) == fromhex_all(v["sorted_pubkeys"])
    assert pubkeys == before  # the caller's list is not sorted in place


def test_key_agg_vectors() -> None:
    v = load_json("bip-0327/vectors/key_agg_vectors.json")
    X = fromhex_all(v["pubkeys"])
    T = fromhex_all(v["tweaks"])
    ran = 0
    for case in v["valid_test_cases"]:
        ctx = musig2.key_agg([X[i] for i in case["key_indices"]])
        assert musig2.get_xonly_pk(ctx) == bytes.fromhex(case["expected"])
        ran += 1
    for case in v["error_test_cases"]:
        pubkeys = [X[i] for i in case["key_indices"]]
        tweaks = [T[i] for i in case["tweak_indices"]]

        def run() -> None:
            ctx = musig2.key_agg(pubkeys)
            for t, x in zip(tweaks, case["is_xonly"]):
                ctx = musig2.apply_tweak(ctx, t, x)

        expect_error(case, run)
        ran += 1
    assert ran == 9


def test_nonce_gen_vectors() -> None:
    v = load_json("bip-0327/vectors/nonce_gen_vectors.json")
    ran = 0

    def opt(h: Optional[str]) -> Optional[bytes]:
        return None if h is None else bytes.fromhex(h)

    for case in v["test_cases"]:
        secnonce, pubnonce = musig2.nonce_gen_internal(
            bytes.fromhex(case["rand_"]),
            opt(case["sk"]),
            bytes.fromhex(case["pk"]),
            opt(case["aggpk"]),
            opt(case["msg"]),
            opt(case["extra_in"]),
        )
        expected = bytes.fromhex(case["expected_secnonce"])
        assert bytes(secnonce._data) == expected
        assert pubnonce == bytes.fromhex(case["expected_pubnonce"])
        ran += 1
    assert ran == 4


def test_nonce_agg_vectors() -> None:
    v = load_json("bip-0327/vectors/nonce_agg_vectors.json")
    pnonces = fromhex_all(v["pnonces"])
    ran = 0
    for case in v["valid_test_cases"]:
        agg = musig2.nonce_agg([pnonces[i] for i in case["pnonce_indices"]])
        assert agg == bytes.fromhex(case["expected"])
        ran += 1
    for case in v["error_test_cases"]:
        expect_error(case, lambda: musig2.nonce_agg([pnonces[i] for i in case["pnonce_indices"]]))
        ran += 1
    assert ran == 5


def test_sign_verify_vectors() -> None:
    v = load_json("bip-0327/vectors/sign_verify_vectors.json")
    sk = bytes.fromhex(v["sk"])
    X = fromhex_all(v["pubkeys"])
    secnonces = fromhex_all(v["secnonces"])
    pnonces = fromhex_all(v["pnonces"])
    aggnonces = fromhex_all(v["aggnonces"])
    msgs = fromhex_all(v["msgs"])
    assert musig2.individual_pk(sk) == X[0]
    ran = 0
    for case in v["valid_test_cases"]:
        pubkeys = [X[i] for i in case["key_indices"]]
        pubnonces = [pnonces[i] for i in case["nonce_indices"]]
        aggnonce = aggnonces[case["aggnonce_index"]]
        assert musig2.nonce_agg(pubnonces) == aggnonce
        msg = msgs[case["msg_index"]]
        i = case["signer_index"]
        expected = bytes.fromhex(case["expected"])
        ctx = SessionContext(aggnonce, tuple(pubkeys), (), (), msg)
        secnonce = SecNonce(secnonces[0])
        assert musig2.sign(secnonce, sk, ctx) == expected
        # Single use: the same secret nonce object refuses to sign again.
        with pytest.raises(ValueError):
            musig2.sign(secnonce, sk, ctx)
        assert musig2.partial_sig_verify(expected, pubnonces, pubkeys, [], [], msg, i)
        ran += 1
    for case in v["sign_error_test_cases"]:
        pubkeys = [X[i] for i in case["key_indices"]]
        aggnonce = aggnonces[case["aggnonce_index"]]
        msg = msgs[case["msg_index"]]
        secnonce = SecNonce(secnonces[case["secnonce_index"]])
        ctx = SessionContext(aggnonce, tuple(pubkeys), (), (), msg)
        expect_error(case, lambda: musig2.sign(secnonce, sk, ctx))
        ran += 1
    for case in v["verify_fail_test_cases"]:
        sig = bytes.fromhex(case["sig"])
        pubkeys = [X[i] for i in case["key_indices"]]
        pubnonces = [pnonces[i] for i in case["nonce_indices"]]
        msg = msgs[case["msg_index"]]
        assert not musig2.partial_sig_verify(sig, pubnonces, pubkeys, [], [], msg, case["signer_index"])
        ran += 1
    for case in v["verify_error_test_cases"]:
        sig = bytes.fromhex(case["sig"])
        pubkeys = [X[i] for i in case["key_indices"]]
        pubnonces = [pnonces[i] for i in case["nonce_indices"]]
        msg = msgs[case["msg_index"]]
        expect_error(
            case,
            lambda: musig2.partial_sig_verify(sig, pubnonces, pubkeys, [], [], msg, case["signer_index"]),
        )
        ran += 1
    assert ran == 6 + 6 + 3 + 2


def test_tweak_vectors() -> None:
    v = load_json("bip-0327/vectors/tweak_vectors.json")
    sk = bytes.fromhex(v["sk"])
    X = fromhex_all(v["pubkeys"])
    secnonce_bytes = bytes.fromhex(v["secnonce"])
    pnonces = fromhex_all(v["pnonces"])
    aggnonce = bytes.fromhex(v["aggnonce"])
    tweaks = fromhex_all(v["tweaks"])
    msg = bytes.fromhex(v["msg"])
    assert musig2.nonce_agg(pnonces[:3]) == aggnonce
    ran = 0
    for case in v["valid_test_cases"]:
        pubkeys = [X[i] for i in case["key_indices"]]
        pubnonces = [pnonces[i] for i in case["nonce_indices"]]
        tw = [tweaks[i] for i in case["tweak_indices"]]
        is_xonly = case["is_xonly"]
        expected = bytes.fromhex(case["expected"])
        ctx = SessionContext(aggnonce, tuple(pubkeys), tuple(tw), tuple(is_xonly), msg)
        assert musig2.sign(SecNonce(secnonce_bytes), sk, ctx) == expected
        assert musig2.partial_sig_verify(expected, pubnonces, pubkeys, tw, is_xonly, msg, case["signer_index"])
        ran += 1
    for case in v["error_test_cases"]:
        pubkeys = [X[i] for i in case["key_indices"]]
        tw = [tweaks[i] for i in case["tweak_indices"]]
        ctx = SessionContext(aggnonce, tuple(pubkeys), tuple(tw), tuple(case["is_xonly"]), msg)
        expect_error(case, lambda: musig2.sign(SecNonce(secnonce_bytes), sk, ctx))
        ran += 1
    assert ran == 6


def test_det_sign_vectors() -> None:
    v = load_json("bip-0327/vectors/det_sign_vectors.json")
    sk = bytes.fromhex(v["sk"])
    X = fromhex_all(v["pubkeys"])
    msgs = fromhex_all(v["msgs"])
    ran = 0
    for case in v["valid_test_cases"]:
        pubkeys = [X[i] for i in case["key_indices"]]
        tw = fromhex_all(case["tweaks"])
        rand = None if case["rand"] is None else bytes.fromhex(case["rand"])
        msg = msgs[case["msg_index"]]
        aggothernonce = bytes.fromhex(case["aggothernonce"])
        pubnonce, psig = musig2.deterministic_sign(sk, aggothernonce, pubkeys, tw, case["is_xonly"], msg, rand)
        assert pubnonce.hex().upper() == case["expected"][0].upper()
        assert psig.hex().upper() == case["expected"][1].upper()
        pubnonces = [aggothernonce, pubnonce]
        aggnonce = musig2.nonce_agg(pubnonces)
        ctx = SessionContext(aggnonce, tuple(pubkeys), tuple(tw), tuple(case["is_xonly"]), msg)
        assert musig2.partial_sig_verify_internal(psig, pubnonce, pubkeys[case["signer_index"]], ctx)
        ran += 1
    for case in v["error_test_cases"]:
        pubkeys = [X[i] for i in case["key_indices"]]
        tw = fromhex_all(case["tweaks"])
        rand = None if case["rand"] is None else bytes.fromhex(case["rand"])
        msg = msgs[case["msg_index"]]
        aggothernonce = bytes.fromhex(case["aggothernonce"])
        expect_error(
            case,
            lambda: musig2.deterministic_sign(sk, aggothernonce, pubkeys, tw, case["is_xonly"], msg, rand),
        )
        ran += 1
    assert ran == 9


def test_sig_agg_vectors() -> None:
    v = load_json("bip-0327/vectors/sig_agg_vectors.json")
    X = fromhex_all(v["pubkeys"])
    pnonces = fromhex_all(v["pnonces"])
    tweaks = fromhex_all(v["tweaks"])
    psigs = fromhex_all(v["psigs"])
    msg = bytes.fromhex(v["msg"])
    ran = 0
    from coincurve import PublicKeyXOnly  # type: ignore[import-untyped]

    for case in v["valid_test_cases"]:
        pubnonces = [pnonces[i] for i in case["nonce_indices"]]
        aggnonce = musig2.nonce_agg(pubnonces)
        assert aggnonce == bytes.fromhex(case["aggnonce"])
        pubkeys = [X[i] for i in case["key_indices"]]
        tw = [tweaks[i] for i in case["tweak_indices"]]
        ctx = SessionContext(aggnonce, tuple(pubkeys), tuple(tw), tuple(case["is_xonly"]), msg)
        sig = musig2.partial_sig_agg([psigs[i] for i in case["psig_indices"]], ctx)
        assert sig == bytes.fromhex(case["expected"])
        keygen = musig2.key_agg(pubkeys)
        for t, x in zip(tw, case["is_xonly"]):
            keygen = musig2.apply_tweak(keygen, t, x)
        assert PublicKeyXOnly(musig2.get_xonly_pk(keygen)).verify(sig, msg)
        ran += 1
    for case in v["error_test_cases"]:
        pubnonces = [pnonces[i] for i in case["nonce_indices"]]
        aggnonce = musig2.nonce_agg(pubnonces)
        pubkeys = [X[i] for i in case["key_indices"]]
        tw = [tweaks[i] for i in case["tweak_indices"]]
        ctx = SessionContext(aggnonce, tuple(pubkeys), tuple(tw), tuple(case["is_xonly"]), msg)
        expect_error(case, lambda: musig2.partial_sig_agg([psigs[i] for i in case["psig_indices"]], ctx))
        ran += 1
    assert ran == 5


def test_bip328_vectors() -> None:
    v = load_json("bip-0328/vectors.json")
    ran = 0
    for case in v:
        ctx = musig2.key_agg(fromhex_all(case["keys"]))
        assert musig2.get_plain_pk(ctx).hex() == case["aggregate_pubkey"].lower()
        assert aggregate_xpub(ctx) == case["xpub"]
        ran += 1
    assert ran == 3
