"""How a factory ends when its LSP never rolls it over, on real lightningd and bitcoind (regtest
profile): a client whose liquidity sale brought its balance above what the distribution pays it (its
leaf channel's capacity) exits before the distribution height, and keeps every msat of its balance in
channels that are then ordinary funded ones; its leaf-mate, whose balance the distribution covers,
does not start that exit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.factory.lifecycle import uncovered_exit_height
from superscalar.factory.params import FactoryParams
from superscalar.cln.node import msat

from .test_close_rollover import channels_in, mine_until, no_broken, pay_msat, record, settled
from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, create_factory
from .test_lsps_sale import network, record_exit, sell

pytestmark = pytest.mark.lightningd


def balances(node: Any, peer: Any) -> dict[str, int]:
    return {f"{c['funding_txid']}:{c['funding_outnum']}": msat(c["to_us_msat"]) for c in channels_in(node, peer)}


def test_uncovered_client_exits_before_distribution(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = network(node_factory, plugin_path, 2)
    buyer, mate = clients
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    pay_msat(lsp, buyer, 150_000_000, "use-inbound")
    settled(lsp, clients)
    sale = sell(lsp, fid, buyer, 90_000)
    wait_for(lambda: channels_in(buyer, lsp, sale["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL")
    pay_msat(lsp, buyer, 60_000_000, "over-the-sale")
    settled(lsp, clients)
    held = balances(buyer, lsp)
    capacity_sat = BALANCE_SAT + INBOUND_SAT
    assert sum(held.values()) > capacity_sat * 1000, held  # more than the distribution pays the buyer
    assert msat(channels_in(mate, lsp)[0]["to_us_msat"]) <= capacity_sat * 1000

    start = uncovered_exit_height(params, int(record(buyer, fid)["early_warning_blocks"]))
    assert params.expiry_height <= start < params.distribution_height
    height = bitcoind.rpc.getblockcount()
    bitcoind.generate_block(start - 1 - height)
    sync_blockheight(bitcoind, nodes)
    assert not buyer.daemon.is_in_log("the distribution would pay")
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, nodes)
    buyer.daemon.wait_for_log(f"the distribution would pay {capacity_sat} sat of our {sum(held.values())} msat")
    assert record_exit(buyer, fid)["reasons"][0]["height"] == start
    assert not mate.daemon.is_in_log("the distribution would pay")

    # The path and the sale confirm before the distribution height: the distribution can never confirm,
    # and both of the buyer's channels are ordinary funded ones with exactly the balance it held.
    mine_until(bitcoind, nodes, lambda: all(c.get("short_channel_id") for c in channels_in(buyer, lsp)), blocks=40)
    funding_txid, vout = record(lsp, fid)["funding_outpoint"].split(":")
    sale_height = bitcoind.rpc.getblockheader(bitcoind.rpc.getrawtransaction(sale["sale_txid"], True)["blockhash"])["height"]
    assert bitcoind.rpc.gettxout(funding_txid, int(vout)) is None  # spent by the buyer's path, not the distribution
    assert sale_height < params.timeout(params.height)
    assert balances(buyer, lsp) == held
    assert all(c["state"] == "CHANNELD_NORMAL" for c in channels_in(buyer, lsp))
    dist = record(buyer, fid)["distribution"]
    assert bitcoind.rpc.decoderawtransaction(dist)["txid"] not in bitcoind.rpc.getrawmempool()
    no_broken(nodes)


def test_distribution_confirms_at_10x_fees(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The LSP vanishes before the distribution height and the fee market is far above the agreed rate
    (bitcoind treats the distribution and its 4x variant as paying nothing, `prioritisetransaction`):
    the clients, which own no coin, publish the 16x variant themselves; it confirms before the LSP's
    timeout and pays each client its channel's whole capacity, to the sat."""
    lsp, clients = network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    rec = record(clients[0], fid)
    base = bitcoind.rpc.decoderawtransaction(rec["distribution"])
    variants = [bitcoind.rpc.decoderawtransaction(h) for h in rec["distribution_variants"]]
    assert len(variants) == 3 and all(v["vout"][:2] == base["vout"][:2] for v in variants)
    funding_value = record(lsp, fid)["funding_value_sat"]

    def fee_sat(tx: dict[str, Any]) -> int:
        return funding_value - sum(round(o["value"] * 100_000_000) for o in tx["vout"])

    for tx in (base, variants[0]):  # the market ignores these: as if they paid nothing
        bitcoind.rpc.prioritisetransaction(tx["txid"], 0, -fee_sat(tx))
    assert all(c.rpc.listfunds()["outputs"] == [] for c in clients)  # the clients own no coin
    lsp.stop()
    height = bitcoind.rpc.getblockcount()
    bitcoind.generate_block(params.distribution_height - height)
    sync_blockheight(bitcoind, clients)
    wait_for(lambda: variants[1]["txid"] in bitcoind.rpc.getrawmempool())
    for c in clients:
        c.daemon.wait_for_log("trying its variant at 16x")
    mine_until(bitcoind, clients, lambda: bitcoind.rpc.gettxout(variants[1]["txid"], 0, False) is not None, blocks=3)
    mined = bitcoind.rpc.getrawtransaction(variants[1]["txid"], True)
    assert mined["confirmations"] >= 1
    assert fee_sat(variants[1]) == params.fee(variants[1]["vsize"], 16)
    assert bitcoind.rpc.getblockcount() < params.timeout(0)
    for i, c in enumerate(clients):
        paid = round(mined["vout"][i]["value"] * 100_000_000)
        assert paid == BALANCE_SAT + INBOUND_SAT
        wait_for(lambda: sum(o["amount_msat"] for o in c.rpc.listfunds()["outputs"]) == paid * 1000)
    no_broken(clients)


