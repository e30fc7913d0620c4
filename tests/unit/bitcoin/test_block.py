"""Blocks: the transactions of a serialized block, strictly (mainnet's genesis block, and generated ones)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from superscalar.bitcoin.block import block_transactions
from superscalar.bitcoin.encoding import ser_compact_size
from superscalar.bitcoin.errors import DecodeError
from superscalar.bitcoin.tx import Tx, TxOut
from superscalar.client.membership import funding_verdict

from .test_tx import txs

# Bitcoin's genesis block (header, one transaction): its coinbase txid is well known.
GENESIS = bytes.fromhex(
    "0100000000000000000000000000000000000000000000000000000000000000000000003ba3edfd7a7b12b27ac72c3e"
    "67768f617fc81bc3888a51323a9fb8aa4b1e5e4a29ab5f49ffff001d1dac2b7c01010000000100000000000000000000"
    "00000000000000000000000000000000000000000000ffffffff4d04ffff001d0104455468652054696d65732030332f"
    "4a616e2f32303039204368616e63656c6c6f72206f6e206272696e6b206f66207365636f6e64206261696c6f757420"
    "666f722062616e6b73ffffffff0100f2052a01000000434104678afdb0fe5548271967f1a67130b7105cd6a828e0390"
    "9a67962e0ea1f61deb649f6bc3f4cef38c4f35504e51ec112de5c384df7ba0b8d578a4c702b6bf11d5fac00000000")


def test_genesis_block() -> None:
    (coinbase,) = block_transactions(GENESIS)
    assert coinbase.txid == "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b"
    assert coinbase.outputs[0].value == 50 * 100_000_000


@settings(max_examples=50)
@given(st.lists(txs(), min_size=1, max_size=5))
def test_generated_blocks_roundtrip(block: list[Tx]) -> None:
    data = bytes(80) + ser_compact_size(len(block)) + b"".join(tx.serialize() for tx in block)
    assert block_transactions(data) == tuple(block)
    with pytest.raises(DecodeError):
        block_transactions(data + b"\x00")
    with pytest.raises(DecodeError):
        block_transactions(data[:-1])


def test_short_or_overcounted_blocks_are_refused() -> None:
    with pytest.raises(DecodeError):
        block_transactions(bytes(80))
    with pytest.raises(DecodeError):
        block_transactions(bytes(80) + ser_compact_size(10_000) + bytes(100))


def test_funding_verdict_names_what_differs() -> None:
    (coinbase,) = block_transactions(GENESIS)
    out = coinbase.outputs[0]
    assert funding_verdict(coinbase, 0, out.value, out.script_pubkey) is None
    assert "no output 1" in (funding_verdict(coinbase, 1, out.value, out.script_pubkey) or "")
    assert "not the signed" in (funding_verdict(coinbase, 0, out.value - 1, out.script_pubkey) or "")
    assert "not the signed" in (funding_verdict(coinbase, 0, out.value, TxOut(1, b"\x51").script_pubkey) or "")
