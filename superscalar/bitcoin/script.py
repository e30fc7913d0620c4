"""Script opcodes, minimal pushes and standard output/leaf script builders."""

from __future__ import annotations

from .errors import BitcoinError
from .hashes import hash160, sha256

__all__ = [
    "OP_0", "OP_1", "OP_1NEGATE", "OP_2", "OP_16", "OP_CHECKLOCKTIMEVERIFY",
    "OP_CHECKMULTISIG", "OP_CHECKSEQUENCEVERIFY", "OP_CHECKSIG", "OP_CHECKSIGADD",
    "OP_DROP", "OP_DUP", "OP_EQUAL", "OP_EQUALVERIFY", "OP_HASH160", "OP_NUMEQUAL",
    "OP_PUSHDATA1", "OP_PUSHDATA2", "OP_PUSHDATA4", "OP_RETURN", "OP_VERIFY",
    "P2A_SCRIPT", "cltv_leaf_script", "csv_leaf_script", "funding_script_2of2",
    "op_n", "p2a_script", "p2pkh_script", "p2tr_script", "p2wpkh_script",
    "p2wpkh_script_code", "p2wsh_script", "push_data", "push_int", "script_num",
    "segwit_script", "witness_program",
]

# Opcode values from Bitcoin Core script/script.h.
OP_0 = 0x00
OP_PUSHDATA1 = 0x4C
OP_PUSHDATA2 = 0x4D
OP_PUSHDATA4 = 0x4E
OP_1NEGATE = 0x4F
OP_1 = 0x51
OP_2 = 0x52
OP_16 = 0x60
OP_VERIFY = 0x69
OP_RETURN = 0x6A
OP_DROP = 0x75
OP_DUP = 0x76
OP_EQUAL = 0x87
OP_EQUALVERIFY = 0x88
OP_NUMEQUAL = 0x9C
OP_HASH160 = 0xA9
OP_CHECKSIG = 0xAC
OP_CHECKMULTISIG = 0xAE
OP_CHECKLOCKTIMEVERIFY = 0xB1  # BIP-65
OP_CHECKSEQUENCEVERIFY = 0xB2  # BIP-112
OP_CHECKSIGADD = 0xBA  # BIP-342

# BIP-141 "Witness program": version byte + one push of 2..40 bytes.
MIN_WITNESS_PROGRAM = 2
MAX_WITNESS_PROGRAM = 40
# Bitcoin Core 28 policy/policy.h: pay-to-anchor output script, OP_1 <0x4e73>.
P2A_SCRIPT = bytes.fromhex("51024e73")
# BIP-65: CLTV operands are at most 5-byte script numbers (locktime is uint32).
_U32_MAX = 0xFFFFFFFF
# BIP-68 "Specification": block-based relative locktimes use the low 16 bits.
_SEQUENCE_LOCKTIME_MASK = 0x0000FFFF


def op_n(n: int) -> int:
    """Opcode for small integer ``n`` in 0..16 (OP_0, OP_1 .. OP_16)."""
    if not 0 <= n <= 16:
        raise BitcoinError(f"small int out of range: {n}")
    return OP_0 if n == 0 else OP_1 + n - 1


def script_num(n: int) -> bytes:
    """Minimal CScriptNum encoding (BIP-62 rule 4, "minimal number encoding")."""
    if n == 0:
        return b""
    neg = n < 0
    mag = -n if neg else n
    out = bytearray()
    while mag:
        out.append(mag & 0xFF)
        mag >>= 8
    # The sign lives in the top bit of the last byte; add a byte if it is taken.
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0x00)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def push_data(data: bytes) -> bytes:
    """Minimal push of ``data`` (BIP-62 rule 3, "minimal push")."""
    n = len(data)
    if n == 0:
        return bytes([OP_0])
    if n == 1 and 1 <= data[0] <= 16:
        return bytes([op_n(data[0])])
    if n == 1 and data[0] == 0x81:
        return bytes([OP_1NEGATE])
    if n < OP_PUSHDATA1:
        return bytes([n]) + data
    if n <= 0xFF:
        return bytes([OP_PUSHDATA1, n]) + data
    if n <= 0xFFFF:
        return bytes([OP_PUSHDATA2]) + n.to_bytes(2, "little") + data
    if n <= _U32_MAX:
        return bytes([OP_PUSHDATA4]) + n.to_bytes(4, "little") + data
    raise BitcoinError("push too large")


def push_int(n: int) -> bytes:
    """Push an integer as Core's ``CScript << int64`` does (OP_n for -1..16)."""
    if n == -1:
        return bytes([OP_1NEGATE])
    if 0 <= n <= 16:
        return bytes([op_n(n)])
    return push_data(script_num(n))


def _check_len(name: str, data: bytes, *lengths: int) -> None:
    if not isinstance(data, bytes) or len(data) not in lengths:
        raise BitcoinError(f"{name} must be bytes of length {' or '.join(map(str, lengths))}")


def _check_compressed(name: str, pubkey: bytes) -> None:
    _check_len(name, pubkey, 33)
    if pubkey[0] not in (2, 3):
        raise BitcoinError(f"{name} is not a compressed public key")


