"""One rule for every signing round: a signer never signs two different spends of one output
(ARCHITECTURE.md §3, "Every way a factory ends").

A partial signature, once sent, may let whoever collects the others complete that transaction at any
time later, even if the round that asked for it failed. So before a signer sends a partial signature
it records, durably, which transaction it signed for each output that transaction spends (the
*ledger*); every later proposal that spends one of those outputs must spend it with the very same
transaction (re-signing an identical transaction gives nobody anything new) or is refused. A later
proposal that wants the value must chain from the earlier transaction instead (a sale spends output 1
of the previous sale, after the signer caught up with it).

The factory is made of alternatives on purpose, so the rule holds per *kind* of spend (the prefix of
the transaction's name in the engine, `factory.graph`, given by the signer's own rebuild, never by the
proposer): the funding output is spent by the tree's root, by the time-locked distribution and by at
most one cooperative close, each signed once; a leaf's L-stock by one chain of sales. Two spends of
one kind are the double spend this rule forbids. The one exception is the Decker-Wattenhofer
replacement the tree is built on: a newer state of a node spends the same kickoff output as the older
one with a strictly shorter relative timelock (BIP-68 nSequence, same unit), so it can always confirm
first; that is how a DW layer chains.

A ledger is a mapping kept in the factory record (`record["signed_spends"]`):
    "<txid>:<vout>" of the output spent  →  {kind: {"txid": spending txid, "sequence": that input's nSequence}}
Pure: no I/O.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from ..bitcoin.tx import Tx
from .graph import TreeTx

LEDGER_KEY = "signed_spends"

# BIP-68: bit 31 disables the relative lock; bit 22 selects time (1) or blocks (0); the low 16 bits
# are the value.
_DISABLE = 1 << 31
_TYPE = 1 << 22
_VALUE = 0xFFFF

Ledger = Mapping[str, Mapping[str, Mapping[str, Any]]]


def kind_of(job: TreeTx) -> str:
    """The kind of spend a transaction is: its name's prefix (node, kickoff, state, distribution, sale, close)."""
    return job.name.split("/", 1)[0]


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


def conflict(ledger: Ledger, jobs: Iterable[TreeTx]) -> Optional[str]:
    """Why signing `jobs` would sign a second, different spend of one kind of an output this signer
    already signed a spend of that kind of (per `ledger`), or None if it may sign them."""
    for job in jobs:
        tx = job.tx
        for i, txin in enumerate(tx.inputs):
            key = _outpoint_key(tx, i)
            prior = (ledger.get(key) or {}).get(kind_of(job))
            if prior is None or prior["txid"] == tx.txid:
                continue
            if _dw_replacement(int(prior["sequence"]), txin.sequence):
                continue
            return f"we already signed {prior['txid']} spending {key}; {tx.txid} would spend it too"
    return None


def entries(jobs: Iterable[TreeTx]) -> dict[str, dict[str, dict[str, Any]]]:
    """What signing `jobs` adds to a ledger (to be stored before the partial signatures are sent)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for job in jobs:
        for i, txin in enumerate(job.tx.inputs):
            out.setdefault(_outpoint_key(job.tx, i), {})[kind_of(job)] = {"txid": job.tx.txid, "sequence": txin.sequence}
    return out


def ledger_of(record: Optional[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """The ledger a factory record keeps (empty for none)."""
    return {k: dict(v) for k, v in ((record or {}).get(LEDGER_KEY) or {}).items()}


def record_signing(record: dict[str, Any], added: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """`record` with `added` entered in its ledger (a newer DW state replaces the older entry)."""
    ledger = ledger_of(record)
    for key, kinds in added.items():
        ledger.setdefault(key, {}).update({kind: dict(entry) for kind, entry in kinds.items()})
    record[LEDGER_KEY] = ledger
    return record
