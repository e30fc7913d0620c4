"""Inbound on demand (lsp/inbound.py) on real lightningd and bitcoind: a payment to a factory client
whose inbound is used up is held by the LSP while an L-stock sale adds a channel, then forwarded over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest

from superscalar.bitcoin.tx import Tx
from superscalar.factory.params import FactoryParams
from superscalar.lsp.jit import channel_capacity_sat
from superscalar.cln.node import msat

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


def test_jit_channel_for_a_factory_client_is_a_sale(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """LSPS2 for a client already in a factory of the LSP: the JIT channel comes out of its leaf's
    L-stock (no wallet transaction), and it receives exactly amount − opening fee."""
    from pyln.testing.utils import sync_blockheight, wait_for

    from .test_lsps2 import PROBE, pay_in_parts, plain_payer

    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "plugin": [str(plugin_path), str(PROBE)], "superscalar-lsp": "true"},
                                may_reconnect=True)
    clients = node_factory.get_nodes(2, opts={**common, "may_reconnect": True, "superscalar-join": lsp.info["id"]})
    lsp.fundwallet(10_000_000)
    payer = plain_payer(node_factory, bitcoind, lsp)
    # every node at the tip before the factory: a client counts its funding deadline (6 blocks on the
    # regtest profile) from its own height when it signs
    sync_blockheight(bitcoind, [lsp, payer, *clients])
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    res = create_factory(lsp, clients, bitcoind)
    fid, client = res["factory_id"], clients[0]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    amount_msat = 30_000_000
    inv = client.rpc.call("superscalar-jit-invoice", {"lsp_id": lsp.info["id"], "amount_msat": amount_msat,
                                                      "description": "jit from l-stock"})
    mempool = set(bitcoind.rpc.getrawmempool())
    pay_in_parts(payer, lsp, inv["bolt11"], amount_msat, 3)
    [sold] = lsp.rpc.call("superscalar-jit-list")["sold"]
    [sale] = record(lsp, fid)["sales"]
    tx = Tx.from_hex(sale["tx"])
    assert sold["state"] == "open" and sold["funding_txid"] == tx.txid  # the sale's output 0, never broadcast
    assert set(bitcoind.rpc.getrawmempool()) == mempool  # no wallet transaction
    capacity = channel_capacity_sat(amount_msat - inv["opening_fee_msat"])
    vsize = bitcoind.rpc.decoderawtransaction(sale["tx"])["vsize"]
    sale_fee = -(-vsize * params.feerate_per_kvb // 1000)
    assert [o.value for o in tx.outputs] == [capacity, params.lstock_sat - capacity - params.anchor_sat - sale_fee,
                                             params.anchor_sat]
    wait_for(lambda: not any(c.get("htlcs") for c in client.rpc.listpeerchannels()["channels"]))
    [mine] = channels_in(client, lsp, f"{tx.txid}:0")
    assert msat(mine["to_us_msat"]) == amount_msat - inv["opening_fee_msat"]
    print(f"JIT from L-stock: channel {capacity} sat, opening fee {inv['opening_fee_msat']} msat, sale fee "
          f"{sale_fee} sat, L-stock left {tx.outputs[1].value} sat")
    no_broken([lsp, *clients])


def test_lsps1_order_of_a_factory_client_is_a_sale(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """An LSPS1 order from a client already in a factory of the LSP is filled at once by a liquidity
    sale out of its leaf's L-stock, not by waiting for the next factory."""
    from pyln.testing.utils import wait_for

    from .test_lsps1 import lsp_options

    lsp = node_factory.get_node(options=lsp_options(plugin_path, **{"superscalar-lsps1-min-lsp-balance-sat": "20000"}),
                                may_reconnect=True)
    clients = node_factory.get_nodes(2, opts={"plugin": str(plugin_path), "superscalar-profile": "regtest",
                                              "may_reconnect": True, "superscalar-join": lsp.info["id"]})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    res = create_factory(lsp, clients, bitcoind)
    fid, client = res["factory_id"], clients[0]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    inbound = 60_000
    bought = client.rpc.call("superscalar-buy-inbound", {"id": lsp.info["id"], "lsp_balance_sat": inbound})
    order_id = bought["order"]["order_id"]
    wait_for(lambda: client.rpc.call("superscalar-order", {"id": lsp.info["id"], "order_id": order_id})
             ["order"]["order_state"] == "COMPLETED")
    order = client.rpc.call("superscalar-order", {"id": lsp.info["id"], "order_id": order_id})["order"]
    [sale] = record(lsp, fid)["sales"]
    tx = Tx.from_hex(sale["tx"])
    assert order["channel"]["funding_outpoint"] == f"{tx.txid}:0"
    assert order["payment"]["bolt11"]["state"] == "PAID"
    vsize = bitcoind.rpc.decoderawtransaction(sale["tx"])["vsize"]
    sale_fee = -(-vsize * params.feerate_per_kvb // 1000)
    assert [o.value for o in tx.outputs] == [inbound, params.lstock_sat - inbound - params.anchor_sat - sale_fee,
                                             params.anchor_sat]
    wait_for(lambda: channels_in(client, lsp, f"{tx.txid}:0")[0]["state"] == "CHANNELD_NORMAL")
    assert msat(channels_in(client, lsp, f"{tx.txid}:0")[0]["total_msat"]) == inbound * 1000
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []  # not queued for a factory
    price = int(order["payment"]["bolt11"]["fee_total_sat"])
    print(f"LSPS1 order filled by sale {tx.txid}: {inbound} sat inbound for {price} sat, sale fee {sale_fee} sat")
    pay_msat(lsp, client, 50_000_000, "into-the-bought-inbound")  # more than the old channel's inbound left
    no_broken([lsp, *clients])


def pay_in_one_part(payer: Any, lsp: Any, payee: Any, amount_msat: int, label: str) -> dict[str, Any]:
    """payee invoices; payer pays it in exactly one HTLC, payer -> LSP -> payee over the payee's first
    channel with the LSP (the LSP picks the channel it forwards over). Returns waitsendpay's result, or
    raises its error."""
    inv = payee.rpc.call("invoice", {"amount_msat": amount_msat, "label": label, "description": label})
    final = int(payee.rpc.decode(inv["bolt11"])["min_final_cltv_expiry"])
    [out] = [c for c in payer.rpc.listpeerchannels(lsp.info["id"])["channels"] if c["state"] == "CHANNELD_NORMAL"]
    last = payee.rpc.listpeerchannels(lsp.info["id"])["channels"][0]
    update = last["updates"]["remote"]  # the LSP's fees for forwarding over it
    fee = update["fee_base_msat"] + amount_msat * update["fee_proportional_millionths"] // 1_000_000
    route = [{"id": lsp.info["id"], "channel": out.get("short_channel_id") or out["alias"]["local"],
              "amount_msat": amount_msat + fee, "delay": final + update["cltv_expiry_delta"]},
             {"id": payee.info["id"], "channel": last["alias"]["remote"], "amount_msat": amount_msat, "delay": final}]
    payer.rpc.call("sendpay", {"route": route, "payment_hash": inv["payment_hash"],
                               "payment_secret": inv["payment_secret"], "amount_msat": amount_msat})
    return dict(payer.rpc.call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 120}))


