"""The watchtower blob: a penalty transaction sealed so that its holder learns nothing about it (or
about the channel it guards) until the revoked commitment it spends is on chain.

The usual tower design (The Eye of Satoshi, BOLT 13 draft): the blob is found by the *locator*, the
first 16 bytes of the revoked commitment's txid, and opened with the key SHA-256(txid) under
ChaCha20-Poly1305 (RFC 8439). A key is used for one blob only (a txid names one commitment), so the
nonce is all zeros. The helper sees the locator and the sealed bytes; the full txid, and with it the
key, appears only when the commitment confirms. A blob that does not open under the txid whose
locator it was stored under is rejected by the tag: nobody can store a blob that makes a helper
publish something else.
"""

from __future__ import annotations

import hashlib
from typing import Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

LOCATOR_BYTES = 16
NONCE = bytes(12)  # one key per commitment txid: a fixed nonce is never reused under a key
TAG_BYTES = 16


def locator(commitment_txid: str) -> bytes:
    """The first half of the txid (as displayed: big-endian hex), which the helper indexes."""
    return bytes.fromhex(commitment_txid)[:LOCATOR_BYTES]


def _key(commitment_txid: str) -> bytes:
    return hashlib.sha256(bytes.fromhex(commitment_txid)).digest()


def seal(commitment_txid: str, penalty_tx: bytes) -> tuple[bytes, bytes]:
    """(locator, blob) of a penalty transaction that spends commitment `commitment_txid`."""
    return locator(commitment_txid), ChaCha20Poly1305(_key(commitment_txid)).encrypt(NONCE, penalty_tx, None)


def unseal(commitment_txid: str, blob: bytes) -> Optional[bytes]:
    """The penalty transaction in `blob`, or None if it was not sealed under this txid."""
    if len(blob) < TAG_BYTES:
        return None
    try:
        return ChaCha20Poly1305(_key(commitment_txid)).decrypt(NONCE, blob, None)
    except InvalidTag:
        return None
