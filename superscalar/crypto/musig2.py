"""BIP-327 MuSig2: key aggregation, nonces, partial signatures and their aggregation.

Each public function is one algorithm of BIP-327, with the BIP's name in snake_case and the BIP's
argument order. Encodings follow the BIP: individual public keys are 33-byte compressed (`PlainPk`),
aggregate keys and signatures use BIP-340 x-only encodings (`XonlyPk`).

Errors:
- `ValueError` for bad arguments (wrong lengths, out-of-range tweaks, a reused secret nonce);
- `InvalidContributionError` when another signer's contribution (pubkey, pubnonce, psig) or the
  aggregate nonce is invalid; it names the signer index (or None for the aggregator) and what it sent.

Secret nonces are `SecNonce` objects: a bytearray that `sign` zeroes before it returns, so a second
`sign` with the same object raises. Nothing here serializes a secret nonce.

Session values and key aggregation depend only on public data and are memoized per distinct input, so
that N signers sharing one session in one process do the O(N) aggregation once, not N times.

The sums over many points (KeyAgg's Q, NonceAgg) are computed by libsecp256k1's musig module, which
implements the same BIP; the official vectors check both through this module.
"""

from __future__ import annotations

import secrets
from functools import lru_cache
from typing import Callable, NamedTuple, NewType, Optional, Sequence

from ..bitcoin.hashes import tagged_hash
from .secp256k1 import (N, G, Point, musig_key_agg_point, musig_nonce_agg, musig_pubnonce_parse, point_mul_g,
                        point_mul_g_bytes, point_sum, tweak_add)

PlainPk = NewType("PlainPk", bytes)  # 33-byte compressed public key
XonlyPk = NewType("XonlyPk", bytes)  # 32-byte BIP-340 public key

# BIP-327 "Nonce Generation" / "Signing": byte lengths of the encodings
PUBNONCE_SIZE = 66
SECNONCE_SIZE = 97
PSIG_SIZE = 32


class InvalidContributionError(Exception):
    """BIP-327: a contribution of signer `signer` (None: the aggregator) is invalid; `contrib` names it."""

    def __init__(self, signer: Optional[int], contrib: str) -> None:
        super().__init__(f"invalid {contrib} from signer {signer}")
        self.signer = signer
        self.contrib = contrib


class KeyGenContext(NamedTuple):
    """BIP-327 KeyGen Context: aggregate point Q, sign accumulator gacc, tweak accumulator tacc."""

    Q: Point
    gacc: int
    tacc: int


class KeyAggCache(NamedTuple):
    """KeyAgg's result as signing needs it, without the key list (what libsecp256k1's keyagg_cache
    holds): the aggregate point Q, the hash L of the key list and its second distinct key, from
    which any member's coefficient follows. Used in place of the list in a SessionContext, it
    cannot check that a key is a member: the signer must know its key is in the list."""

    Q: Point
    L: bytes
    pk2: bytes

    def coeff(self, pk: bytes) -> int:
        """BIP-327 KeyAggCoeff of member `pk`."""
        return _key_agg_coeff_internal(self.L, pk, self.pk2)


class SessionContext(NamedTuple):
    """BIP-327 Session Context (`pubkeys` may be a KeyAggCache of them)."""

    aggnonce: bytes
    pubkeys: tuple[PlainPk, ...] | KeyAggCache
    tweaks: tuple[bytes, ...]
    is_xonly: tuple[bool, ...]
    msg: bytes


class SecNonce:
    """A secret nonce (k1 || k2 || pk, 97 bytes). Single use: `sign` zeroes it.

    It cannot be pickled, copied into bytes by this module, or shown by repr.
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes | bytearray) -> None:
        if len(data) != SECNONCE_SIZE:
            raise ValueError("secnonce must be 97 bytes")
        self._data = bytearray(data)

    def _take(self) -> tuple[int, int, bytes]:
        """Return (k1, k2, pk) and destroy the nonce (BIP-327 Sign: "overwrite secnonce")."""
        k1 = int.from_bytes(self._data[0:32], "big")
        k2 = int.from_bytes(self._data[32:64], "big")
        pk = bytes(self._data[64:97])
        self._data[0:64] = bytes(64)
        return k1, k2, pk

    def __repr__(self) -> str:
        return "SecNonce(<secret>)"

    def __reduce__(self) -> str:
        raise TypeError("secret nonces cannot be serialized")


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _bytes32(x: int) -> bytes:
    return x.to_bytes(32, "big")


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


@lru_cache(maxsize=8192)
def _cpoint(x: bytes) -> Point:
    """BIP-327 cpoint: parse a 33-byte compressed point; ValueError if invalid.

    Memoized: a session parses each signer's key and nonces during aggregation and again to verify."""
    return Point.from_bytes(bytes(x))


