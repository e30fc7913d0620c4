"""Property tests: MuSig2 sessions with random signers, messages and tweaks produce BIP-340 signatures
that libsecp256k1's verifier (through coincurve) accepts under the aggregate (tweaked) key."""

from __future__ import annotations

import pickle

import pytest
from coincurve import PublicKeyXOnly  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superscalar.crypto import musig2
from superscalar.crypto.musig2 import InvalidContributionError, SecNonce, SessionContext
from superscalar.crypto.secp256k1 import N, Point, point_mul_g, point_mul_g_bytes, point_sum, tweak_add

seckeys = st.integers(min_value=1, max_value=N - 1).map(lambda k: k.to_bytes(32, "big"))
tweak = st.tuples(st.integers(min_value=0, max_value=N - 1).map(lambda t: t.to_bytes(32, "big")), st.booleans())


def run_session(
    sks: list[bytes], msg: bytes, tweaks: list[tuple[bytes, bool]]
) -> tuple[bytes, bytes, list[bytes], list[bytes], SessionContext]:
    """Every signer's work; returns (aggregate x-only key, signature, psigs, pubnonces, session)."""
    pubkeys = [musig2.individual_pk(sk) for sk in sks]
    keygen = musig2.key_agg(pubkeys)
    for t, x in tweaks:
        keygen = musig2.apply_tweak(keygen, t, x)
    aggpk = musig2.get_xonly_pk(keygen)
    nonces = [musig2.nonce_gen(sk, pk, aggpk, msg, None) for sk, pk in zip(sks, pubkeys)]
    pubnonces = [pn for _, pn in nonces]
    ctx = SessionContext(
        musig2.nonce_agg(pubnonces), tuple(pubkeys), tuple(t for t, _ in tweaks), tuple(x for _, x in tweaks), msg
    )
    psigs = [musig2.sign(sn, sk, ctx) for (sn, _), sk in zip(nonces, sks)]
    for i, (psig, pn, pk) in enumerate(zip(psigs, pubnonces, pubkeys)):
        assert musig2.partial_sig_verify_internal(psig, pn, pk, ctx), f"signer {i}"
    return aggpk, musig2.partial_sig_agg(psigs, ctx), psigs, pubnonces, ctx


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sks=st.lists(seckeys, min_size=1, max_size=64),
    msg=st.binary(min_size=0, max_size=100),
    tweaks=st.lists(tweak, max_size=3),
)
def test_aggregate_signature_verifies_as_bip340(sks: list[bytes], msg: bytes, tweaks: list[tuple[bytes, bool]]) -> None:
    try:
        aggpk, sig, _, _, _ = run_session(sks, msg, tweaks)
    except ValueError as e:
        # A tweak that lands on infinity is the only legitimate refusal (negligible for random input).
        assert "infinity" in str(e)
        return
    assert PublicKeyXOnly(aggpk).verify(sig, msg)


@settings(max_examples=10, deadline=None)
@given(sks=st.lists(seckeys, min_size=2, max_size=8, unique=True), msg=st.binary(max_size=40), data=st.data())
def test_bad_partial_signature_names_the_culprit(sks: list[bytes], msg: bytes, data: st.DataObject) -> None:
    aggpk, sig, psigs, pubnonces, ctx = run_session(sks, msg, [])
    culprit = data.draw(st.integers(min_value=0, max_value=len(sks) - 1))
    bad = list(psigs)
    bad[culprit] = ((int.from_bytes(bad[culprit], "big") + 1) % N).to_bytes(32, "big")
    failing = [
        i for i, (ps, pn, pk) in enumerate(zip(bad, pubnonces, ctx.pubkeys))
        if not musig2.partial_sig_verify_internal(ps, pn, pk, ctx)
    ]
    assert failing == [culprit]
    assert not PublicKeyXOnly(aggpk).verify(musig2.partial_sig_agg(bad, ctx), msg)
    # An out-of-range partial signature is blamed on its signer at aggregation.
    bad[culprit] = N.to_bytes(32, "big")
    with pytest.raises(InvalidContributionError) as exc:
        musig2.partial_sig_agg(bad, ctx)
    assert exc.value.signer == culprit and exc.value.contrib == "psig"


def test_secret_nonce_is_single_use_and_never_serialized() -> None:
    sk = (7).to_bytes(32, "big")
    pk = musig2.individual_pk(sk)
    secnonce, pubnonce = musig2.nonce_gen(sk, pk, None, None, None)
    assert "secret" in repr(secnonce) and secnonce._data.hex() not in repr(secnonce)
    with pytest.raises(TypeError):
        pickle.dumps(secnonce)
    ctx = SessionContext(musig2.nonce_agg([pubnonce]), (pk,), (), (), b"msg")
    psig = musig2.sign(secnonce, sk, ctx)
    assert musig2.partial_sig_verify_internal(psig, pubnonce, pk, ctx)
    assert bytes(secnonce._data[:64]) == bytes(64)  # zeroed
    with pytest.raises(ValueError, match="out of range"):
        musig2.sign(secnonce, sk, ctx)
    # Even a failed signing attempt (wrong key) destroys the nonce.
    secnonce2, pubnonce2 = musig2.nonce_gen(sk, pk, None, None, None)
    other_sk = (8).to_bytes(32, "big")
    with pytest.raises(ValueError, match="does not match"):
        musig2.sign(secnonce2, other_sk, ctx)
    with pytest.raises(ValueError):
        musig2.sign(secnonce2, sk, ctx)
    with pytest.raises(ValueError):
        SecNonce(b"\x00" * 96)