def segwit_script(version: int, program: bytes) -> bytes:
    """BIP-141 scriptPubKey for a witness program: ``OP_n <program>``."""
    if not MIN_WITNESS_PROGRAM <= len(program) <= MAX_WITNESS_PROGRAM:
        raise BitcoinError(f"witness program length {len(program)} out of range")
    return bytes([op_n(version), len(program)]) + program


def witness_program(script_pubkey: bytes) -> tuple[int, bytes] | None:
    """BIP-141 "Witness program": return ``(version, program)`` or None."""
    if not MIN_WITNESS_PROGRAM + 2 <= len(script_pubkey) <= MAX_WITNESS_PROGRAM + 2:
        return None
    op = script_pubkey[0]
    if op != OP_0 and not OP_1 <= op <= OP_16:
        return None
    if script_pubkey[1] + 2 != len(script_pubkey):
        return None
    return (0 if op == OP_0 else op - OP_1 + 1), script_pubkey[2:]


def is_native_segwit(script_pubkey: bytes) -> bool:
    """BIP-141: a spend of this output has an empty scriptSig (its signature is all witness), so
    signing cannot change the spending transaction's txid. P2SH-wrapped segwit is not native."""
    return witness_program(script_pubkey) is not None


def p2tr_script(xonly: bytes) -> bytes:
    """BIP-341 P2TR output: ``OP_1 <32-byte x-only key>``."""
    _check_len("x-only key", xonly, 32)
    return segwit_script(1, xonly)


def p2wpkh_script(pubkey_or_hash: bytes) -> bytes:
    """BIP-141 P2WPKH output ``OP_0 <hash160(pubkey)>`` from a 33-byte key or 20-byte hash."""
    return segwit_script(0, _pkh(pubkey_or_hash))


def p2wsh_script(witness_script: bytes) -> bytes:
    """BIP-141 P2WSH output: ``OP_0 <sha256(witness_script)>``."""
    return segwit_script(0, sha256(witness_script))


def p2pkh_script(pubkey_or_hash: bytes) -> bytes:
    """Legacy P2PKH: ``OP_DUP OP_HASH160 <hash> OP_EQUALVERIFY OP_CHECKSIG``."""
    h = _pkh(pubkey_or_hash)
    return bytes([OP_DUP, OP_HASH160, 20]) + h + bytes([OP_EQUALVERIFY, OP_CHECKSIG])


def p2wpkh_script_code(pubkey_or_hash: bytes) -> bytes:
    """BIP-143 "Specification" item 5: the scriptCode of a P2WPKH input is P2PKH."""
    return p2pkh_script(pubkey_or_hash)


def _pkh(pubkey_or_hash: bytes) -> bytes:
    _check_len("pubkey or hash", pubkey_or_hash, 20, 33)
    if len(pubkey_or_hash) == 20:
        return pubkey_or_hash
    _check_compressed("pubkey", pubkey_or_hash)
    return hash160(pubkey_or_hash)


def p2a_script() -> bytes:
    """Pay-to-anchor output script ``51024e73`` (Bitcoin Core 28 standardness)."""
    return P2A_SCRIPT


def cltv_leaf_script(locktime: int, xonly: bytes) -> bytes:
    """BIP-65/BIP-342 leaf: ``<t> OP_CHECKLOCKTIMEVERIFY OP_DROP <xonly> OP_CHECKSIG``."""
    if not 0 <= locktime <= _U32_MAX:
        raise BitcoinError(f"locktime out of range: {locktime}")
    _check_len("x-only key", xonly, 32)
    return (
        push_int(locktime)
        + bytes([OP_CHECKLOCKTIMEVERIFY, OP_DROP])
        + push_data(xonly)
        + bytes([OP_CHECKSIG])
    )


def csv_leaf_script(blocks: int, xonly: bytes) -> bytes:
    """BIP-112/BIP-342 leaf: ``<n> OP_CHECKSEQUENCEVERIFY OP_DROP <xonly> OP_CHECKSIG``.

    ``blocks`` is a BIP-68 block-based relative locktime (0..65535).
    """
    if not 0 <= blocks <= _SEQUENCE_LOCKTIME_MASK:
        raise BitcoinError(f"relative block count out of range: {blocks}")
    _check_len("x-only key", xonly, 32)
    return (
        push_int(blocks)
        + bytes([OP_CHECKSEQUENCEVERIFY, OP_DROP])
        + push_data(xonly)
        + bytes([OP_CHECKSIG])
    )


def funding_script_2of2(pubkey_a: bytes, pubkey_b: bytes) -> bytes:
    """BOLT-3 "Funding Transaction Output": ``2 <pk1> <pk2> 2 OP_CHECKMULTISIG``.

    The keys are compressed and sorted lexicographically (pk1 is the lesser).
    """
    _check_compressed("pubkey_a", pubkey_a)
    _check_compressed("pubkey_b", pubkey_b)
    pk1, pk2 = sorted((pubkey_a, pubkey_b))
    return (
        bytes([OP_2]) + push_data(pk1) + push_data(pk2) + bytes([OP_2, OP_CHECKMULTISIG])
    )
