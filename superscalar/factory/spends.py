"""One rule for every signing round: a signer never signs two different spends of one output
(ARCHITECTURE.md §3, "Every way a factory ends").

A partial signature, once sent, may let whoever collects the others complete that transaction at any
time later, even if the round that asked for it failed. So before a signer sends a partial signature
it records, durably, which transaction it signed for each output that transaction spends (the
*ledger*); every later proposal that spends one of those outputs must spend it with the very same
transaction (re-signing an identical transaction gives nobody anything new) or is refused. A later
proposal that wants the value must chain from the earlier transaction instead (a sale spends output 1
of the previous sale, after the signer caught up with it).

The one exception is the Decker-Wattenhofer replacement the tree is built on: a newer state of a node
spends the same kickoff output as the older one with a strictly shorter relative timelock (BIP-68
nSequence, same unit), so it can always confirm first; that is how a DW layer "chains".

A ledger is a mapping kept in the factory record (`record["signed_spends"]`):
    "<txid>:<vout>" of the output spent  →  {"txid": spending txid, "sequence": that input's nSequence}
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from ..bitcoin.tx import Tx

LEDGER_KEY = "signed_spends"

# BIP-68: bit 31 disables the relative lock; bit 22 selects time (1) or blocks (0); the low 16 bits
# are the value.
_DISABLE = 1 << 31
_TYPE = 1 << 22
_VALUE = 0xFFFF

Ledger = Mapping[str, Mapping[str, Any]]


def _outpoint_key(tx: Tx, i: int) -> str:
    prevout = tx.inputs[i].prevout
    return f"{prevout.txid_hex}:{prevout.vout}"


def _dw_replacement(prior_sequence: int, sequence: int) -> bool:
    """Is an input with `sequence` a newer Decker-Wattenhofer state than one with `prior_sequence`:
    both relative locks enabled, of the same unit, and the new one strictly shorter?"""
    if prior_sequence & _DISABLE or sequence & _DISABLE:
        return False
    if prior_sequence & _TYPE != sequence & _TYPE:
        return False
    return sequence & _VALUE < prior_sequence & _VALUE


def conflict(ledger: Ledger, txs: Iterable[Tx]) -> Optional[str]:
    """Why signing `txs` would sign a second, different spend of an output this signer already signed
    a spend of (per `ledger`), or None if it may sign them."""
    for tx in txs:
        for i, txin in enumerate(tx.inputs):
            key = _outpoint_key(tx, i)
            prior = ledger.get(key)
            if prior is None or prior["txid"] == tx.txid:
                continue
            if _dw_replacement(int(prior["sequence"]), txin.sequence):
                continue
            return f"we already signed {prior['txid']} spending {key}; {tx.txid} would spend it too"
    return None


def entries(txs: Iterable[Tx]) -> dict[str, dict[str, Any]]:
    """What signing `txs` adds to a ledger (to be stored before the partial signatures are sent)."""
    out: dict[str, dict[str, Any]] = {}
    for tx in txs:
        for i, txin in enumerate(tx.inputs):
            out[_outpoint_key(tx, i)] = {"txid": tx.txid, "sequence": txin.sequence}
    return out


def ledger_of(record: Optional[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The ledger a factory record keeps (empty for none)."""
    return dict((record or {}).get(LEDGER_KEY) or {})


def record_signing(record: dict[str, Any], added: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`record` with `added` entered in its ledger (a newer DW state replaces the older entry)."""
    ledger = ledger_of(record)
    ledger.update({k: dict(v) for k, v in added.items()})
    record[LEDGER_KEY] = ledger
    return record
