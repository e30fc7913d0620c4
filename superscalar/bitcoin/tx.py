"""Transactions: legacy and BIP-144 segwit serialization, ids and weight."""

from __future__ import annotations

import dataclasses
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NewType, overload

from ..crypto.memo import once

from .encoding import (
    ByteReader,
    decode_all,
    ser_compact_size,
    ser_string,
    ser_string_vector,
    ser_u32,
)
from .errors import BitcoinError, DecodeError
from .hashes import hash256

__all__ = [
    "COIN",
    "MAX_MONEY",
    "SEQUENCE_FINAL",
    "WITNESS_SCALE_FACTOR",
    "OutPoint",
    "Tx",
    "TxIn",
    "TxOut",
    "Txid",
]

# Bitcoin Core amount.h: satoshis per bitcoin.
COIN = 100_000_000
# Bitcoin Core amount.h MAX_MONEY: no amount may exceed 21 million BTC.
MAX_MONEY = 21_000_000 * COIN
# BIP-68 / Core: nSequence value that disables relative locktime and RBF signalling.
SEQUENCE_FINAL = 0xFFFFFFFF
# BIP-141 "Transaction size calculations": weight = base * 3 + total.
WITNESS_SCALE_FACTOR = 4
# BIP-144 "Serialization": marker byte and flag byte of the extended format.
SEGWIT_MARKER = 0x00
SEGWIT_FLAG = 0x01
# Minimum serialized sizes, used to bound element counts before allocating.
_MIN_TXIN_SIZE = 32 + 4 + 1 + 4
_MIN_TXOUT_SIZE = 8 + 1

_U32_MAX = 0xFFFFFFFF

Txid = NewType("Txid", bytes)
"""A 32-byte transaction id in internal (little-endian, serialization) byte order."""


def _check_u32(name: str, n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= _U32_MAX:
        raise BitcoinError(f"{name} must be a uint32, got {n!r}")


def _check_bytes(name: str, b: object) -> None:
    if not isinstance(b, bytes):
        raise BitcoinError(f"{name} must be bytes, got {type(b).__name__}")


@dataclass(frozen=True, slots=True)
class OutPoint:
    """Reference to a transaction output: ``txid`` in internal byte order, ``vout``."""

    txid: bytes
    vout: int

    def __post_init__(self) -> None:
        _check_bytes("txid", self.txid)
        if len(self.txid) != 32:
            raise BitcoinError(f"txid must be 32 bytes, got {len(self.txid)}")
        _check_u32("vout", self.vout)

    def __reduce__(self) -> tuple[type[OutPoint], tuple[bytes, int]]:
        return OutPoint, (self.txid, self.vout)  # pickled by its fields, not dataclass state

    @classmethod
    def from_hex(cls, txid_hex: str, vout: int) -> OutPoint:
        """Build from a txid in display (RPC, big-endian) hex order."""
        try:
            raw = bytes.fromhex(txid_hex)
        except ValueError as exc:
            raise BitcoinError(f"invalid txid hex: {txid_hex!r}") from exc
        return cls(raw[::-1], vout)

    @property
    def txid_hex(self) -> str:
        """The txid in display (RPC) order."""
        return self.txid[::-1].hex()

    def serialize(self) -> bytes:
        """Serialize as ``txid || vout`` (36 bytes)."""
        return self.txid + ser_u32(self.vout)

    @classmethod
    def read(cls, r: ByteReader) -> OutPoint:
        """Consume an outpoint from ``r``."""
        return cls(r.read(32), r.read_u32())

    @classmethod
    def deserialize(cls, data: bytes) -> OutPoint:
        """Parse exactly one outpoint."""
        return decode_all(cls.read, data)


@dataclass(frozen=True, slots=True)
class TxIn:
    """Transaction input. ``witness`` is its BIP-141 witness stack (may be empty)."""

    prevout: OutPoint
    script_sig: bytes = b""
    sequence: int = SEQUENCE_FINAL
    witness: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.prevout, OutPoint):
            raise BitcoinError("prevout must be an OutPoint")
        _check_bytes("script_sig", self.script_sig)
        _check_u32("sequence", self.sequence)
        if not isinstance(self.witness, tuple):
            object.__setattr__(self, "witness", tuple(self.witness))
        for item in self.witness:
            _check_bytes("witness item", item)

    def __reduce__(self) -> tuple[type[TxIn], tuple[OutPoint, bytes, int, tuple[bytes, ...]]]:
        return TxIn, (self.prevout, self.script_sig, self.sequence, self.witness)

    def serialize(self) -> bytes:
        """Serialize without the witness (witnesses live at the end of the tx)."""
        return self.prevout.serialize() + ser_string(self.script_sig) + ser_u32(self.sequence)

    @classmethod
    def read(cls, r: ByteReader) -> TxIn:
        """Consume an input (without witness) from ``r``."""
        prevout = OutPoint.read(r)
        script_sig = r.read_bytes()
        return cls(prevout, script_sig, r.read_u32())