def _cpoint_ext(x: bytes) -> Optional[Point]:
    """BIP-327 cpoint_ext: like cpoint, but 33 zero bytes are the point at infinity."""
    if x == bytes(33):
        return None
    return _cpoint(x)


# --- Key generation and aggregation (BIP-327 "Key Generation and Aggregation") ---


def individual_pk(seckey: bytes) -> PlainPk:
    """BIP-327 IndividualPubkey."""
    d = _int(seckey)
    if len(seckey) != 32 or not 0 < d < N:
        raise ValueError("The secret key must be an integer in the range 1..n-1.")
    P = point_mul_g(d)
    assert P is not None
    return PlainPk(P.to_bytes())


class Keypair:
    """A secret key with its public key, computed once (libsecp256k1's keypair): `sign` checks the
    nonce's key against it instead of multiplying again. It cannot be pickled or shown by repr."""

    __slots__ = ("seckey", "pubkey")

    def __init__(self, seckey: bytes) -> None:
        self.pubkey = individual_pk(seckey)  # validates the secret key
        self.seckey = bytes(seckey)

    def __repr__(self) -> str:
        return f"Keypair(<secret>, {self.pubkey.hex()})"

    def __reduce__(self) -> str:
        raise TypeError("key pairs cannot be serialized")


def key_sort(pubkeys: Sequence[PlainPk]) -> list[PlainPk]:
    """BIP-327 KeySort: a new list sorted lexicographically (the argument is left untouched)."""
    if set(map(len, pubkeys)) - {33}:
        raise ValueError("public keys must be 33 bytes")
    return sorted(pubkeys)


def _hash_keys(pubkeys: Sequence[PlainPk]) -> bytes:
    return tagged_hash("KeyAgg list", b"".join(pubkeys))


def _get_second_key(pubkeys: Sequence[PlainPk]) -> bytes:
    for pk in pubkeys[1:]:
        if pk != pubkeys[0]:
            return pk
    return bytes(33)


def _key_agg_coeff_internal(L: bytes, pk_: bytes, pk2: bytes) -> int:
    # BIP-327 KeyAggCoeffInternal: the second distinct key gets coefficient 1
    if pk_ == pk2:
        return 1
    return _int(tagged_hash("KeyAgg coefficient", L + pk_)) % N


def key_agg_coeff(pubkeys: Sequence[PlainPk], pk_: PlainPk) -> int:
    """BIP-327 KeyAggCoeff."""
    return _key_agg_coeff_internal(_hash_keys(pubkeys), pk_, _get_second_key(pubkeys))


def key_agg(pubkeys: Sequence[PlainPk]) -> KeyGenContext:
    """BIP-327 KeyAgg."""
    return _key_agg(tuple(pubkeys))[0]


@lru_cache(maxsize=4096)  # a factory of 1024 clients has 585 signer sets
def _key_agg(pubkeys: tuple[PlainPk, ...]) -> tuple[KeyGenContext, dict[bytes, int]]:
    """KeyAgg, plus every signer's KeyAggCoeff (kept so signing and verification need not rehash L)."""
    Q = _key_agg_point(pubkeys)
    L, pk2 = _hash_keys(pubkeys), _get_second_key(pubkeys)
    return KeyGenContext(Q, 1, 0), {pk: _key_agg_coeff_internal(L, pk, pk2) for pk in pubkeys}


@lru_cache(maxsize=4096)
def _key_agg_point(pubkeys: tuple[PlainPk, ...]) -> Point:
    """BIP-327 KeyAgg's Q = Σ KeyAggCoeff(pubkeys, pkᵢ)·cpoint(pkᵢ), in one call to libsecp256k1's
    musig module (which computes the same coefficients)."""
    if not pubkeys:
        raise ValueError("at least one public key is needed")
    points = []
    for i, pk in enumerate(pubkeys):
        try:
            points.append(_cpoint(pk))
        except ValueError:
            raise InvalidContributionError(i, "pubkey") from None
    try:
        return musig_key_agg_point(points)
    except ValueError:
        # Infinity happens only with negligible probability (BIP-327 KeyAgg)
        raise AssertionError("aggregate key is infinity") from None


