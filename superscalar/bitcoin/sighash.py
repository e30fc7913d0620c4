"""Signature hashes: BIP-341/342 (taproot) and BIP-143 (segwit v0)."""

from __future__ import annotations

from collections.abc import Sequence

from .encoding import ser_string, ser_u32, ser_u64
from .errors import BitcoinError
from .hashes import hash256, sha256, tagged_hash
from .tx import Tx, TxOut

__all__ = [
    "SIGHASH_ALL",
    "SIGHASH_ANYONECANPAY",
    "SIGHASH_DEFAULT",
    "SIGHASH_NONE",
    "SIGHASH_SINGLE",
    "segwit_v0_sighash",
    "sha_amounts",
    "sha_outputs",
    "sha_prevouts",
    "sha_scriptpubkeys",
    "sha_sequences",
    "taproot_sighash",
    "taproot_sigmsg",
]

# BIP-341 "Common signature message": hash_type values.
SIGHASH_DEFAULT = 0x00
SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80
# BIP-341: the only valid hash_type values for taproot signatures.
TAPROOT_HASH_TYPES = frozenset({0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83})
# BIP-143 standard hash types accepted here (Core policy: IsDefinedHashtypeSignature).
SEGWIT_V0_HASH_TYPES = frozenset({0x01, 0x02, 0x03, 0x81, 0x82, 0x83})
# BIP-341 "Common signature message": the annex is a witness element starting 0x50.
ANNEX_TAG = 0x50
# BIP-342 "Signature validation": key_version 0x00 for BIP-340 keys.
KEY_VERSION_0 = 0x00
# BIP-341 "Signature validation rules": sighash epoch 0x00 prefixed to SigMsg.
SIGHASH_EPOCH = b"\x00"
# BIP-342: codesep_pos when no OP_CODESEPARATOR was executed.
CODESEP_NONE = 0xFFFFFFFF


# -- BIP-341 "Common signature message" precomputed hashes (single SHA256) ----


def sha_prevouts(tx: Tx) -> bytes:
    """SHA256 of the serialization of all input outpoints."""
    return sha256(b"".join(i.prevout.serialize() for i in tx.inputs))


def sha_amounts(prevouts: Sequence[TxOut]) -> bytes:
    """SHA256 of the serialization of all spent output amounts."""
    return sha256(b"".join(ser_u64(o.value) for o in prevouts))


def sha_scriptpubkeys(prevouts: Sequence[TxOut]) -> bytes:
    """SHA256 of all spent outputs' scriptPubKeys, each serialized as a string."""
    return sha256(b"".join(ser_string(o.script_pubkey) for o in prevouts))


def sha_sequences(tx: Tx) -> bytes:
    """SHA256 of the serialization of all input nSequence values."""
    return sha256(b"".join(ser_u32(i.sequence) for i in tx.inputs))


def sha_outputs(tx: Tx) -> bytes:
    """SHA256 of the serialization of all outputs."""
    return sha256(tx.outputs_bytes)


def taproot_sigmsg(
    tx: Tx,
    input_index: int,
    prevouts: Sequence[TxOut],
    hash_type: int,
    leaf_hash: bytes | None = None,
    annex: bytes | None = None,
    codesep_pos: int = CODESEP_NONE,
) -> bytes:
    """BIP-341 ``SigMsg(hash_type, ext_flag)`` plus the BIP-342 extension.

    ``leaf_hash`` selects a script-path spend (ext_flag 1); without it this is a
    key-path spend (ext_flag 0). The result excludes the 0x00 epoch byte.
    """
    if hash_type not in TAPROOT_HASH_TYPES:
        raise BitcoinError(f"invalid taproot hash_type: {hash_type:#x}")
    if not 0 <= input_index < len(tx.inputs):
        raise BitcoinError(f"input index {input_index} out of range")
    if len(prevouts) != len(tx.inputs):
        raise BitcoinError("need exactly one spent output per input")
    if annex is not None and (not annex or annex[0] != ANNEX_TAG):
        raise BitcoinError("annex must start with 0x50")
    if leaf_hash is not None and len(leaf_hash) != 32:
        raise BitcoinError("leaf hash must be 32 bytes")
    if not 0 <= codesep_pos <= 0xFFFFFFFF:
        raise BitcoinError("codesep_pos must be a uint32")
    out_type = hash_type & 3 or SIGHASH_ALL  # BIP-341: DEFAULT behaves as ALL
    anyonecanpay = bool(hash_type & SIGHASH_ANYONECANPAY)
    if out_type == SIGHASH_SINGLE and input_index >= len(tx.outputs):
        raise BitcoinError("SIGHASH_SINGLE without a matching output")
    ext_flag = 0 if leaf_hash is None else 1

    # Control: hash_type (1), nVersion (4), nLockTime (4).
    parts = [bytes([hash_type]), ser_u32(tx.version), ser_u32(tx.locktime)]
    # Transaction data: all-input commitments unless ANYONECANPAY.
    if not anyonecanpay:
        parts += [sha_prevouts(tx), sha_amounts(prevouts), sha_scriptpubkeys(prevouts), sha_sequences(tx)]
    if out_type not in (SIGHASH_NONE, SIGHASH_SINGLE):
        parts.append(sha_outputs(tx))
    # Data about this input: spend_type = ext_flag*2 + annex_present.
    parts.append(bytes([ext_flag * 2 + (annex is not None)]))
    spent = prevouts[input_index]
    if anyonecanpay:
        txin = tx.inputs[input_index]
        parts += [
            txin.prevout.serialize(),
            ser_u64(spent.value),
            ser_string(spent.script_pubkey),
            ser_u32(txin.sequence),
        ]
    else:
        parts.append(ser_u32(input_index))
    if annex is not None:
        parts.append(sha256(ser_string(annex)))
    # Data about this output.
    if out_type == SIGHASH_SINGLE:
        parts.append(sha256(tx.outputs[input_index].serialize()))
    # BIP-342 "Signature validation": ext = tapleaf_hash || key_version || codesep_pos.
    if leaf_hash is not None:
        parts += [leaf_hash, bytes([KEY_VERSION_0]), ser_u32(codesep_pos)]
    msg = b"".join(parts)

    # BIP-341: length is 174 - is_anyonecanpay*49 - is_none*32 + has_annex*32
    # (the 49 assumes a 35-byte serialized P2TR scriptPubKey), plus 37 for ext.
    expected = (
        174
        - 49 * anyonecanpay
        - 32 * (out_type == SIGHASH_NONE)
        + 32 * (annex is not None)
        + 37 * ext_flag
        + anyonecanpay * (len(ser_string(spent.script_pubkey)) - 35)
    )
    assert len(msg) == expected, (len(msg), expected)
    return msg


