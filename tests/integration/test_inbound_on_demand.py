"""Inbound on demand (lsp/inbound.py) on real lightningd and bitcoind: a payment to a factory client
whose inbound is used up is held by the LSP while an L-stock sale adds a channel, then forwarded over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from superscalar.bitcoin.tx import Tx
from superscalar.factory.params import FactoryParams
from superscalar.lsp.jit import channel_capacity_sat
from superscalar.node import msat

from .test_close_rollover import channels_in, no_broken, pay_msat, record, settled
from .test_factory_plugin import create_factory, start_network

pytestmark = pytest.mark.lightningd


def test_payment_beyond_inbound_gets_an_lstock_sale(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 2)
    buyer, payer = clients  # leaf-mates: the payer pays from its own factory balance
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    old = next(ch["funding_outpoint"] for ch in res["channels"] if ch["peer_id"] == buyer.info["id"])
    pay_msat(lsp, buyer, 185_000_000, "use-inbound")  # the buyer's inbound is used up
    settled(lsp, clients)
    [old_lsp_side] = channels_in(lsp, buyer, old)
    amount_msat = 40_000_000
    assert msat(old_lsp_side["spendable_msat"]) < amount_msat
    fee_msat = pay_msat(payer, buyer, amount_msat, "beyond-inbound")
    settled(lsp, clients)
    # A second channel came out of the leaf's L-stock, sized for the payment, and carried it.
    rec = record(lsp, fid)
    [sale] = rec["sales"]
    capacity = channel_capacity_sat(amount_msat)
    tx = Tx.from_hex(sale["tx"])
    vsize = bitcoind.rpc.decoderawtransaction(sale["tx"])["vsize"]
    sale_fee = -(-vsize * params.feerate_per_kvb // 1000)
    assert [o.value for o in tx.outputs] == [capacity, params.lstock_sat - capacity - params.anchor_sat - sale_fee,
                                             params.anchor_sat]
    new = f"{tx.txid}:0"
    [mine] = channels_in(buyer, lsp, new)
    assert msat(mine["total_msat"]) == capacity * 1000 and msat(mine["to_us_msat"]) == amount_msat
    assert len(channels_in(buyer, lsp)) == 2
    assert lsp.daemon.is_in_log("more than our side holds: selling a channel")
    print(f"on-demand sale: channel {capacity} sat, sale {vsize} vB fee {sale_fee} sat, L-stock "
          f"{params.lstock_sat} -> {tx.outputs[1].value} sat; routing fee paid {fee_msat} msat")
    # The next payment within the new inbound needs no sale.
    pay_msat(payer, buyer, 1_000_000, "within-new-inbound")
    settled(lsp, clients)
    assert len(record(lsp, fid)["sales"]) == 1
    no_broken([lsp, *clients])
