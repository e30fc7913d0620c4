"""Naming the transaction that spent an exit transaction's input (superscalar/exit_conflicts.py)."""

from __future__ import annotations

from superscalar.bitcoin.script import p2a_script
from superscalar.bitcoin.tx import OutPoint, Tx, TxIn, TxOut
from superscalar.chain.conflicts import DISTRIBUTION, FACTORY_TX, LSP_TIMEOUT_SWEEP, UNKNOWN, conflict_kind

SPENT = OutPoint(bytes(range(32)), 1)
P2TR = b"\x51\x20" + bytes(32)


def spender(witness: tuple[bytes, ...], outputs: tuple[TxOut, ...] = (TxOut(1_000, P2TR),), locktime: int = 0) -> Tx:
    return Tx(3, (TxIn(OutPoint(bytes(32), 0)), TxIn(SPENT, witness=witness)), outputs, locktime)


def test_known_txid_is_named() -> None:
    tx = spender((bytes(64),))
    assert conflict_kind(tx, SPENT, {tx.txid: DISTRIBUTION}) == DISTRIBUTION


def test_timeout_sweep_by_its_cltv_leaf() -> None:
    height = (1_000).to_bytes(2, "little")
    leaf = bytes([len(height)]) + height + bytes([0xB1, 0x75, 0x20]) + bytes(32) + bytes([0xAC])
    assert conflict_kind(spender((bytes(64), leaf, b"\xc0" + bytes(32)), locktime=1_000), SPENT, {}) == LSP_TIMEOUT_SWEEP


def test_key_path_factory_transaction() -> None:
    outputs = (TxOut(1_000, P2TR), TxOut(240, p2a_script()))
    assert conflict_kind(spender((bytes(64),), outputs), SPENT, {}) == FACTORY_TX


def test_anything_else_is_unknown() -> None:
    assert conflict_kind(spender((bytes(64),)), SPENT, {}) == UNKNOWN  # key path, no anchor
    assert conflict_kind(spender((bytes(71), bytes(33))), SPENT, {}) == UNKNOWN  # P2WPKH-like
    assert conflict_kind(spender(()), SPENT, {}) == UNKNOWN