@dataclass(frozen=True, slots=True)
class TxOut:
    """Transaction output: ``value`` in satoshis and its ``script_pubkey``."""

    value: int
    script_pubkey: bytes

    def __post_init__(self) -> None:
        # Core consensus/amount.h MoneyRange: 0 <= value <= MAX_MONEY.
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise BitcoinError("value must be an int")
        if not 0 <= self.value <= MAX_MONEY:
            raise BitcoinError(f"value out of range: {self.value}")
        _check_bytes("script_pubkey", self.script_pubkey)

    def __reduce__(self) -> tuple[type[TxOut], tuple[int, bytes]]:
        return TxOut, (self.value, self.script_pubkey)

    def serialize(self) -> bytes:
        """Serialize as ``value (u64) || script_pubkey``."""
        # value was range-checked on construction
        return self.value.to_bytes(8, "little") + ser_compact_size(len(self.script_pubkey)) + self.script_pubkey

    @classmethod
    def read(cls, r: ByteReader) -> TxOut:
        """Consume an output from ``r``."""
        value = r.read_u64()
        return cls(value, r.read_bytes())

    @classmethod
    def deserialize(cls, data: bytes) -> TxOut:
        """Parse exactly one output."""
        return decode_all(cls.read, data)


Run = tuple[int, int, int]  # (index of its first output, byte offset of it, bytes per output)


def _scan_runs(data: bytes, base: int, count: int) -> tuple[list[Run], array[int]] | None:
    """Runs of consecutive outputs with the same one-byte script length, and every value, for the
    `count` outputs from `base` to the end of `data`; None unless they fit exactly (the strict
    reader then decides). A run is found with strided slices, its values gathered into an array
    eight strided byte slices at a time: no Python loop per output."""
    runs: list[Run] = []
    values = array("Q")
    pos, index, end = base, 0, len(data)
    while index < count:
        if pos + 9 > end or data[pos + 8] >= 0xFD:
            return None
        n = data[pos + 8]
        stride = 9 + n
        lengths = data[pos + 8 : end : stride][: count - index]
        k = len(lengths) - len(lengths.lstrip(bytes([n])))  # outputs in a row with this script length
        if pos + k * stride > end:
            k = (end - pos) // stride
            if k == 0:
                return None
        gathered = bytearray(8 * k)
        for b in range(8):
            gathered[b::8] = data[pos + b : pos + k * stride : stride]
        values.frombytes(gathered)
        runs.append((index, pos - base, stride))
        pos += k * stride
        index += k
    if pos != end:
        return None
    if sys.byteorder != "little":  # serialized values are little-endian
        values.byteswap()
    return runs, values


def _scan_outputs(r: ByteReader, count: int) -> tuple[list[Run], array[int]]:
    """The strict, general reader (any CompactSize script length): one run per output; DecodeError
    on malformed bytes."""
    runs: list[Run] = []
    values = array("Q")
    base = r._pos
    try:
        for index in range(count):
            start = r._pos
            values.append(TxOut.read(r).value)
            runs.append((index, start - base, r._pos - start))
    except BitcoinError as e:
        raise DecodeError(str(e)) from None
    if r.remaining:
        raise DecodeError(f"{r.remaining} trailing bytes after the outputs")
    return runs, values


