"""Bech32/bech32m (BIP-173, BIP-350) and segwit addresses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

from .errors import BitcoinError, DecodeError
from .script import segwit_script, witness_program

__all__ = [
    "HRP_BY_NETWORK",
    "AddressError",
    "Encoding",
    "address_to_script",
    "bech32_decode",
    "bech32_encode",
    "decode_segwit_address",
    "encode_segwit_address",
    "hrp_for",
    "segwit_address",
]

# BIP-173 "Bech32": the 32-character data alphabet.
CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(CHARSET)}
# BIP-173 "Checksum": bech32 polymod constant; BIP-350 "Bech32m": its constant.
BECH32_CONST = 1
BECH32M_CONST = 0x2BC830A3
# BIP-173 "Bech32": an address is at most 90 characters; HRP 1..83 characters.
MAX_BECH32_LENGTH = 90
MAX_HRP_LENGTH = 83
CHECKSUM_LENGTH = 6
# BIP-141 "Witness program": versions 0..16, programs 2..40 bytes; v0 is 20 or 32.
MAX_WITNESS_VERSION = 16
# HRPs per network (BIP-173 "Segwit address format"; regtest from Bitcoin Core chainparams).
HRP_BY_NETWORK = {
    "bitcoin": "bc",
    "mainnet": "bc",
    "main": "bc",
    "testnet": "tb",
    "testnet4": "tb",
    "signet": "tb",
    "regtest": "bcrt",
}


class AddressError(DecodeError):
    """An address could not be decoded or does not match the expected network."""


class Encoding(Enum):
    """Checksum variant."""

    BECH32 = BECH32_CONST
    BECH32M = BECH32M_CONST


def _polymod(values: Iterable[int]) -> int:
    """BIP-173 "Checksum": BCH code polymod over GF(32)."""
    gen = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= gen[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def bech32_encode(hrp: str, data: Sequence[int], encoding: Encoding) -> str:
    """Encode 5-bit ``data`` under ``hrp`` with the given checksum variant."""
    hrp_l = hrp.lower()
    if hrp != hrp_l and hrp != hrp.upper():
        raise BitcoinError("mixed-case HRP")
    if not _valid_hrp(hrp_l):
        raise BitcoinError("invalid HRP")
    if any(not 0 <= d < 32 for d in data):
        raise BitcoinError("data values must be 5-bit")
    poly = _polymod(_hrp_expand(hrp_l) + list(data) + [0] * CHECKSUM_LENGTH) ^ encoding.value
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(CHECKSUM_LENGTH)]
    out = hrp_l + "1" + "".join(CHARSET[d] for d in [*data, *checksum])
    if len(out) > MAX_BECH32_LENGTH:
        raise BitcoinError("bech32 string too long")
    return out


def _valid_hrp(hrp: str) -> bool:
    return 1 <= len(hrp) <= MAX_HRP_LENGTH and all(33 <= ord(c) <= 126 for c in hrp)


def bech32_decode(bech: str) -> tuple[str, list[int], Encoding]:
    """Decode a bech32/bech32m string into (lower-case hrp, 5-bit data, variant)."""
    if not isinstance(bech, str):
        raise AddressError("address must be a str")
    # BIP-173 "Bech32": printable US-ASCII only, and never mixed case.
    if any(not 33 <= ord(c) <= 126 for c in bech):
        raise AddressError("invalid character")
    if bech.lower() != bech and bech.upper() != bech:
        raise AddressError("mixed case")
    if len(bech) > MAX_BECH32_LENGTH:
        raise AddressError("too long")
    bech = bech.lower()
    pos = bech.rfind("1")
    if pos < 1 or pos + CHECKSUM_LENGTH + 1 > len(bech):
        raise AddressError("missing separator, empty HRP or short checksum")
    hrp = bech[:pos]
    if not _valid_hrp(hrp):
        raise AddressError("invalid HRP")
    try:
        data = [_CHARSET_REV[c] for c in bech[pos + 1 :]]
    except KeyError as exc:
        raise AddressError("invalid data character") from exc
    const = _polymod(_hrp_expand(hrp) + data)
    for enc in Encoding:
        if const == enc.value:
            return hrp, data[:-CHECKSUM_LENGTH], enc
    raise AddressError("invalid checksum")


def _convertbits(data: Iterable[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    """General power-of-2 base conversion (BIP-173 reference ``convertbits``)."""
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value >> frombits:
            raise AddressError("value out of range")
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits or ((acc << (tobits - bits)) & maxv):
        # BIP-173 "Segwit address format": at most 4 bits of zero padding.
        raise AddressError("invalid padding")
    return out


def _check_program(version: int, program: bytes) -> None:
    if not 0 <= version <= MAX_WITNESS_VERSION:
        raise AddressError(f"invalid witness version {version}")
    if not 2 <= len(program) <= 40:
        raise AddressError(f"invalid witness program length {len(program)}")
    if version == 0 and len(program) not in (20, 32):
        raise AddressError("v0 witness program must be 20 or 32 bytes")


def decode_segwit_address(hrp: str, addr: str) -> tuple[int, bytes]:
    """Decode a segwit address for ``hrp`` into (witness version, program)."""
    got_hrp, data, enc = bech32_decode(addr)
    if got_hrp != hrp.lower():
        raise AddressError(f"HRP mismatch: expected {hrp!r}, got {got_hrp!r}")
    if not data:
        raise AddressError("empty data")
    version = data[0]
    program = bytes(_convertbits(data[1:], 5, 8, False))
    _check_program(version, program)
    # BIP-350 "Addresses for segregated witness outputs": v0 bech32, v1+ bech32m.
    if (version == 0) != (enc is Encoding.BECH32):
        raise AddressError("wrong checksum variant for witness version")
    return version, program


def encode_segwit_address(hrp: str, version: int, program: bytes) -> str:
    """Encode a segwit address (bech32 for v0, bech32m for v1+)."""
    try:
        _check_program(version, program)
    except AddressError as exc:
        raise BitcoinError(str(exc)) from exc
    enc = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    return bech32_encode(hrp, [version, *_convertbits(program, 8, 5, True)], enc)


def hrp_for(hrp_or_network: str) -> str:
    """Map a network name ("bitcoin", "regtest", ...) or raw HRP to an HRP."""
    return HRP_BY_NETWORK.get(hrp_or_network, hrp_or_network)


def segwit_address(hrp_or_network: str, script_pubkey: bytes) -> str:
    """Address for a witness-program ``script_pubkey`` on the given network."""
    wp = witness_program(script_pubkey)
    if wp is None:
        raise BitcoinError("script_pubkey is not a witness program")
    return encode_segwit_address(hrp_for(hrp_or_network), *wp)


def address_to_script(address: str, network: str) -> bytes:
    """scriptPubKey of a segwit ``address`` valid for ``network`` (name or HRP)."""
    version, program = decode_segwit_address(hrp_for(network), address)
    return segwit_script(version, program)
