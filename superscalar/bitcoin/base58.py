"""Base58Check (as used by BIP-32 extended keys)."""

from __future__ import annotations

from .errors import DecodeError
from .hashes import hash256

B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58check_encode(payload: bytes) -> str:
    data = payload + hash256(payload)[:4]
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58_ALPHABET[r] + out
    pad = len(data) - len(data.lstrip(b"\x00"))
    return "1" * pad + out


def b58check_decode(text: str) -> bytes:
    n = 0
    for ch in text:
        digit = B58_ALPHABET.find(ch)
        if digit < 0:
            raise DecodeError(f"invalid base58 character {ch!r}")
        n = n * 58 + digit
    pad = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    data = b"\x00" * pad + body
    if len(data) < 4 or hash256(data[:-4])[:4] != data[-4:]:
        raise DecodeError("base58 checksum mismatch")
    return data[:-4]
