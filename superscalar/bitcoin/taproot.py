"""BIP-341 taproot: leaf/branch hashes, script trees, output key tweaking."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NewType, TypeAlias

from coincurve import PrivateKey

from ..crypto.secp256k1 import Point, tweak_add
from .encoding import ser_string
from .errors import BitcoinError
from .hashes import tagged_hash
from .script import p2tr_script

__all__ = [
    "ANNEX_TAG",
    "SECP256K1_ORDER",
    "TAPROOT_LEAF_TAPSCRIPT",
    "TapLeaf",
    "TapTree",
    "TaprootInfo",
    "XonlyPk",
    "tapbranch_hash",
    "tapleaf_hash",
    "taproot_construct",
    "taproot_output_key",
    "taproot_tweak",
    "tree_merkle_root",
    "tweak_seckey",
    "xonly_from_seckey",
]

XonlyPk = NewType("XonlyPk", bytes)
"""A 32-byte BIP-340 x-only public key."""

# BIP-342 "Specification": leaf version of tapscript.
TAPROOT_LEAF_TAPSCRIPT = 0xC0
# BIP-341 "Script validation rules": control block byte = leaf_version | parity.
TAPROOT_LEAF_MASK = 0xFE
# BIP-341 "Script validation rules": an annex starts with 0x50, so that value
# can never be a leaf version (its control block would look like an annex).
ANNEX_TAG = 0x50
# BIP-341 "Script validation rules": a control block has at most 128 path nodes.
TAPROOT_CONTROL_MAX_NODE_COUNT = 128
# secp256k1 group order n (SEC 2, section 2.4.1).
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@dataclass(frozen=True, slots=True)
class TapLeaf:
    """A script leaf of a taproot script tree."""

    script: bytes
    leaf_version: int = TAPROOT_LEAF_TAPSCRIPT

    def __post_init__(self) -> None:
        if not isinstance(self.script, bytes):
            raise BitcoinError("leaf script must be bytes")
        _check_leaf_version(self.leaf_version)

    @property
    def leaf_hash(self) -> bytes:
        """This leaf's TapLeaf tagged hash."""
        return tapleaf_hash(self.script, self.leaf_version)


TapTree: TypeAlias = "TapLeaf | tuple[TapTree, TapTree]"
"""A script tree: a leaf or a pair of subtrees (like the BIP-341 ``scriptTree``)."""


def _check_leaf_version(v: int) -> None:
    # BIP-341 "Script validation rules": leaf_version = c[0] & 0xfe, i.e. even.
    if not isinstance(v, int) or not 0 <= v <= 0xFF or v & ~TAPROOT_LEAF_MASK or v == ANNEX_TAG:
        raise BitcoinError(f"invalid leaf version: {v!r}")


def _check_xonly(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) != 32:
        raise BitcoinError("x-only key must be 32 bytes")


def tapleaf_hash(script: bytes, leaf_version: int = TAPROOT_LEAF_TAPSCRIPT) -> bytes:
    """BIP-341 "Constructing and spending Taproot outputs": hash_TapLeaf(v || compact_size(s) || s)."""
    _check_leaf_version(leaf_version)
    return tagged_hash("TapLeaf", bytes([leaf_version]) + ser_string(script))


def tapbranch_hash(a: bytes, b: bytes) -> bytes:
    """BIP-341: hash_TapBranch of two child hashes, in lexicographic order."""
    if len(a) != 32 or len(b) != 32:
        raise BitcoinError("branch children must be 32-byte hashes")
    return tagged_hash("TapBranch", min(a, b) + max(a, b))


def _walk(tree: TapTree, depth: int) -> tuple[list[tuple[TapLeaf, bytes]], bytes]:
    """BIP-341 ``taproot_tree_helper``: (leaf, merkle path) pairs and the subtree hash."""
    if depth > TAPROOT_CONTROL_MAX_NODE_COUNT:
        raise BitcoinError("script tree deeper than 128")
    if isinstance(tree, TapLeaf):
        return [(tree, b"")], tree.leaf_hash
    if not isinstance(tree, (tuple, list)) or len(tree) != 2:
        raise BitcoinError("tree node must be a TapLeaf or a pair of subtrees")
    left, left_h = _walk(tree[0], depth + 1)
    right, right_h = _walk(tree[1], depth + 1)
    paths = [(leaf, path + right_h) for leaf, path in left]
    paths += [(leaf, path + left_h) for leaf, path in right]
    return paths, tapbranch_hash(left_h, right_h)


def tree_merkle_root(tree: TapTree | None) -> bytes | None:
    """Merkle root of a script tree, or None for a key-path-only output."""
    return None if tree is None else _walk(tree, 0)[1]