class OutputVector(Sequence[TxOut]):
    """A transaction's outputs kept as their consensus bytes and read one at a time.

    Built from a CompactSize-counted output vector, checked strictly once (DecodeError on
    truncation, trailing bytes, non-canonical sizes or values outside MoneyRange); the values are
    kept for sums and dust checks, and an output is parsed only when it is read. A transaction paying
    a thousand parties then holds one bytes object, not a thousand TxOut. Equal to any sequence of
    the same outputs.
    """

    __slots__ = ("raw", "values", "_runs", "_starts")

    def __init__(self, vector: bytes) -> None:
        r = ByteReader(vector)
        count = r.read_count(_MIN_TXOUT_SIZE)
        data, base = r._data, r._pos
        runs, values = _scan_runs(data, base, count) or _scan_outputs(r, count)
        # Core consensus/amount.h MoneyRange, for every output at once.
        if values and max(values) > MAX_MONEY:
            raise DecodeError(f"value out of range: {max(values)}")
        self.raw: bytes = data[base:]  # the outputs without their count (BIP-341's sha_outputs input)
        self.values: array[int] = values
        self._runs = runs
        self._starts = [run[0] for run in runs]

    def _at(self, i: int) -> TxOut:
        first, offset, stride = self._runs[bisect_right(self._starts, i) - 1]
        pos = offset + (i - first) * stride
        if stride < 9 + 0xFD:  # a one-byte script length: the script is the rest of the stride
            return TxOut(self.values[i], self.raw[pos + 9 : pos + stride])
        r = ByteReader(self.raw)
        r._pos = pos
        return TxOut.read(r)

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, i: int) -> TxOut: ...

    @overload
    def __getitem__(self, i: slice) -> tuple[TxOut, ...]: ...

    def __getitem__(self, i: int | slice) -> TxOut | tuple[TxOut, ...]:
        if isinstance(i, slice):
            return tuple(self._at(k) for k in range(*i.indices(len(self))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("output index out of range")
        return self._at(i)

    def __iter__(self) -> Iterator[TxOut]:
        return (self._at(k) for k in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, OutputVector):
            return self.raw == other.raw
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"OutputVector({len(self)} outputs, {sum(self.values)} sat)"


def output_values(outputs: Sequence[TxOut]) -> Sequence[int]:
    """The outputs' values (an OutputVector's are at hand without parsing its outputs)."""
    return outputs.values if isinstance(outputs, OutputVector) else [o.value for o in outputs]


@dataclass(frozen=True)
class Tx:
    """An immutable transaction (its legacy serialization and txid are computed once).

    ``version`` is treated as an unsigned 32-bit field (Core ≥ 28 semantics), so
    versions 1, 2, 3 (TRUC) and any other 32-bit value round-trip.
    """

    version: int
    inputs: tuple[TxIn, ...]
    outputs: tuple[TxOut, ...]
    locktime: int = 0

    def __post_init__(self) -> None:
        _check_u32("version", self.version)
        _check_u32("locktime", self.locktime)
        if not isinstance(self.inputs, tuple):
            object.__setattr__(self, "inputs", tuple(self.inputs))
        if not isinstance(self.outputs, (tuple, OutputVector)):
            object.__setattr__(self, "outputs", tuple(self.outputs))
        if not all(isinstance(i, TxIn) for i in self.inputs):
            raise BitcoinError("inputs must be TxIn")
        if isinstance(self.outputs, tuple) and not all(isinstance(o, TxOut) for o in self.outputs):
            raise BitcoinError("outputs must be TxOut")

    # -- serialization -------------------------------------------------------

    @property
    def has_witness(self) -> bool:
        """True if any input carries a non-empty witness stack."""
        return any(i.witness for i in self.inputs)

    def serialize_without_witness(self) -> bytes:
        """Legacy serialization (BIP-144 "Serialization" without marker/flag). Kept once computed,
        except for a transaction whose outputs are an OutputVector: its bytes are held there already."""
        if isinstance(self.outputs, OutputVector):
            return self._legacy_bytes()
        return self._legacy

    @classmethod
    def with_output_vector(cls, version: int, inputs: tuple[TxIn, ...], vector: bytes, locktime: int = 0) -> Tx:
        """A transaction whose outputs come from a consensus-serialized output vector (count, then
        outputs), checked strictly and kept as those bytes (see OutputVector)."""
        return cls(version, inputs, OutputVector(vector), locktime)  # type: ignore[arg-type]

    def with_version(self, version: int) -> Tx:
        """Copy with another version (its serialized outputs are reused, not recomputed)."""
        tx = dataclasses.replace(self, version=version)
        if "outputs_bytes" in self.__dict__:
            tx.__dict__["outputs_bytes"] = self.__dict__["outputs_bytes"]
        return tx

    @once
    def outputs_bytes(self) -> bytes:
        """The outputs serialized back to back, without their count (what BIP-341's sha_outputs hashes)."""
        if isinstance(self.outputs, OutputVector):
            return self.outputs.raw
        return b"".join(o.serialize() for o in self.outputs)

    @once
    def _legacy(self) -> bytes:
        return self._legacy_bytes()

    @property
    def legacy_size(self) -> int:
        """len(serialize_without_witness()), without serializing."""
        ins = sum(36 + len(ser_compact_size(len(i.script_sig))) + len(i.script_sig) + 4 for i in self.inputs)
        return (8 + len(ser_compact_size(len(self.inputs))) + ins + len(ser_compact_size(len(self.outputs)))
                + len(self.outputs_bytes))

    def _legacy_bytes(self) -> bytes:
        return b"".join(
            (
                ser_u32(self.version),
                ser_compact_size(len(self.inputs)),
                *(i.serialize() for i in self.inputs),
                ser_compact_size(len(self.outputs)),
                self.outputs_bytes,
                ser_u32(self.locktime),
            )
        )

    def serialize_with_witness(self) -> bytes:
        """BIP-144 extended serialization: marker, flag, ..., witnesses, locktime."""
        return b"".join(
            (
                ser_u32(self.version),
                bytes([SEGWIT_MARKER, SEGWIT_FLAG]),
                ser_compact_size(len(self.inputs)),
                *(i.serialize() for i in self.inputs),
                ser_compact_size(len(self.outputs)),
                self.outputs_bytes,
                *(ser_string_vector(i.witness) for i in self.inputs),
                ser_u32(self.locktime),
            )
        )

    def serialize(self) -> bytes:
        """Network serialization: extended format iff some witness is non-empty."""
        if self.has_witness:
            return self.serialize_with_witness()
        return self.serialize_without_witness()

    @classmethod
    def deserialize(cls, data: bytes, *, allow_witness: bool = True) -> Tx:
        """Parse a transaction, rejecting trailing bytes.

        Follows Core's ``UnserializeTransaction``: an empty input vector
        followed by flag byte 0x01 (BIP-144) introduces the extended format;
        a witness record with all-empty stacks or unknown flag bits is invalid.
        """
        return decode_all(lambda r: cls._read(r, allow_witness), data)

    @classmethod
    def read(cls, r: ByteReader) -> Tx:
        """One transaction (witness allowed) from a stream of several, as in a block."""
        return cls._read(r, True)

    @classmethod
    def _read(cls, r: ByteReader, allow_witness: bool) -> Tx:
        version = r.read_u32()
        inputs = cls._read_inputs(r)
        flags = 0
        if not inputs and allow_witness:
            # BIP-144: marker 0x00 was read as an empty vin; next is the flag.
            flags = r.read_u8()
            if flags != 0:
                inputs = cls._read_inputs(r)
                outputs = cls._read_outputs(r)
            else:
                outputs = ()
        else:
            outputs = cls._read_outputs(r)
        if flags & SEGWIT_FLAG:
            flags ^= SEGWIT_FLAG
            witnesses = [r.read_bytes_vector() for _ in inputs]
            if not any(witnesses):
                raise DecodeError("superfluous witness record")
            inputs = tuple(
                dataclasses.replace(txin, witness=w) for txin, w in zip(inputs, witnesses, strict=True)
            )
        if flags:
            raise DecodeError("unknown transaction optional data")
        return cls(version, inputs, outputs, r.read_u32())

    @staticmethod
    def _read_inputs(r: ByteReader) -> tuple[TxIn, ...]:
        return tuple(TxIn.read(r) for _ in range(r.read_count(_MIN_TXIN_SIZE)))

    @staticmethod
    def _read_outputs(r: ByteReader) -> tuple[TxOut, ...]:
        return tuple(TxOut.read(r) for _ in range(r.read_count(_MIN_TXOUT_SIZE)))

    @classmethod
    def from_hex(cls, hex_str: str) -> Tx:
        """Parse from hex; invalid hex raises DecodeError."""
        try:
            data = bytes.fromhex(hex_str)
        except (ValueError, TypeError) as exc:
            raise DecodeError("invalid hex") from exc
        return cls.deserialize(data)

    def to_hex(self) -> str:
        """Hex of :meth:`serialize`."""
        return self.serialize().hex()

    # -- identifiers and size -----------------------------------------------

    @once
    def txid_bytes(self) -> Txid:
        """BIP-141: txid = HASH256(legacy serialization), internal byte order."""
        return Txid(hash256(self.serialize_without_witness()))

    @property
    def txid(self) -> str:
        """Txid as hex in display (RPC) order."""
        return self.txid_bytes[::-1].hex()

    @property
    def wtxid_bytes(self) -> bytes:
        """BIP-141: wtxid = HASH256(witness serialization), internal byte order."""
        return hash256(self.serialize())

    @property
    def wtxid(self) -> str:
        """Wtxid as hex in display (RPC) order."""
        return self.wtxid_bytes[::-1].hex()

    @property
    def weight(self) -> int:
        """BIP-141 "Transaction size calculations": base_size * 3 + total_size."""
        base = len(self.serialize_without_witness())
        return base * (WITNESS_SCALE_FACTOR - 1) + len(self.serialize())

    @property
    def vsize(self) -> int:
        """BIP-141 virtual size: weight / 4, rounded up."""
        return (self.weight + WITNESS_SCALE_FACTOR - 1) // WITNESS_SCALE_FACTOR

    # -- functional updates --------------------------------------------------

    def outpoint(self, vout: int) -> OutPoint:
        """OutPoint referring to output ``vout`` of this transaction."""
        if not 0 <= vout < len(self.outputs):
            raise BitcoinError(f"no output {vout}")
        return OutPoint(self.txid_bytes, vout)

    def with_witness(self, index: int, witness: Sequence[bytes]) -> Tx:
        """Copy of this tx with input ``index``'s witness stack replaced."""
        if not 0 <= index < len(self.inputs):
            raise BitcoinError(f"no input {index}")
        old = self.inputs[index]
        new_in = TxIn(old.prevout, old.script_sig, old.sequence, tuple(witness))
        inputs = self.inputs[:index] + (new_in,) + self.inputs[index + 1 :]
        # Only the new input needs checking (TxIn did that): the copy skips __post_init__ and keeps
        # what a witness cannot change.
        tx = object.__new__(type(self))
        tx.__dict__.update(version=self.version, inputs=inputs, outputs=self.outputs, locktime=self.locktime)
        for cached in ("outputs_bytes", "_legacy", "txid_bytes"):
            if cached in self.__dict__:
                tx.__dict__[cached] = self.__dict__[cached]
        return tx

    def without_witnesses(self) -> Tx:
        """Copy with every witness stack emptied."""
        return dataclasses.replace(
            self, inputs=tuple(dataclasses.replace(i, witness=()) for i in self.inputs)
        )