def test_fresh_nonces_differ() -> None:
    sk = (9).to_bytes(32, "big")
    pk = musig2.individual_pk(sk)
    assert musig2.nonce_gen(sk, pk, None, None, None)[1] != musig2.nonce_gen(sk, pk, None, None, None)[1]


def test_invalid_pubkey_is_blamed_on_its_signer() -> None:
    good = [musig2.individual_pk((i + 1).to_bytes(32, "big")) for i in range(3)]
    bad = good[:2] + [b"\x02" + b"\xff" * 32]  # x ≥ p: not a point
    with pytest.raises(InvalidContributionError) as exc:
        musig2.key_agg(bad)
    assert exc.value.signer == 2 and exc.value.contrib == "pubkey"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sks=st.lists(seckeys, min_size=1, max_size=20, unique=True), msg=st.binary(max_size=40),
       tweaks=st.lists(tweak, max_size=2), rand=st.binary(min_size=32, max_size=32))
def test_key_agg_cache_session_equals_key_list_session(sks: list[bytes], msg: bytes,
                                                       tweaks: list[tuple[bytes, bool]], rand: bytes) -> None:
    """A session over KeyAggCache (no key list) gives every signer the same partial signature and
    the same session values as over the key list, and verifies the same partial signatures."""
    pubkeys = tuple(musig2.individual_pk(sk) for sk in sks)
    tw, xo = tuple(t for t, _ in tweaks), tuple(x for _, x in tweaks)
    try:
        aggpk = musig2.get_xonly_pk(musig2._key_agg_and_tweak(pubkeys, tw, xo))
    except ValueError:
        return  # a tweak landing on infinity
    nonces = [musig2.nonce_gen_internal(rand, sk, pk, aggpk, msg, None) for sk, pk in zip(sks, pubkeys)]
    again = [musig2.nonce_gen_internal(rand, sk, pk, aggpk, msg, None) for sk, pk in zip(sks, pubkeys)]
    aggnonce = musig2.nonce_agg([pn for _, pn in nonces])
    listed = SessionContext(aggnonce, pubkeys, tw, xo, msg)
    cached = SessionContext(aggnonce, musig2.key_agg_cache(pubkeys), tw, xo, msg)
    assert musig2.get_session_values(listed) == musig2.get_session_values(cached)
    for (sn, pn), (sn2, _), sk, pk in zip(nonces, again, sks, pubkeys):
        psig = musig2.sign(sn, sk, listed)
        assert musig2.sign(sn2, musig2.Keypair(sk), cached) == psig  # and a Keypair signs alike
        assert musig2.partial_sig_verify_internal(psig, pn, pk, cached)


def test_keypair_is_checked_against_the_nonce_and_never_serialized() -> None:
    sk, other = (1).to_bytes(32, "big"), (2).to_bytes(32, "big")
    pair = musig2.Keypair(sk)
    assert pair.pubkey == musig2.individual_pk(sk) and sk.hex() not in repr(pair)
    with pytest.raises(TypeError):
        pickle.dumps(pair)
    with pytest.raises(ValueError):
        musig2.Keypair(bytes(32))
    secnonce, pubnonce = musig2.nonce_gen_internal(bytes(32), sk, pair.pubkey, None, b"m", None)
    ctx = SessionContext(musig2.nonce_agg([pubnonce]), (pair.pubkey,), (), (), b"m")
    with pytest.raises(ValueError, match="does not match"):
        musig2.sign(secnonce, musig2.Keypair(other), ctx)


def _python_nonce_agg(pubnonces: list[bytes]) -> bytes:
    """BIP-327 NonceAgg spelled out with this package's point arithmetic (the reference for
    libsecp256k1's musig nonce aggregation, which the coordinator uses)."""
    halves = []
    for h in (0, 33):
        total = point_sum(Point.from_bytes(pn[h:h + 33]) for pn in pubnonces)
        halves.append(bytes(33) if total is None else total.to_bytes())
    return halves[0] + halves[1]


@given(st.lists(st.tuples(st.integers(1, N - 1), st.integers(1, N - 1)), min_size=1, max_size=8))
@settings(max_examples=40, deadline=None)
def test_nonce_agg_matches_point_sums(scalars: list[tuple[int, int]]) -> None:
    pubnonces = [point_mul_g_bytes(a) + point_mul_g_bytes(b) for a, b in scalars]
    assert musig2.nonce_agg(pubnonces) == _python_nonce_agg(pubnonces)


def test_nonce_agg_half_at_infinity_and_bad_nonce() -> None:
    R, S = point_mul_g_bytes(5), point_mul_g_bytes(9)
    minus_R = Point.from_bytes(R).negate().to_bytes()
    agg = musig2.nonce_agg([R + S, minus_R + S])
    assert agg[:33] == bytes(33) and agg == _python_nonce_agg([R + S, minus_R + S])
    with pytest.raises(InvalidContributionError) as e:
        musig2.nonce_agg([R + S, b"\x04" + bytes(32) + S])
    assert e.value.signer == 1
    with pytest.raises(ValueError):
        musig2.parse_pubnonce(R)


@given(st.integers(1, N - 1), st.integers(0, N - 1))
@settings(max_examples=30, deadline=None)
def test_point_helpers_agree(k: int, t: int) -> None:
    P = point_mul_g(k)
    assert P is not None and point_mul_g_bytes(k) == P.to_bytes()
    assert tweak_add(P, t) == P.mul_add_g(1, t)
    for bad in (0, N):
        with pytest.raises(ValueError):
            point_mul_g_bytes(bad)