def key_agg_cache(pubkeys: Sequence[PlainPk]) -> KeyAggCache:
    """KeyAgg of `pubkeys` kept as a KeyAggCache."""
    return _key_agg_cache(tuple(pubkeys))


@lru_cache(maxsize=4096)
def _key_agg_cache(pubkeys: tuple[PlainPk, ...]) -> KeyAggCache:
    return KeyAggCache(_key_agg_point(pubkeys), _hash_keys(pubkeys), _get_second_key(pubkeys))


def get_xonly_pk(keygen_ctx: KeyGenContext) -> XonlyPk:
    """BIP-327 GetXonlyPubkey."""
    return XonlyPk(keygen_ctx.Q.xonly())


def get_plain_pk(keygen_ctx: KeyGenContext) -> PlainPk:
    """BIP-327 GetPlainPubkey."""
    return PlainPk(keygen_ctx.Q.to_bytes())


def apply_tweak(keygen_ctx: KeyGenContext, tweak: bytes, is_xonly: bool) -> KeyGenContext:
    """BIP-327 ApplyTweak: plain (BIP-32 style) or x-only (BIP-341 style) tweak."""
    if len(tweak) != 32:
        raise ValueError("The tweak must be a 32-byte array.")
    Q, gacc, tacc = keygen_ctx
    g = N - 1 if is_xonly and not Q.has_even_y() else 1
    t = _int(tweak)
    if t >= N:
        raise ValueError("The tweak must be less than n.")
    Q_ = tweak_add(Q if g == 1 else Q.negate(), t)  # g·Q + t·G
    if Q_ is None:
        raise ValueError("The result of tweaking cannot be infinity.")
    return KeyGenContext(Q_, g * gacc % N, (t + g * tacc) % N)


def _key_agg_and_tweak(
    pubkeys: Sequence[PlainPk], tweaks: Sequence[bytes], is_xonly: Sequence[bool]
) -> KeyGenContext:
    if len(tweaks) != len(is_xonly):
        raise ValueError("The `tweaks` and `is_xonly` arrays must have the same length.")
    ctx = key_agg(pubkeys)
    for tweak, xonly in zip(tweaks, is_xonly):
        ctx = apply_tweak(ctx, tweak, xonly)
    return ctx


# --- Nonce generation and aggregation (BIP-327 "Nonce Generation", "Nonce Aggregation") ---


def _nonce_hash(
    rand: bytes, pk: bytes, aggpk: bytes, i: int, msg_prefixed: bytes, extra_in: bytes
) -> int:
    buf = (
        rand
        + len(pk).to_bytes(1, "big") + pk
        + len(aggpk).to_bytes(1, "big") + aggpk
        + msg_prefixed
        + len(extra_in).to_bytes(4, "big") + extra_in
        + i.to_bytes(1, "big")
    )
    return _int(tagged_hash("MuSig/nonce", buf))


def nonce_gen_internal(
    rand_: bytes,
    sk: Optional[bytes],
    pk: PlainPk,
    aggpk: Optional[XonlyPk],
    msg: Optional[bytes],
    extra_in: Optional[bytes],
) -> tuple[SecNonce, bytes]:
    """BIP-327 NonceGen with its randomness `rand_` passed in (for tests and vectors)."""
    if len(rand_) != 32:
        raise ValueError("rand_ must be 32 bytes")
    if len(pk) != 33:
        raise ValueError("The pubkey must be a 33-byte array.")
    if sk is not None and len(sk) != 32:
        raise ValueError("The optional byte array sk must have length 32.")
    if aggpk is not None and len(aggpk) != 32:
        raise ValueError("The optional byte array aggpk must have length 32.")
    rand = _xor(sk, tagged_hash("MuSig/aux", rand_)) if sk is not None else rand_
    aggpk_b = aggpk if aggpk is not None else b""
    if msg is None:
        msg_prefixed = b"\x00"
    else:
        msg_prefixed = b"\x01" + len(msg).to_bytes(8, "big") + msg
    extra = extra_in if extra_in is not None else b""
    k_1 = _nonce_hash(rand, pk, aggpk_b, 0, msg_prefixed, extra) % N
    k_2 = _nonce_hash(rand, pk, aggpk_b, 1, msg_prefixed, extra) % N
    # k_1 == 0 or k_2 == 0 happens with negligible probability (BIP-327 NonceGen)
    assert k_1 != 0 and k_2 != 0
    pubnonce = point_mul_g_bytes(k_1) + point_mul_g_bytes(k_2)
    return SecNonce(_bytes32(k_1) + _bytes32(k_2) + pk), pubnonce


