"""What a transaction that spent an exit transaction's input is, as far as it can be recognised
(pure): the factory's distribution (by txid), the LSP's timeout sweep (a script-path spend through
a `<height> OP_CHECKLOCKTIMEVERIFY OP_DROP <key> OP_CHECKSIG` leaf), another key-path-signed factory
transaction (another DW state, a cooperative close), or unknown."""

from __future__ import annotations

from typing import Optional

from ..bitcoin.script import OP_CHECKLOCKTIMEVERIFY, p2a_script
from ..bitcoin.tx import OutPoint, Tx

DISTRIBUTION = "distribution"
LSP_TIMEOUT_SWEEP = "lsp_timeout_sweep"
FACTORY_TX = "factory_transaction"  # key-path spend by the signers: another state or a close
UNKNOWN = "unknown"

OP_CHECKSIG = 0xAC
SCHNORR_SIG_SIZES = (64, 65)  # BIP-341: a key-path witness is one signature


def conflict_kind(spender: Tx, outpoint: OutPoint, known: dict[str, str]) -> str:
    """What `spender`, which spent `outpoint`, is; `known` maps txids this node signed to what they are."""
    if spender.txid in known:
        return known[spender.txid]
    witness = next((i.witness for i in spender.inputs if i.prevout == outpoint), None)
    if not witness:
        return UNKNOWN
    if len(witness) >= 3:  # script path: ..., script, control block (BIP-341)
        script = witness[-2]
        if OP_CHECKLOCKTIMEVERIFY in script[:8] and script.endswith(bytes([OP_CHECKSIG])):
            return LSP_TIMEOUT_SWEEP
    if len(witness) == 1 and len(witness[0]) in SCHNORR_SIG_SIZES \
            and spender.outputs and spender.outputs[-1].script_pubkey == p2a_script():
        return FACTORY_TX
    return UNKNOWN


def describe_conflict(kind: str) -> str:
    return {DISTRIBUTION: "the factory's distribution transaction",
            LSP_TIMEOUT_SWEEP: "the LSP's sweep after the factory timeout",
            FACTORY_TX: "another transaction signed by the factory's members (another state or a close)",
            }.get(kind, "a transaction this node does not recognise")


def spent_input(spender: Tx, watched: dict[OutPoint, str]) -> Optional[OutPoint]:
    """The first input of `spender` that spends a watched outpoint."""
    return next((i.prevout for i in spender.inputs if i.prevout in watched), None)