def taproot_tweak(internal_key: bytes, merkle_root: bytes | None) -> bytes:
    """BIP-341 ``taproot_tweak_pubkey``: t = hash_TapTweak(p || merkle_root)."""
    _check_xonly(internal_key)
    if merkle_root is not None and len(merkle_root) != 32:
        raise BitcoinError("merkle root must be 32 bytes")
    t = tagged_hash("TapTweak", internal_key + (merkle_root or b""))
    if int.from_bytes(t, "big") >= SECP256K1_ORDER:
        raise BitcoinError("tweak out of range")
    return t


# A factory derives the same few thousand output keys many times (every client rebuilds its path):
# the tweak is a pure function of its arguments, so each is computed once per process.
@lru_cache(maxsize=8192)
def _tweak_point(internal_key: bytes, merkle_root: bytes | None) -> tuple[XonlyPk, int]:
    t = taproot_tweak(internal_key, merkle_root)
    try:
        P = Point.lift_x(internal_key)  # BIP-341: P = lift_x(p), even y
    except ValueError as exc:
        raise BitcoinError(f"invalid internal key: {exc}") from exc
    Q = tweak_add(P, int.from_bytes(t, "big"))  # BIP-341: Q = P + t·G
    if Q is None:
        raise BitcoinError("tweaked key is infinity")
    q = Q.to_bytes()
    return XonlyPk(q[1:]), q[0] & 1


def taproot_output_key(internal_key: bytes, tree: TapTree | None) -> tuple[XonlyPk, int]:
    """Output key ``Q`` (x-only) and its y parity for ``internal_key`` and ``tree``."""
    return _tweak_point(internal_key, tree_merkle_root(tree))


@dataclass(frozen=True, slots=True)
class TaprootInfo:
    """Everything needed to pay to and spend from a taproot output."""

    internal_key: XonlyPk
    output_key: XonlyPk
    parity: int
    merkle_root: bytes | None
    # (leaf, merkle path) pairs in depth-first, left-to-right tree order.
    leaves: tuple[tuple[TapLeaf, bytes], ...]

    @property
    def script_pubkey(self) -> bytes:
        """``OP_1 <output_key>``."""
        return p2tr_script(self.output_key)

    @property
    def tweak(self) -> bytes:
        """The TapTweak scalar."""
        return taproot_tweak(self.internal_key, self.merkle_root)

    def control_block(self, leaf: TapLeaf) -> bytes:
        """BIP-341 control block: (leaf_version | parity) || internal key || path."""
        for candidate, path in self.leaves:
            if candidate == leaf:
                return bytes([leaf.leaf_version | self.parity]) + self.internal_key + path
        raise BitcoinError("leaf not in script tree")

    def script_path_witness(self, leaf: TapLeaf, stack: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """Witness for a script-path spend: ``stack || script || control block``."""
        return (*stack, leaf.script, self.control_block(leaf))


def taproot_construct(internal_key: bytes, tree: TapTree | None = None) -> TaprootInfo:
    """BIP-341 ``taproot_output_script`` with per-leaf spending data."""
    _check_xonly(internal_key)
    if tree is None:
        leaves: list[tuple[TapLeaf, bytes]] = []
        root = None
    else:
        leaves, root = _walk(tree, 0)
    output_key, parity = _tweak_point(internal_key, root)
    return TaprootInfo(XonlyPk(internal_key), output_key, parity, root, tuple(leaves))


def _seckey_int(seckey: bytes) -> int:
    if not isinstance(seckey, bytes) or len(seckey) != 32:
        raise BitcoinError("secret key must be 32 bytes")
    d = int.from_bytes(seckey, "big")
    if not 0 < d < SECP256K1_ORDER:
        raise BitcoinError("secret key out of range")
    return d


def xonly_from_seckey(seckey: bytes) -> XonlyPk:
    """BIP-340 x-only public key of a secret key."""
    _seckey_int(seckey)
    return XonlyPk(PrivateKey(seckey).public_key.format(compressed=True)[1:])


def tweak_seckey(seckey: bytes, merkle_root: bytes | None) -> bytes:
    """BIP-341 ``taproot_tweak_seckey``: key-path signing key for the output key."""
    d = _seckey_int(seckey)
    pub = PrivateKey(seckey).public_key.format(compressed=True)
    if pub[0] & 1:
        d = SECP256K1_ORDER - d  # negate so that d*G has even y
    t = int.from_bytes(taproot_tweak(pub[1:], merkle_root), "big")
    out = (d + t) % SECP256K1_ORDER
    if out == 0:
        raise BitcoinError("tweaked key is zero")
    return out.to_bytes(32, "big")
