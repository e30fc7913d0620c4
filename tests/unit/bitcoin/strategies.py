"""Hypothesis strategies shared by the bitcoin unit tests."""

from __future__ import annotations

from hypothesis import strategies as st

from superscalar.bitcoin.tx import MAX_MONEY, OutPoint, Tx, TxIn, TxOut

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
VERSIONS = st.one_of(st.sampled_from([1, 2, 3]), U32)

outpoints = st.builds(OutPoint, st.binary(min_size=32, max_size=32), U32)
witness_stacks = st.lists(st.binary(max_size=80), max_size=4).map(tuple)
tx_outs = st.builds(TxOut, st.integers(min_value=0, max_value=MAX_MONEY), st.binary(max_size=60))


def tx_ins(with_witness: bool) -> st.SearchStrategy[TxIn]:
    """Inputs, with empty witnesses unless ``with_witness``."""
    wit = witness_stacks if with_witness else st.just(())
    return st.builds(TxIn, outpoints, st.binary(max_size=40), U32, wit)


def txs(with_witness: bool = True, min_inputs: int = 1) -> st.SearchStrategy[Tx]:
    """Transactions with at least ``min_inputs`` inputs (0-input txs are ambiguous)."""
    return st.builds(
        Tx,
        VERSIONS,
        st.lists(tx_ins(with_witness), min_size=min_inputs, max_size=4).map(tuple),
        st.lists(tx_outs, max_size=4).map(tuple),
        U32,
    )


def unsigned_txs() -> st.SearchStrategy[Tx]:
    """Transactions with empty scriptSigs and witnesses, as a PSBT holds."""
    ins = st.builds(TxIn, outpoints, st.just(b""), U32)
    return st.builds(
        Tx,
        VERSIONS,
        st.lists(ins, min_size=1, max_size=3).map(tuple),
        st.lists(tx_outs, max_size=3).map(tuple),
        U32,
    )