def nonce_gen(
    sk: Optional[bytes],
    pk: PlainPk,
    aggpk: Optional[XonlyPk],
    msg: Optional[bytes],
    extra_in: Optional[bytes],
) -> tuple[SecNonce, bytes]:
    """BIP-327 NonceGen: fresh 32 random bytes from the OS. Returns (secnonce, pubnonce)."""
    return nonce_gen_internal(secrets.token_bytes(32), sk, pk, aggpk, msg, extra_in)


ParsedPubnonce = object  # a public nonce as libsecp256k1's musig module holds it


def parse_pubnonce(pubnonce: bytes) -> ParsedPubnonce:
    """A 66-byte public nonce checked and parsed once (BIP-327 NonceAgg's cpoint step), for
    `nonce_agg_parsed`; ValueError if either point is invalid."""
    return musig_pubnonce_parse(pubnonce)


def nonce_agg_parsed(parsed: Sequence[ParsedPubnonce]) -> bytes:
    """BIP-327 NonceAgg over parsed public nonces: the 66-byte aggregate nonce."""
    return musig_nonce_agg(parsed)


def nonce_agg(pubnonces: Sequence[bytes]) -> bytes:
    """BIP-327 NonceAgg: the 66-byte aggregate nonce."""
    parsed = []
    for i, pubnonce in enumerate(pubnonces):
        try:
            parsed.append(parse_pubnonce(pubnonce))
        except ValueError:
            raise InvalidContributionError(i, "pubnonce") from None
    return nonce_agg_parsed(parsed)


# --- Signing (BIP-327 "Session Context", "Signing", "Partial Signature Verification") ---


class SessionValues(NamedTuple):
    Q: Point
    gacc: int
    tacc: int
    b: int
    R: Point
    e: int


def get_session_values(session_ctx: SessionContext) -> SessionValues:
    """BIP-327 GetSessionValues."""
    return _session(session_ctx)[0]


Coefficients = Callable[[bytes], Optional[int]]  # a member's KeyAggCoeff; None for a non-member


def _session(session_ctx: SessionContext) -> tuple[SessionValues, Coefficients]:
    """The session values and every signer's key aggregation coefficient, computed once per session."""
    return _get_session_values(_normalized(session_ctx))


def _normalized(session_ctx: SessionContext) -> SessionContext:
    """The context with hashable fields (the memo's key): tuples and bytes."""
    aggnonce, pubkeys, tweaks, is_xonly, msg = session_ctx
    keys: tuple[PlainPk, ...] | KeyAggCache = (
        pubkeys if type(pubkeys) in (tuple, KeyAggCache) else tuple(pubkeys)  # type: ignore[arg-type]
    )
    if (type(aggnonce) is bytes and keys is pubkeys and type(tweaks) is tuple
            and type(is_xonly) is tuple and type(msg) is bytes):
        return session_ctx
    return SessionContext(bytes(aggnonce), keys, tuple(tweaks), tuple(is_xonly), bytes(msg))


@lru_cache(maxsize=256)
def _get_session_values(session_ctx: SessionContext) -> tuple[SessionValues, Coefficients]:
    aggnonce, pubkeys, tweaks, is_xonly, msg = session_ctx
    coeffs: Coefficients
    if isinstance(pubkeys, KeyAggCache):
        keygen, coeffs = KeyGenContext(pubkeys.Q, 1, 0), pubkeys.coeff
    else:
        keygen, coeffs = _key_agg(pubkeys)[0], _key_agg(pubkeys)[1].get
    if len(tweaks) != len(is_xonly):
        raise ValueError("The `tweaks` and `is_xonly` arrays must have the same length.")
    for tweak, xonly in zip(tweaks, is_xonly):
        keygen = apply_tweak(keygen, tweak, xonly)
    Q, gacc, tacc = keygen
    b = _int(tagged_hash("MuSig/noncecoef", aggnonce + Q.xonly() + msg)) % N
    try:
        if len(aggnonce) != PUBNONCE_SIZE:
            raise ValueError("bad length")
        R_1 = _cpoint_ext(aggnonce[0:33])
        R_2 = _cpoint_ext(aggnonce[33:66])
    except ValueError:
        # Nonce aggregator sent invalid nonces
        raise InvalidContributionError(None, "aggnonce") from None
    R_ = point_sum((R_1, None if R_2 is None else R_2.mul_add_g(b, 0)))
    R = G if R_ is None else R_
    e = _int(tagged_hash("BIP0340/challenge", R.xonly() + Q.xonly() + msg)) % N
    return SessionValues(Q, gacc, tacc, b, R, e), coeffs


