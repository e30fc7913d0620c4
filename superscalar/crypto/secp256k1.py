"""secp256k1 group arithmetic on top of libsecp256k1 (through the `coincurve` module's cffi binding).

Points are `Point` objects wrapping libsecp256k1's opaque `secp256k1_pubkey`; the point at infinity is
`None` (libsecp256k1 cannot represent it), so every operation that can reach it returns
`Optional[Point]`. Scalars are Python ints in [0, n).

Constant-time operations (`Point.mul`, `point_mul_g`) are used wherever a secret scalar is involved.
`Point.mul_add_g` is variable-time and must only see public scalars (verification, key aggregation).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Optional, Sequence

from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

# SEC 2, secp256k1 domain parameters
P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
G_BYTES = bytes.fromhex("0279BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798")

_CTX = GLOBAL_CONTEXT.ctx
_COMPRESSED = lib.SECP256K1_EC_COMPRESSED


def _scalar_bytes(k: int) -> bytes:
    return k.to_bytes(32, "big")


class Point:
    """A point on secp256k1 other than infinity. Immutable."""

    __slots__ = ("_raw", "_ser")

    def __init__(self, raw: object) -> None:
        self._raw = raw
        self._ser: Optional[bytes] = None

    @classmethod
    def from_bytes(cls, data: bytes) -> "Point":
        """Parse a 33-byte compressed encoding (SEC1); raise ValueError if it is not a valid point."""
        if len(data) != 33 or data[0] not in (2, 3):
            raise ValueError("point must be 33 bytes starting with 02 or 03")
        raw = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_ec_pubkey_parse(_CTX, raw, data, 33):
            raise ValueError("not a point on secp256k1")
        pt = cls(raw)
        pt._ser = bytes(data)
        return pt

    @classmethod
    def lift_x(cls, x: bytes) -> "Point":
        """BIP-340 lift_x: the point with x-coordinate `x` and even y."""
        if len(x) != 32:
            raise ValueError("x-only key must be 32 bytes")
        return cls.from_bytes(b"\x02" + x)

    def to_bytes(self) -> bytes:
        """33-byte compressed encoding (BIP-327 cbytes)."""
        if self._ser is None:
            out = ffi.new("unsigned char[33]")
            outlen = ffi.new("size_t *", 33)
            lib.secp256k1_ec_pubkey_serialize(_CTX, out, outlen, self._raw, _COMPRESSED)
            self._ser = ffi.buffer(out)[:]
        return self._ser

    def xonly(self) -> bytes:
        """32-byte x coordinate (BIP-340 bytes(P))."""
        return self.to_bytes()[1:]

    def has_even_y(self) -> bool:
        return self.to_bytes()[0] == 2

    def negate(self) -> "Point":
        raw = ffi.new("secp256k1_pubkey *")
        ffi.memmove(raw, self._raw, ffi.sizeof("secp256k1_pubkey"))
        lib.secp256k1_ec_pubkey_negate(_CTX, raw)
        return Point(raw)

    def mul(self, k: int) -> Optional["Point"]:
        """k·self in constant time; None if k ≡ 0 (mod n)."""
        k %= N
        if k == 0:
            return None
        raw = ffi.new("secp256k1_pubkey *")
        ffi.memmove(raw, self._raw, ffi.sizeof("secp256k1_pubkey"))
        if not lib.secp256k1_ec_pubkey_tweak_mul(_CTX, raw, _scalar_bytes(k)):
            raise AssertionError("tweak_mul failed on a valid scalar")  # unreachable for 0 < k < n
        return Point(raw)

    def mul_add_g(self, a: int, b: int) -> Optional["Point"]:
        """a·self + b·G, variable time: public scalars only.

        libsecp256k1 exposes its double-scalar multiplication only through ECDSA public key
        recovery, Q = r⁻¹·(s·R − z·G) with R the point whose x coordinate is r. Taking R = self,
        s = a·r and z = −b·r gives Q = a·self + b·G in one multi-exponentiation.
        """
        a %= N
        b %= N
        if a == 0:
            return point_mul_g(b)
        x = int.from_bytes(self.xonly(), "big")
        recid = 0 if self.has_even_y() else 1
        if x >= N:  # x in [n, p): recovery encodes it as r = x - n with the overflow bit
            x -= N
            recid |= 2
        if x == 0:  # unreachable on secp256k1 (no point has x = 0 or x = n) but keep the recovery valid
            return point_sum([self.mul(a), point_mul_g(b)])
        s = a * x % N
        z = (-b * x) % N
        sig = ffi.new("secp256k1_ecdsa_recoverable_signature *")
        if not lib.secp256k1_ecdsa_recoverable_signature_parse_compact(
            _CTX, sig, _scalar_bytes(x) + _scalar_bytes(s), recid
        ):
            raise AssertionError("recoverable signature parse failed")
        raw = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_ecdsa_recover(_CTX, raw, sig, _scalar_bytes(z)):
            return None  # the result is the point at infinity
        return Point(raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and self.to_bytes() == other.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return f"Point({self.to_bytes().hex()})"


G = Point.from_bytes(G_BYTES)


def point_mul_g(k: int) -> Optional[Point]:
    """k·G in constant time; None if k ≡ 0 (mod n)."""
    k %= N
    if k == 0:
        return None
    raw = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_create(_CTX, raw, _scalar_bytes(k)):
        raise AssertionError("pubkey_create failed on a valid scalar")
    return Point(raw)


def point_mul_g_bytes(k: int) -> bytes:
    """The 33-byte compressed encoding of k·G (constant time), for 0 < k < n."""
    raw = ffi.new("secp256k1_pubkey *")
    if not 0 < k < N or not lib.secp256k1_ec_pubkey_create(_CTX, raw, _scalar_bytes(k)):
        raise ValueError("scalar must be in 1..n-1")
    out = ffi.new("unsigned char[33]")
    lib.secp256k1_ec_pubkey_serialize(_CTX, out, ffi.new("size_t *", 33), raw, _COMPRESSED)
    encoded: bytes = ffi.buffer(out)[:]
    return encoded


def point_sum(points: Iterable[Optional[Point]]) -> Optional[Point]:
    """The sum of `points` (None entries are infinity); None if the sum is infinity."""
    raws = [p._raw for p in points if p is not None]
    if not raws:
        return None
    if len(raws) == 1:
        return Point(raws[0])
    out = ffi.new("secp256k1_pubkey *")
    arr = ffi.new("secp256k1_pubkey *[]", raws)
    if not lib.secp256k1_ec_pubkey_combine(_CTX, out, arr, len(raws)):
        return None
    return Point(out)


def musig_key_agg_point(points: Sequence[Point]) -> Point:
    """BIP-327 KeyAgg's aggregate point Q = Σ aᵢ·Pᵢ of the keys `points` in their given order, by
    libsecp256k1's musig module (the same coefficients: hash of the key list and each key, 1 for
    the second distinct key). ValueError if there are none or Q is infinity."""
    if not points:
        raise ValueError("at least one public key is needed")
    cache = ffi.new("secp256k1_musig_keyagg_cache *")
    if not lib.secp256k1_musig_pubkey_agg(_CTX, ffi.NULL, cache, ffi.new("secp256k1_pubkey *[]", [p._raw for p in points]),
                                          len(points)):
        raise ValueError("aggregate key is infinity")
    raw = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_musig_pubkey_get(_CTX, raw, cache):
        raise AssertionError("musig_pubkey_get failed on a valid cache")
    return Point(raw)


def musig_pubnonce_parse(pubnonce: bytes) -> object:
    """A 66-byte BIP-327 public nonce (two compressed points) parsed by libsecp256k1's musig
    module, for `musig_nonce_agg`; ValueError if either point is invalid."""
    if len(pubnonce) != 66:
        raise ValueError("a public nonce is 66 bytes")
    parsed = ffi.new("secp256k1_musig_pubnonce *")
    if not lib.secp256k1_musig_pubnonce_parse(_CTX, parsed, pubnonce):
        raise ValueError("not a valid public nonce")
    return parsed


def musig_nonce_agg(parsed: Sequence[object]) -> bytes:
    """BIP-327 NonceAgg of parsed public nonces, by libsecp256k1's musig module: the 66-byte
    aggregate (a half that sums to infinity is 33 zero bytes, as BIP-327's cbytes_ext)."""
    if not parsed:
        raise ValueError("at least one public nonce is needed")
    agg = ffi.new("secp256k1_musig_aggnonce *")
    if not lib.secp256k1_musig_nonce_agg(_CTX, agg, ffi.new("secp256k1_musig_pubnonce *[]", list(parsed)), len(parsed)):
        raise AssertionError("nonce_agg failed on parsed nonces")
    out = ffi.new("unsigned char[66]")
    lib.secp256k1_musig_aggnonce_serialize(_CTX, out, agg)
    aggnonce: bytes = ffi.buffer(out)[:]
    return aggnonce


def tweak_add(point: Point, t: int) -> Optional[Point]:
    """point + t·G (variable time: public t only); None if the sum is infinity.

    Memoized per process by (point, t): a BIP-341 output key and the MuSig2 x-only tweak of the same
    aggregate (BIP-327 ApplyTweak) are this same sum, so each is computed once."""
    return _tweak_add(point, t % N)


@lru_cache(maxsize=8192)  # keyed by the point's encoding (Point hashes and compares by it)
def _tweak_add(point: Point, t: int) -> Optional[Point]:
    return point.mul_add_g(1, t)


def point_add(a: Optional[Point], b: Optional[Point]) -> Optional[Point]:
    return point_sum((a, b))


def point_neg(a: Optional[Point]) -> Optional[Point]:
    return None if a is None else a.negate()
