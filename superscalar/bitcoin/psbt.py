"""Minimal BIP-174 (version 0) partially signed bitcoin transactions.

Only the fields this project needs are interpreted (unsigned tx, witness UTXO,
final scriptSig / scriptWitness); every other key-value pair is preserved raw.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from .encoding import ByteReader, ser_string, ser_string_vector
from .errors import BitcoinError, DecodeError
from .tx import Tx, TxOut

__all__ = ["PSBT_MAGIC", "Psbt", "PsbtInput", "PsbtOutput", "RawPair"]

# BIP-174 "Specification": magic bytes "psbt" followed by separator 0xff.
PSBT_MAGIC = b"psbt\xff"
# BIP-174: a zero-length key terminates each map.
PSBT_SEPARATOR = b"\x00"
# BIP-174 global types.
PSBT_GLOBAL_UNSIGNED_TX = 0x00
PSBT_GLOBAL_VERSION = 0xFB
# BIP-174 per-input types.
PSBT_IN_WITNESS_UTXO = 0x01
PSBT_IN_FINAL_SCRIPTSIG = 0x07
PSBT_IN_FINAL_SCRIPTWITNESS = 0x08

RawPair = tuple[bytes, bytes]
"""A raw (key, value) pair; the key includes its leading key-type CompactSize."""

_INPUT_KNOWN = frozenset({PSBT_IN_WITNESS_UTXO, PSBT_IN_FINAL_SCRIPTSIG, PSBT_IN_FINAL_SCRIPTWITNESS})
_GLOBAL_KNOWN = frozenset({PSBT_GLOBAL_UNSIGNED_TX})
_OUTPUT_KNOWN: frozenset[int] = frozenset()


def _key_type(key: bytes) -> int:
    """BIP-174: a key starts with its type as a CompactSize."""
    r = ByteReader(key)
    return r.read_compact_size(max_value=0xFFFFFFFFFFFFFFFF)


def _check_unknown(pairs: tuple[RawPair, ...], known: frozenset[int]) -> None:
    seen: set[bytes] = set()
    for pair in pairs:
        if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(x, bytes) for x in pair)):
            raise BitcoinError("unknown entries must be (bytes, bytes) pairs")
        key = pair[0]
        if not key:
            raise BitcoinError("empty key")
        if _key_type(key) in known:
            raise BitcoinError(f"key type {key[0]:#x} is not unknown")
        if key in seen:
            raise BitcoinError("duplicate key")
        seen.add(key)


def _ser_pair(key: bytes, value: bytes) -> bytes:
    return ser_string(key) + ser_string(value)


def _ser_map(pairs: Sequence[RawPair]) -> bytes:
    return b"".join(_ser_pair(k, v) for k, v in pairs) + PSBT_SEPARATOR


def _read_map(r: ByteReader) -> list[RawPair]:
    """Read key-value pairs up to the separator; keys must be unique (BIP-174)."""
    pairs: list[RawPair] = []
    seen: set[bytes] = set()
    while True:
        key = r.read_bytes()
        if not key:
            return pairs
        if key in seen:
            raise DecodeError(f"duplicate key {key.hex()}")
        seen.add(key)
        pairs.append((key, r.read_bytes()))


def _single_byte_key(key: bytes) -> None:
    if len(key) != 1:
        raise DecodeError(f"key type {key[0]:#x} must not carry key data")


@dataclass(frozen=True, slots=True)
class PsbtInput:
    """Per-input PSBT map."""

    witness_utxo: TxOut | None = None
    final_script_sig: bytes | None = None
    final_script_witness: tuple[bytes, ...] | None = None
    unknown: tuple[RawPair, ...] = ()

    def __post_init__(self) -> None:
        if self.witness_utxo is not None and not isinstance(self.witness_utxo, TxOut):
            raise BitcoinError("witness_utxo must be a TxOut")
        if self.final_script_sig is not None and not isinstance(self.final_script_sig, bytes):
            raise BitcoinError("final_script_sig must be bytes")
        if self.final_script_witness is not None:
            object.__setattr__(self, "final_script_witness", tuple(self.final_script_witness))
            if not all(isinstance(x, bytes) for x in self.final_script_witness or ()):
                raise BitcoinError("final_script_witness items must be bytes")
        object.__setattr__(self, "unknown", tuple(self.unknown))
        _check_unknown(self.unknown, _INPUT_KNOWN)

    @property
    def is_final(self) -> bool:
        """True if a final scriptSig or scriptWitness is present."""
        return self.final_script_sig is not None or self.final_script_witness is not None

    def _pairs(self) -> list[RawPair]:
        pairs: list[RawPair] = []
        if self.witness_utxo is not None:
            pairs.append((bytes([PSBT_IN_WITNESS_UTXO]), self.witness_utxo.serialize()))
        if self.final_script_sig is not None:
            pairs.append((bytes([PSBT_IN_FINAL_SCRIPTSIG]), self.final_script_sig))
        if self.final_script_witness is not None:
            pairs.append((bytes([PSBT_IN_FINAL_SCRIPTWITNESS]), ser_string_vector(self.final_script_witness)))
        return pairs + list(self.unknown)

    @classmethod
    def _from_pairs(cls, pairs: list[RawPair]) -> PsbtInput:
        witness_utxo: TxOut | None = None
        final_script_sig: bytes | None = None
        final_script_witness: tuple[bytes, ...] | None = None
        unknown: list[RawPair] = []
        for key, value in pairs:
            kt = _key_type(key)
            if kt == PSBT_IN_WITNESS_UTXO:
                _single_byte_key(key)
                witness_utxo = TxOut.deserialize(value)
            elif kt == PSBT_IN_FINAL_SCRIPTSIG:
                _single_byte_key(key)
                final_script_sig = value
            elif kt == PSBT_IN_FINAL_SCRIPTWITNESS:
                _single_byte_key(key)
                r = ByteReader(value)
                final_script_witness = r.read_bytes_vector()
                r.expect_end()
            else:
                unknown.append((key, value))
        return cls(witness_utxo, final_script_sig, final_script_witness, tuple(unknown))


@dataclass(frozen=True, slots=True)
class PsbtOutput:
    """Per-output PSBT map (all pairs preserved raw)."""

    unknown: tuple[RawPair, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "unknown", tuple(self.unknown))
        _check_unknown(self.unknown, _OUTPUT_KNOWN)


@dataclass(frozen=True, slots=True)
class Psbt:
    """A BIP-174 version 0 PSBT."""

    tx: Tx
    inputs: tuple[PsbtInput, ...]
    outputs: tuple[PsbtOutput, ...]
    unknown: tuple[RawPair, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.tx, Tx):
            raise BitcoinError("tx must be a Tx")
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "unknown", tuple(self.unknown))
        # BIP-174 PSBT_GLOBAL_UNSIGNED_TX: scriptSigs and witnesses must be empty.
        if any(i.script_sig or i.witness for i in self.tx.inputs):
            raise BitcoinError("unsigned tx must have empty scriptSigs and witnesses")
        # BIP-174: one input map per tx input and one output map per tx output.
        if len(self.inputs) != len(self.tx.inputs) or len(self.outputs) != len(self.tx.outputs):
            raise BitcoinError("map counts do not match the unsigned tx")
        if not all(isinstance(i, PsbtInput) for i in self.inputs):
            raise BitcoinError("inputs must be PsbtInput")
        if not all(isinstance(o, PsbtOutput) for o in self.outputs):
            raise BitcoinError("outputs must be PsbtOutput")
        _check_unknown(self.unknown, _GLOBAL_KNOWN)
        # BIP-174 PSBT_GLOBAL_VERSION: absent or 0 for version 0 PSBTs.
        for key, value in self.unknown:
            if key == bytes([PSBT_GLOBAL_VERSION]) and value != bytes(4):
                raise BitcoinError("only PSBT version 0 is supported")

    @classmethod
    def from_tx(cls, tx: Tx) -> Psbt:
        """Empty PSBT for an unsigned ``tx``."""
        return cls(tx, tuple(PsbtInput() for _ in tx.inputs), tuple(PsbtOutput() for _ in tx.outputs))

    def serialize(self) -> bytes:
        """BIP-174 binary serialization."""
        glob = [(bytes([PSBT_GLOBAL_UNSIGNED_TX]), self.tx.serialize_without_witness()), *self.unknown]
        return b"".join(
            (
                PSBT_MAGIC,
                _ser_map(glob),
                *(_ser_map(i._pairs()) for i in self.inputs),
                *(_ser_map(o.unknown) for o in self.outputs),
            )
        )

    @classmethod
    def deserialize(cls, data: bytes) -> Psbt:
        """Strictly parse a BIP-174 v0 PSBT; any problem raises DecodeError."""
        r = ByteReader(data)
        if r.read(len(PSBT_MAGIC)) != PSBT_MAGIC:
            raise DecodeError("bad PSBT magic")
        try:
            tx: Tx | None = None
            glob_unknown: list[RawPair] = []
            for key, value in _read_map(r):
                if _key_type(key) == PSBT_GLOBAL_UNSIGNED_TX:
                    _single_byte_key(key)
                    tx = Tx.deserialize(value, allow_witness=False)
                else:
                    glob_unknown.append((key, value))
            if tx is None:
                raise DecodeError("missing unsigned transaction")
            inputs = tuple(PsbtInput._from_pairs(_read_map(r)) for _ in tx.inputs)
            outputs = tuple(PsbtOutput(tuple(_read_map(r))) for _ in tx.outputs)
            r.expect_end()
            return cls(tx, inputs, outputs, tuple(glob_unknown))
        except DecodeError:
            raise
        except BitcoinError as exc:
            raise DecodeError(str(exc)) from exc

    def to_base64(self) -> str:
        """Base64 of :meth:`serialize` (the usual RPC encoding)."""
        return base64.b64encode(self.serialize()).decode("ascii")

    @classmethod
    def from_base64(cls, text: str) -> Psbt:
        """Parse a base64 PSBT; malformed base64 raises DecodeError."""
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise DecodeError("invalid base64") from exc
        return cls.deserialize(data)

    def with_input(self, index: int, psbt_input: PsbtInput) -> Psbt:
        """Copy with input map ``index`` replaced."""
        if not 0 <= index < len(self.inputs):
            raise BitcoinError(f"no input {index}")
        inputs = self.inputs[:index] + (psbt_input,) + self.inputs[index + 1 :]
        return dataclasses.replace(self, inputs=inputs)

    def extract_tx(self) -> Tx:
        """BIP-174 "Transaction Extractor": apply final scriptSigs/witnesses."""
        new_inputs = []
        for n, (txin, pin) in enumerate(zip(self.tx.inputs, self.inputs, strict=True)):
            if not pin.is_final:
                raise BitcoinError(f"input {n} is not finalized")
            new_inputs.append(
                dataclasses.replace(
                    txin,
                    script_sig=pin.final_script_sig or b"",
                    witness=pin.final_script_witness or (),
                )
            )
        return dataclasses.replace(self.tx, inputs=tuple(new_inputs))