def taproot_sighash(
    tx: Tx,
    input_index: int,
    prevouts: Sequence[TxOut],
    hash_type: int,
    leaf_hash: bytes | None = None,
    annex: bytes | None = None,
    codesep_pos: int = CODESEP_NONE,
) -> bytes:
    """BIP-341 signature hash: hash_TapSighash(0x00 || SigMsg(...))."""
    if (hash_type == SIGHASH_DEFAULT and leaf_hash is None and annex is None and input_index == 0
            and len(tx.inputs) == 1 and len(prevouts) == 1):
        return _key_path_default_one_input(tx, prevouts[0])
    msg = taproot_sigmsg(tx, input_index, prevouts, hash_type, leaf_hash, annex, codesep_pos)
    return tagged_hash("TapSighash", SIGHASH_EPOCH + msg)


def _key_path_default_one_input(tx: Tx, spent: TxOut) -> bytes:
    """The signature hash of a key-path SIGHASH_DEFAULT spend of a one-input transaction (every
    transaction of a factory): the bytes of taproot_sigmsg for that case, written out in order."""
    txin, spk = tx.inputs[0], spent.script_pubkey
    msg = b"".join((
        SIGHASH_EPOCH, b"\x00",  # epoch; hash_type DEFAULT
        ser_u32(tx.version), ser_u32(tx.locktime),
        sha256(txin.prevout.serialize()),  # sha_prevouts
        sha256(ser_u64(spent.value)),  # sha_amounts
        sha256(ser_string(spk)),  # sha_scriptpubkeys
        sha256(ser_u32(txin.sequence)),  # sha_sequences
        sha256(tx.outputs_bytes),  # sha_outputs
        b"\x00",  # spend_type: key path, no annex
        b"\x00\x00\x00\x00",  # input_index 0
    ))
    return tagged_hash("TapSighash", msg)


def segwit_v0_sighash(
    tx: Tx, input_index: int, script_code: bytes, amount: int, hash_type: int
) -> bytes:
    """BIP-143 signature hash for P2WPKH/P2WSH inputs.

    ``script_code`` is the witness script for P2WSH, or the P2PKH script
    (see ``script.p2wpkh_script_code``) for P2WPKH; it is serialized with a
    length prefix here. SIGHASH_SINGLE without a matching output commits to
    a zero hashOutputs, as BIP-143 specifies.
    """
    if hash_type not in SEGWIT_V0_HASH_TYPES:
        raise BitcoinError(f"invalid segwit v0 hash_type: {hash_type:#x}")
    if not 0 <= input_index < len(tx.inputs):
        raise BitcoinError(f"input index {input_index} out of range")
    if not 0 <= amount <= 0xFFFFFFFFFFFFFFFF:
        raise BitcoinError("amount out of range")
    base = hash_type & 0x1F
    anyonecanpay = bool(hash_type & SIGHASH_ANYONECANPAY)
    zero = bytes(32)
    # BIP-143 "Specification" item 2: hashPrevouts.
    hash_prevouts = zero if anyonecanpay else hash256(b"".join(i.prevout.serialize() for i in tx.inputs))
    # Item 3: hashSequence, only for ALL without ANYONECANPAY.
    if anyonecanpay or base in (SIGHASH_NONE, SIGHASH_SINGLE):
        hash_sequence = zero
    else:
        hash_sequence = hash256(b"".join(ser_u32(i.sequence) for i in tx.inputs))
    # Item 8: hashOutputs.
    if base not in (SIGHASH_NONE, SIGHASH_SINGLE):
        hash_outputs = hash256(b"".join(o.serialize() for o in tx.outputs))
    elif base == SIGHASH_SINGLE and input_index < len(tx.outputs):
        hash_outputs = hash256(tx.outputs[input_index].serialize())
    else:
        hash_outputs = zero
    txin = tx.inputs[input_index]
    preimage = b"".join(
        (
            ser_u32(tx.version),
            hash_prevouts,
            hash_sequence,
            txin.prevout.serialize(),
            ser_string(script_code),
            ser_u64(amount),
            ser_u32(txin.sequence),
            hash_outputs,
            ser_u32(tx.locktime),
            ser_u32(hash_type),
        )
    )
    return hash256(preimage)