def get_session_key_agg_coeff(session_ctx: SessionContext, P: Point) -> int:
    """BIP-327 GetSessionKeyAggCoeff."""
    return _session_key_agg_coeff(_session(session_ctx)[1], P)


def _session_key_agg_coeff(coeffs: Coefficients, P: Point) -> int:
    a = coeffs(P.to_bytes())
    if a is None:
        raise ValueError("The signer's pubkey must be included in the list of pubkeys.")
    return a


def sign(secnonce: SecNonce, sk: bytes | Keypair, session_ctx: SessionContext) -> bytes:
    """BIP-327 Sign: the 32-byte partial signature. Consumes `secnonce`. `sk` is the secret key, or
    a Keypair holding it with its public key.

    Like libsecp256k1's musig module, this does not run the BIP's optional self-verification of the
    result: the aggregate signature is verified by the coordinator and by every signer that relies
    on it, and a bad partial signature is then found with `partial_sig_verify_internal`.
    """
    if not isinstance(secnonce, SecNonce):
        raise ValueError("secnonce must be a SecNonce")
    # Read and overwrite the secret nonce first: whatever happens next, it is never used again.
    k_1_, k_2_, secnonce_pk = secnonce._take()
    sv, coeffs = _session(session_ctx)
    if not 0 < k_1_ < N:
        raise ValueError("first secnonce value is out of range.")
    if not 0 < k_2_ < N:
        raise ValueError("second secnonce value is out of range.")
    k_1 = k_1_ if sv.R.has_even_y() else N - k_1_
    k_2 = k_2_ if sv.R.has_even_y() else N - k_2_
    if isinstance(sk, Keypair):
        d_, pk = _int(sk.seckey), sk.pubkey
    else:
        d_ = _int(sk)
        if len(sk) != 32 or not 0 < d_ < N:
            raise ValueError("secret key value is out of range.")
        P = point_mul_g(d_)
        assert P is not None
        pk = PlainPk(P.to_bytes())
    # BIP-327 Sign: fail unless the secret key's public key is the one the nonce was made for.
    if pk != secnonce_pk:
        raise ValueError("Public key does not match nonce_gen argument")
    a = coeffs(pk)
    if a is None:
        raise ValueError("The signer's pubkey must be included in the list of pubkeys.")
    g = 1 if sv.Q.has_even_y() else N - 1
    d = g * sv.gacc * d_ % N
    return _bytes32((k_1 + sv.b * k_2 + sv.e * a * d) % N)


def partial_sig_verify(
    psig: bytes,
    pubnonces: Sequence[bytes],
    pubkeys: Sequence[PlainPk],
    tweaks: Sequence[bytes],
    is_xonly: Sequence[bool],
    msg: bytes,
    i: int,
) -> bool:
    """BIP-327 PartialSigVerify: does signer i's partial signature verify?"""
    if len(pubnonces) != len(pubkeys):
        raise ValueError("The `pubnonces` and `pubkeys` arrays must have the same length.")
    if len(tweaks) != len(is_xonly):
        raise ValueError("The `tweaks` and `is_xonly` arrays must have the same length.")
    aggnonce = nonce_agg(pubnonces)
    session_ctx = SessionContext(aggnonce, tuple(pubkeys), tuple(tweaks), tuple(is_xonly), msg)
    return partial_sig_verify_internal(psig, pubnonces[i], pubkeys[i], session_ctx)


