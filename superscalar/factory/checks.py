"""Checks anybody can run on a signed exit path handed to it (a helper keeping a client's path, a
client restoring its own from a helper): is it a chain of signed key-path spends, each of the output
of the transaction before it, each ending with the P2A anchor every factory transaction carries?"""

from __future__ import annotations

from typing import Optional, Sequence

from ..bitcoin.script import p2a_script
from ..bitcoin.sighash import SIGHASH_DEFAULT, taproot_sighash
from ..bitcoin.tx import Tx, TxOut
from ..crypto.bip340 import schnorr_verify


def signed_chain_refusal(names: Sequence[str], txs: Sequence[Tx], prevouts: Sequence[TxOut]) -> Optional[str]:
    """Why `txs` (parents first, `prevouts[i]` the output `txs[i]` spends) is not such a chain, or None."""
    for i, tx in enumerate(txs):
        prevout = prevouts[i]
        spent = tx.inputs[0].prevout if tx.inputs else None
        if spent is None or (i > 0 and not (spent.txid_hex == txs[i - 1].txid
                                            and tuple(txs[i - 1].outputs[spent.vout:spent.vout + 1]) == (prevout,))):
            return f"{names[i]} does not spend the output of the transaction before it"
        if not tx.outputs or tx.outputs[-1].script_pubkey != p2a_script():
            return f"{names[i]} does not end with a P2A anchor"
        script = prevout.script_pubkey
        witness = tx.inputs[0].witness
        # BIP-341 key path, SIGHASH_DEFAULT: one 64-byte signature under the output's x-only key
        if len(script) != 34 or script[:2] != b"\x51\x20" or len(witness) != 1 or len(witness[0]) != 64 \
                or not schnorr_verify(taproot_sighash(tx, 0, [prevout], SIGHASH_DEFAULT), script[2:], witness[0]):
            return f"{names[i]} is not signed for the output it spends"
    return None