@pytest.mark.parametrize("buyer_limit_sat", [None, 500])
def test_on_demand_sale_paid_from_the_payment(node_factory: Any, bitcoind: Any, plugin_path: Path,
                                              buyer_limit_sat: Optional[int]) -> None:
    """With a sale price (1,000 sat + 2,500 ppm), the channel sold on demand is paid out of the payment:
    the client receives the amount less the price, to the msat, and records the price paid. A client whose
    limit is below the price refuses the sale: nothing is sold and the payment fails as it would have."""
    from pyln.client import RpcError

    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-sale-fee-base-sat": "1000",
                                         "superscalar-sale-fee-ppm": "2500"}, may_reconnect=True)
    limit = {} if buyer_limit_sat is None else {"superscalar-client-max-inbound-fee-base-sat": str(buyer_limit_sat),
                                                "superscalar-client-max-inbound-fee-ppm": "0"}
    buyer = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"], **limit}, may_reconnect=True)
    payer = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"]}, may_reconnect=True)
    clients = [buyer, payer]
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    pay_msat(lsp, buyer, 185_000_000, "use-inbound")  # the buyer's inbound is used up
    settled(lsp, clients)
    before = sum(msat(c["to_us_msat"]) for c in channels_in(buyer, lsp))
    amount_msat = 40_000_000
    capacity = channel_capacity_sat(amount_msat)
    price_msat = (1000 + -(-capacity * 2500 // 1_000_000)) * 1000
    if buyer_limit_sat is not None:
        with pytest.raises(RpcError):
            pay_in_one_part(payer, lsp, buyer, amount_msat, "refused-price")
        assert "sales" not in record(lsp, fid) or record(lsp, fid)["sales"] == []
        assert buyer.daemon.is_in_log(f"refusing the sale: its price {price_msat} msat is above our limit")
        assert sum(msat(c["to_us_msat"]) for c in channels_in(buyer, lsp)) == before
        assert len(channels_in(buyer, lsp)) == 1
        no_broken([lsp, *clients])
        return
    done = pay_in_one_part(payer, lsp, buyer, amount_msat, "priced")
    assert done["status"] == "complete"
    settled(lsp, clients)
    [sale] = record(lsp, fid)["sales"]
    assert sale["price_msat"] == price_msat and sale["capacity_sat"] == capacity
    [mine] = channels_in(buyer, lsp, sale["channel_outpoint"])
    assert msat(mine["to_us_msat"]) == amount_msat - price_msat
    assert sum(msat(c["to_us_msat"]) for c in channels_in(buyer, lsp)) == before + amount_msat - price_msat
    [inv] = buyer.rpc.listinvoices("priced")["invoices"]
    assert inv["status"] == "paid" and msat(inv["amount_received_msat"]) == amount_msat - price_msat
    [bought] = [s for s in record(buyer, fid)["sales"] if s.get("mine")]
    assert bought["price_msat"] == bought["price_paid_msat"] == price_msat
    print(f"paid on-demand sale: channel {capacity} sat, price {price_msat} msat out of a {amount_msat} msat payment; "
          f"client received {msat(mine['to_us_msat'])} msat")
    no_broken([lsp, *clients])