def partial_sig_verify_internal(
    psig: bytes, pubnonce: bytes, pk: PlainPk | bytes, session_ctx: SessionContext
) -> bool:
    """BIP-327 PartialSigVerifyInternal. Raises InvalidContributionError(None, …) for a bad
    pubnonce or pubkey encoding; returns False for a signature that does not verify."""
    sv, coeffs = _session(session_ctx)
    return _partial_sig_verify_internal(psig, pubnonce, pk, sv, coeffs)


def _partial_sig_verify_internal(
    psig: bytes, pubnonce: bytes, pk: bytes, sv: SessionValues, coeffs: Coefficients
) -> bool:
    if len(psig) != PSIG_SIZE:
        return False
    s = _int(psig)
    if s >= N:
        return False
    if len(pubnonce) != PUBNONCE_SIZE:
        raise InvalidContributionError(None, "pubnonce")
    try:
        R_s1 = _cpoint(pubnonce[0:33])
        R_s2 = _cpoint(pubnonce[33:66])
    except ValueError:
        raise InvalidContributionError(None, "pubnonce") from None
    try:
        P = _cpoint(pk)
    except ValueError:
        raise InvalidContributionError(None, "pubkey") from None
    a = _session_key_agg_coeff(coeffs, P)
    g = 1 if sv.Q.has_even_y() else N - 1
    g_ = g * sv.gacc % N
    # s·G == Re_s + e·a·g_·P  ⟺  s·G − e·a·g_·P == ±(R_s1 + b·R_s2)
    lhs = P.mul_add_g(-sv.e * a * g_, s)
    Re_s_ = point_sum((R_s1, R_s2.mul_add_g(sv.b, 0)))
    Re_s = Re_s_ if sv.R.has_even_y() or Re_s_ is None else Re_s_.negate()
    return lhs == Re_s


def partial_sig_agg(psigs: Sequence[bytes], session_ctx: SessionContext) -> bytes:
    """BIP-327 PartialSigAgg: the 64-byte BIP-340 signature."""
    sv = get_session_values(session_ctx)
    s = 0
    for i, psig in enumerate(psigs):
        s_i = _int(psig)
        if len(psig) != PSIG_SIZE or s_i >= N:
            raise InvalidContributionError(i, "psig")
        s = (s + s_i) % N
    g = 1 if sv.Q.has_even_y() else N - 1
    s = (s + sv.e * g * sv.tacc) % N
    return sv.R.xonly() + _bytes32(s)


# --- Deterministic signing (BIP-327 "Deterministic and Stateless Signing for a Single Signer") ---


def _det_nonce_hash(sk_: bytes, aggothernonce: bytes, aggpk: bytes, msg: bytes, i: int) -> int:
    buf = sk_ + aggothernonce + aggpk + len(msg).to_bytes(8, "big") + msg + i.to_bytes(1, "big")
    return _int(tagged_hash("MuSig/deterministic/nonce", buf))


def deterministic_sign(
    sk: bytes,
    aggothernonce: bytes,
    pubkeys: Sequence[PlainPk],
    tweaks: Sequence[bytes],
    is_xonly: Sequence[bool],
    msg: bytes,
    rand: Optional[bytes],
) -> tuple[bytes, bytes]:
    """BIP-327 DeterministicSign: returns (pubnonce, psig) for the last signer to send its nonce."""
    sk_ = _xor(sk, tagged_hash("MuSig/aux", rand)) if rand is not None else sk
    aggpk = get_xonly_pk(_key_agg_and_tweak(pubkeys, tweaks, is_xonly))
    k_1 = _det_nonce_hash(sk_, aggothernonce, aggpk, msg, 0) % N
    k_2 = _det_nonce_hash(sk_, aggothernonce, aggpk, msg, 1) % N
    # k_1 == 0 or k_2 == 0 happens with negligible probability
    assert k_1 != 0 and k_2 != 0
    R_s1 = point_mul_g(k_1)
    R_s2 = point_mul_g(k_2)
    assert R_s1 is not None and R_s2 is not None
    pubnonce = R_s1.to_bytes() + R_s2.to_bytes()
    secnonce = SecNonce(_bytes32(k_1) + _bytes32(k_2) + individual_pk(sk))
    try:
        aggnonce = nonce_agg([pubnonce, aggothernonce])
    except InvalidContributionError:
        raise InvalidContributionError(None, "aggothernonce") from None
    session_ctx = SessionContext(aggnonce, tuple(pubkeys), tuple(tweaks), tuple(is_xonly), msg)
    return pubnonce, sign(secnonce, sk, session_ctx)