def test_close_confirms_at_10x_fees(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A cooperative close goes out when the fee market is far above the agreed rate (bitcoind treats the
    close and its 4x variant as paying nothing): the nodes move to its 16x variant, which confirms and
    pays each client its balance, to the sat; the extra fee came out of the LSP's share."""
    lsp, clients = network(node_factory, plugin_path, 2)
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    pay_msat(lsp, clients[0], 12_345_678, "to-0")
    settled(lsp, clients)
    held = [sum(balances(c, lsp).values()) for c in clients]
    out = lsp.rpc.call("superscalar-close", {"factory_id": fid})
    close = record(lsp, fid)["close"]
    base = bitcoind.rpc.decoderawtransaction(close["tx"])
    variants = [bitcoind.rpc.decoderawtransaction(h) for h in close["variants"]]
    assert base["txid"] == out["close_txid"] and len(variants) == 3
    funding_value = record(lsp, fid)["funding_value_sat"]

    def fee_sat(tx: dict[str, Any]) -> int:
        return funding_value - sum(round(o["value"] * 100_000_000) for o in tx["vout"])

    for tx in (base, variants[0]):
        bitcoind.rpc.prioritisetransaction(tx["txid"], 0, -fee_sat(tx))
    mine_until(bitcoind, nodes, lambda: variants[1]["txid"] in bitcoind.rpc.getrawmempool(), blocks=4)
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    assert {record(n, fid)["close"]["confirmed_txid"] for n in nodes} == {variants[1]["txid"]}
    mined = bitcoind.rpc.getrawtransaction(variants[1]["txid"], True)
    assert fee_sat(variants[1]) == params.fee(variants[1]["vsize"], 16)
    for c, b in zip(clients, held):
        script = bitcoind.rpc.decoderawtransaction(record(c, fid)["distribution"])["vout"][
            record(c, fid)["client_index"]]["scriptPubKey"]["hex"]
        paid = sum(round(o["value"] * 100_000_000) for o in mined["vout"] if o["scriptPubKey"]["hex"] == script)
        assert paid == b // 1000, (paid, b)
    no_broken(nodes)


def test_rollover_close_is_bumped_by_cpfp(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A rollover's close has no fee variants (the next factory is signed over its txid). When the market
    ignores it (bitcoind treats it as paying nothing), the LSP bumps it by CPFP through its P2A anchor with
    a coin of its own wallet: it confirms with the child, the next factory is funded and every client's
    channel in it holds its balance to the msat; the clients, which own no coin, paid nothing."""
    lsp, clients = network(node_factory, plugin_path, 2)
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    pay_msat(lsp, clients[0], 7_654_321, "to-0")
    settled(lsp, clients)
    held = {c.info["id"]: sum(balances(c, lsp).values()) for c in clients}
    out = lsp.rpc.call("superscalar-rollover", {"factory_id": fid})
    close = bitcoind.rpc.getmempoolentry(out["close_txid"])
    fee = int(round(close["fees"]["base"] * 100_000_000))
    assert fee == out["fee_sat"]
    bitcoind.rpc.prioritisetransaction(out["close_txid"], 0, -fee)  # the market ignores it
    assert all(c.rpc.listfunds()["outputs"] == [] for c in clients)
    lsp_outputs = {f"{o['txid']}:{o['output']}" for o in lsp.rpc.listfunds()["outputs"]}

    mine_until(bitcoind, nodes, lambda: (record(lsp, fid)["close"].get("child") or {}).get("txid")
               in bitcoind.rpc.getrawmempool(), blocks=8)
    child = record(lsp, fid)["close"]["child"]
    assert record(lsp, fid)["close"]["status"] in ("broadcast", "seen") and child["parent"] == out["close_txid"]
    lsp.daemon.wait_for_log(f"bumped the cooperative close {out['close_txid']} with child {child['txid']}")
    child_tx = bitcoind.rpc.getrawtransaction(child["txid"], True)
    assert {i["txid"] for i in child_tx["vin"]} >= {out["close_txid"]}
    assert any(f"{i['txid']}:{i['vout']}" in lsp_outputs for i in child_tx["vin"])  # the LSP's coin pays
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    mined = bitcoind.rpc.getrawtransaction(out["close_txid"], True)
    assert bitcoind.rpc.getrawtransaction(child["txid"], True)["blockhash"] == mined["blockhash"]
    nxt = out["next_factory"]
    wait_for(lambda: record(lsp, nxt)["stage"] == "funded")
    b_chans = {ch["peer_id"]: ch["funding_outpoint"] for ch in record(lsp, nxt)["channels"]}
    for c in clients:
        wait_for(lambda: not record(c, nxt).get("frozen"))
        assert msat(channels_in(c, lsp, b_chans[c.info["id"]])[0]["to_us_msat"]) == held[c.info["id"]]
        # (A's retired channel's closing transaction can never confirm: its output stays unconfirmed)
        assert [o for o in c.rpc.listfunds()["outputs"] if o["status"] == "confirmed"] == []
    print(f"close {out['close_txid']} paid {fee} sat at the agreed rate; child {child['txid']} paid {child['fee']} sat "
          f"({child['feerate']} sat/kvB for both)")
    no_broken(nodes)
