"""Liquidity sales as records keep them (superscalar/sales.py): the price, the current L-stock of a leaf
along a chain of sales, and what an exit of a sale channel publishes."""

from __future__ import annotations

import pytest

from superscalar.bitcoin.tx import OutPoint
from superscalar.factory.graph import liquidity_sale
from superscalar.factory.params import regtest_params
from superscalar.sales import (UNOPENED, current_lstock, exit_additions, sale_chain, sale_entry, sale_fee_sat,
                               sale_position)

from ..factory_kit import make_kit

FUNDING = OutPoint(bytes(range(32)), 1)
P2WSH = b"\x00\x20" + b"\x77" * 32


def test_price_is_base_plus_ppm_rounded_up() -> None:
    assert sale_fee_sat(90_000, 1_000, 2_500) == 1_225
    assert sale_fee_sat(1, 0, 1) == 1  # a fraction of a sat is charged as one
    assert sale_fee_sat(1_000_000, 0, 0) == 0
    with pytest.raises(ValueError):
        sale_fee_sat(0, 1, 1)


def test_sales_chain_off_the_previous_rest_and_exits_publish_the_chain() -> None:
    kit = make_kit(regtest_params(8, 100))
    f = kit.factory
    graph = f.graph(FUNDING)
    leaf = f.topology.leaf_of_client[2]
    other = f.topology.leaf_of_client[0]
    leaf_tx = graph.states[leaf].tx
    assert current_lstock(leaf_tx, [], leaf) == graph.lstock(leaf)
    sales = []
    for k, (lf, cap) in enumerate([(leaf, 20_000), (other, 10_000), (leaf, 30_000)]):
        lstock = current_lstock(graph.states[lf].tx, sales, lf)
        sale = liquidity_sale(f, lf, lstock, cap, P2WSH)
        sales.append(sale_entry(lf, sale.tx, sale.prevout, lstock[0], peer_id=f"peer{k}", status="open"))
    # The third sale spends the first's rest (same leaf), not the leaf's own L-stock.
    assert sales[2]["lstock_outpoint"] == f"{sales[0]['txid']}:1"
    assert sales[2]["prevout"][0] == sales[0]["rest_sat"]
    assert sales[0]["rest_sat"] == f.params.lstock_sat - 20_000 - f.params.anchor_sat - sales[0]["fee_sat"]
    assert sales[0]["fee_sat"] == f.params.fee(liquidity_sale(f, leaf, graph.lstock(leaf), 20_000, P2WSH).vsize)
    # An exit of the third sale's channel publishes both sales of its leaf, not the other leaf's.
    txs, channels = exit_additions(sales, [2])
    assert [t[0] for t in txs] == [f"sale/{leaf}/0", f"sale/{leaf}/2"]
    assert channels == [sales[2]["channel_outpoint"]]
    assert [sale_position(sales, k) for k in range(3)] == [1, 1, 2]
    # An unopened sale is still published when a later one needs it, but has no channel to close.
    sales[0]["status"] = UNOPENED
    txs, channels = exit_additions(sales, [0, 2])
    assert len(txs) == 2 and channels == [sales[2]["channel_outpoint"]]
    assert exit_additions(sales, []) == ([], [])


def test_sale_chain_ends_at_the_last_sale_that_backs_a_channel() -> None:
    sales = [{"leaf": 3, "status": "open"}, {"leaf": 5, "status": "open"}, {"leaf": 3, "status": "unopened"},
             {"leaf": 3, "status": "open"}, {"leaf": 3, "status": "unopened"}]
    assert sale_chain(sales, 3) == [0, 2, 3]  # the unopened one in between must go out too; the last one not
    assert sale_chain(sales, 5) == [1]
    assert sale_chain(sales, 7) == []
    assert sale_chain([{"leaf": 3, "status": "unopened"}], 3) == []  # nothing backed: the leaf's own L-stock is swept
