"""BIP-328: a BIP-32 extended public key for a MuSig2 aggregate key, so descriptors can derive from it."""

from __future__ import annotations

from ..bitcoin.base58 import b58check_encode
from .musig2 import KeyGenContext, get_plain_pk

# BIP-328 "Specification": the fixed chain code, SHA256("MuSig2MuSig2MuSig2")
BIP328_CHAINCODE = bytes.fromhex("868087ca02a6f974c4598924c36b57762d32cb45717167e300622c7167e38965")
# BIP-32 "Serialization format": version bytes of mainnet and testnet xpubs
XPUB_VERSION_MAINNET = bytes.fromhex("0488b21e")
XPUB_VERSION_TESTNET = bytes.fromhex("043587cf")


def aggregate_xpub(keygen_ctx: KeyGenContext, version: bytes = XPUB_VERSION_MAINNET) -> str:
    """The depth-0 xpub whose key is the (untweaked) aggregate public key and chain code BIP-328's."""
    if len(version) != 4:
        raise ValueError("xpub version must be 4 bytes")
    # depth 0, parent fingerprint 0, child number 0
    payload = version + b"\x00" + bytes(4) + bytes(4) + BIP328_CHAINCODE + get_plain_pk(keygen_ctx)
    return b58check_encode(payload)
