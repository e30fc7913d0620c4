"""A client's encrypted backup, as its helpers keep it: ChaCha20-Poly1305 (RFC 8439) under a key only
its node can derive (lightningd's `makesecret`, from its `hsm_secret`), a random 12-byte nonce in front,
and the factory id as associated data, so a helper can neither read a backup nor pass one factory's off
as another's: a blob that does not open under the key and the id is a helper's lie, and says so."""

from __future__ import annotations

import os
from typing import Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

KEY_LABEL = "superscalar/backup/v1"  # the makesecret label of the key
NONCE_BYTES = 12


def seal_backup(key: bytes, factory_id: bytes, plaintext: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, factory_id)


def open_backup(key: bytes, factory_id: bytes, blob: bytes) -> Optional[bytes]:
    """The plaintext, or None when `blob` was not sealed by this key for this factory."""
    if len(blob) < NONCE_BYTES + 16:
        return None
    try:
        return ChaCha20Poly1305(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], factory_id)
    except InvalidTag:
        return None
