"""Liquidity sales out of a leaf's L-stock, on real lightningd and bitcoind (regtest profile): the LSP
adds a channel for a client whose inbound is used up, the payment arrives over it, and the client's
exit publishes the sale; a sale no client may sign is refused and changes nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest
from pyln.client import RpcError
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx
from superscalar.chain.exits import CLOSING_STATES
from superscalar.factory.params import FactoryParams
from superscalar.cln.node import msat

from .test_close_rollover import channels_in, mine_until, no_broken, pay_msat, record, settled, wallet_sat
from .test_dishonest_lsp import killed
from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, create_factory

pytestmark = pytest.mark.lightningd
CAPACITY_SAT = 90_000


def network(node_factory: Any, plugin_path: Path, n_clients: int, lsp_fail: Optional[str] = None,
            mate_fail: Optional[str] = None) -> tuple[Any, list[Any]]:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp_opts = {**common, "superscalar-lsp": "true", "superscalar-sale-fee-base-sat": "1000",
                "superscalar-sale-fee-ppm": "2500"}
    if lsp_fail:
        lsp_opts["superscalar-dev-fail-at"] = lsp_fail
    lsp = node_factory.get_node(options=lsp_opts, may_reconnect=True)
    clients = node_factory.get_nodes(n_clients, opts={"may_reconnect": True, **common, "superscalar-join": lsp.info["id"]})
    if mate_fail:  # the second client misbehaves on purpose
        clients[1].daemon.opts["superscalar-dev-fail-at"] = mate_fail
        clients[1].restart()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def sell(lsp: Any, fid: str, client: Any, capacity_sat: int) -> dict[str, Any]:
    return dict(lsp.rpc.call("superscalar-sell-inbound", {"factory_id": fid, "id": client.info["id"],
                                                           "capacity_sat": capacity_sat}))


def spendable_msat(node: Any, peer: Any, outpoint: str) -> int:
    [ch] = channels_in(node, peer, outpoint)
    return msat(ch["spendable_msat"])


def test_sale_adds_a_channel_and_the_exit_publishes_it(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = network(node_factory, plugin_path, 2)
    buyer, mate = clients
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    old = next(ch["funding_outpoint"] for ch in res["channels"] if ch["peer_id"] == buyer.info["id"])
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    # The buyer receives until its channel's inbound is nearly used up.
    pay_msat(lsp, buyer, 150_000_000, "use-inbound")
    settled(lsp, clients)
    old_inbound = spendable_msat(lsp, buyer, old)
    assert old_inbound < 60_000_000, old_inbound

    sale = sell(lsp, fid, buyer, CAPACITY_SAT)
    new = sale["funding_outpoint"]
    assert sale["capacity_sat"] == CAPACITY_SAT and sale["short_channel_id"] and sale["channel_id"]
    assert sale["fee_sat"] == 1_000 + (CAPACITY_SAT * 2_500 + 999_999) // 1_000_000  # the price: base + ppm
    # The new channel exists on both sides, with exactly the capacity sold; the old one is untouched.
    for node, peer in ((lsp, buyer), (buyer, lsp)):
        wait_for(lambda: channels_in(node, peer, new)[0]["state"] == "CHANNELD_NORMAL")
        [ch] = channels_in(node, peer, new)
        assert ch["state"] == "CHANNELD_NORMAL" and msat(ch["total_msat"]) == CAPACITY_SAT * 1000
        assert len(channels_in(node, peer)) == 2
    assert msat(channels_in(buyer, lsp, new)[0]["to_us_msat"]) == 0
    # Both leaf clients signed and stored the sale; the leaf-mate got no channel.
    lsp_rec, buyer_rec, mate_rec = record(lsp, fid), record(buyer, fid), record(mate, fid)
    assert [s["txid"] for s in lsp_rec["sales"]] == [s["txid"] for s in buyer_rec["sales"]] == \
        [s["txid"] for s in mate_rec["sales"]] == [sale["sale_txid"]]
    assert buyer_rec["sales"][0]["mine"] and not mate_rec["sales"][0]["mine"]
    assert len(channels_in(mate, lsp)) == 1
    # Exact amounts: the L-stock left is the old one less the capacity, the anchor and the fee, and the
    # fee is the factory's rate on the signed sale's vsize as bitcoind measures it.
    signed = lsp_rec["sales"][0]["tx"]
    vsize = bitcoind.rpc.decoderawtransaction(signed)["vsize"]
    fee = -(-vsize * params.feerate_per_kvb // 1000)
    assert sale["sale_fee_sat"] == fee and sale["sale_vsize"] == vsize
    assert sale["lstock_before_sat"] == params.lstock_sat
    assert sale["lstock_after_sat"] == params.lstock_sat - CAPACITY_SAT - params.anchor_sat - fee
    tx = Tx.from_hex(signed)
    assert [o.value for o in tx.outputs] == [CAPACITY_SAT, sale["lstock_after_sat"], params.anchor_sat]
    print(f"sale {sale['sale_txid']}: {vsize} vB, fee {fee} sat, L-stock {params.lstock_sat} -> "
          f"{sale['lstock_after_sat']} sat, price {sale['fee_sat']} sat")

    # A payment larger than what the old channel can still bring in arrives, over the new channel.
    amount_msat = old_inbound + 20_000_000
    pay_msat(lsp, buyer, amount_msat, "over-the-sale")
    settled(lsp, clients)
    got_new = msat(channels_in(buyer, lsp, new)[0]["to_us_msat"])
    assert got_new >= amount_msat - old_inbound, (got_new, amount_msat, old_inbound)
    # The buyer took that HTLC only after checking, from its own log, that output 0 is its channel's 2-of-2.
    assert record(buyer, fid)["sales"][0]["verified"] == "verified"
    listed = {ch["funding_outpoint"] for ch in buyer.rpc.call("superscalar-list")["factories"][0]["channels"]}
    assert listed == {old, new}

    # The buyer exits: its leaf's path, then the sale, confirm; both its channels close on chain.
    view = buyer.rpc.call("superscalar-exit", {"factory_id": fid})
    assert [t[0] for t in record_exit(buyer, fid)["txs"]][-1] == f"sale/{lsp_rec['sales'][0]['leaf']}/0"
    assert set(view["exit"]["channels"]) == {old, new}
    for _ in range(60):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, *clients])
        if all(ch["state"] in CLOSING_STATES | {"ONCHAIN"} for ch in channels_in(buyer, lsp)):
            break
    info = bitcoind.rpc.getrawtransaction(sale["sale_txid"], True)
    assert info["confirmations"] >= 1 and info["vsize"] == vsize
    assert all(ch["state"] in CLOSING_STATES | {"ONCHAIN"} for ch in channels_in(buyer, lsp))
    no_broken([lsp, *clients])


def record_exit(node: Any, fid: str) -> dict[str, Any]:
    import json
    store = node.rpc.call("listdatastore", {"key": ["superscalar", "factories", fid, "exit"]})
    return dict(json.loads(store["datastore"][0]["string"])["data"])


@pytest.mark.parametrize("cheat", ["lsp-sale-overfee", "lsp-sale-lstock-script"])
def test_client_refuses_a_dishonest_sale(node_factory: Any, bitcoind: Any, plugin_path: Path, cheat: str) -> None:
    lsp, clients = network(node_factory, plugin_path, 2, cheat)
    buyer = clients[0]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    before = {n.info["id"]: record(n, fid) for n in (lsp, *clients)}
    with pytest.raises(RpcError, match="aborted: (proposal|sale) refused"):
        sell(lsp, fid, buyer, CAPACITY_SAT)
    # Nothing changed: no sale in any record, no new channel on either side, no open pending.
    for n in (lsp, *clients):
        assert "sales" not in record(n, fid) and record(n, fid) == before[n.info["id"]]
    assert len(channels_in(buyer, lsp)) == 1
    wait_for(lambda: len(channels_in(lsp, buyer)) == 1)
    assert buyer.daemon.is_in_log("refusing the sale|sale round failed: proposal refused")
    # The factory's channels still work.
    pay_msat(lsp, buyer, 5_000_000, "after-refusal")
    no_broken([lsp, *clients])


def pay_over(payer: Any, payee: Any, outpoint: str, amount_msat: int, label: str) -> None:
    """Pay `payee`, a peer, over the one channel of ours funded at `outpoint` (`sendpay` with that route)."""
    [ch] = channels_in(payer, payee, outpoint)
    inv = payee.rpc.call("invoice", {"amount_msat": amount_msat, "label": label, "description": label})
    decoded = payer.rpc.call("decode", {"string": inv["bolt11"]})
    route = [{"id": payee.info["id"], "channel": ch.get("short_channel_id") or ch["alias"]["local"],
              "amount_msat": amount_msat, "delay": payer.rpc.getinfo()["blockheight"]
              + int(decoded["min_final_cltv_expiry"]) + 1}]
    payer.rpc.call("sendpay", {"route": route, "payment_hash": inv["payment_hash"],
                               "payment_secret": inv["payment_secret"], "amount_msat": amount_msat})
    payer.rpc.call("waitsendpay", {"payment_hash": inv["payment_hash"], "timeout": 60})


def test_sale_killed_after_signing_then_chained(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A leaf signer offline: a clear error, nothing changed. The LSP killed (SIGKILL) once the signed sale
    is stored: its channel was completed before anyone signed, so after the restart the sale is open on
    it; the next sale chains off its rest output, and the buyer's new channels carry payments."""
    lsp, clients = network(node_factory, plugin_path, 2, "lsp-sale-kill-after-sign")
    buyer, mate = clients
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    mate.rpc.disconnect(lsp.info["id"], force=True)
    wait_for(lambda: not any(c["peer_connected"] for c in channels_in(lsp, mate)))
    with pytest.raises(RpcError, match="every signer of the leaf must be online"):
        sell(lsp, fid, buyer, 40_000)
    assert "sales" not in record(lsp, fid) and len(channels_in(lsp, buyer)) == 1
    mate.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: all(c["peer_connected"] and c["state"] == "CHANNELD_NORMAL" for c in channels_in(lsp, mate)))

    with pytest.raises(RpcError):
        sell(lsp, fid, buyer, 40_000)
    killed(lsp)
    del lsp.daemon.opts["superscalar-dev-fail-at"]
    lsp.start()
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp, *clients])
    wait_for(lambda: record(lsp, fid)["sales"][0]["status"] == "open")
    first = record(lsp, fid)["sales"][0]
    assert first["channel_id"] in {c["channel_id"] for c in channels_in(lsp, buyer)}
    # A client may or may not have got the final signature before the kill (the LSP stored the sale first).
    for c in clients:
        assert [s["txid"] for s in record(c, fid).get("sales", [])] in ([], [first["txid"]])
    assert len(channels_in(lsp, buyer)) == 2 and len(channels_in(buyer, lsp)) == 2
    wait_for(lambda: all(c["peer_connected"] and c["state"] == "CHANNELD_NORMAL"
                         for c in channels_in(lsp, buyer) + channels_in(lsp, mate)))

    old = next(ch["funding_outpoint"] for ch in res["channels"] if ch["peer_id"] == buyer.info["id"])
    # Over the leaf channel itself: a buyer that missed the first sale's final signature (above) refuses
    # HTLCs on that sale's channel until it catches up from the second sale's proposal, and rightly so.
    pay_over(lsp, buyer, old, 150_000_000, "use-inbound")
    settled(lsp, clients)
    old_inbound = spendable_msat(lsp, buyer, old)
    second = sell(lsp, fid, buyer, 40_000)
    rest = params.lstock_sat - 40_000 - params.anchor_sat - first["fee_sat"]
    assert first["rest_sat"] == rest and second["lstock_before_sat"] == rest
    assert second["lstock_after_sat"] == rest - 40_000 - params.anchor_sat - second["sale_fee_sat"]
    # Every leaf client now holds both (one that missed the first caught up from the second's proposal).
    for c in clients:
        assert [s["txid"] for s in record(c, fid)["sales"]] == [first["txid"], second["sale_txid"]]
        assert [s["mine"] for s in record(c, fid)["sales"]] == [c is buyer, c is buyer]
    chained = Tx.from_hex(record(lsp, fid)["sales"][1]["tx"])
    assert chained.inputs[0].prevout.txid_hex == first["txid"] and chained.inputs[0].prevout.vout == 1
    wait_for(lambda: channels_in(buyer, lsp, second["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL")
    pay_msat(lsp, buyer, old_inbound + 20_000_000, "over-the-second-sale")
    settled(lsp, clients)
    sold = [f"{first['txid']}:0", second["funding_outpoint"]]
    assert sum(msat(channels_in(buyer, lsp, o)[0]["to_us_msat"]) for o in sold) >= 20_000_000
    no_broken([lsp, *clients])


def test_close_pays_sale_channel_balances(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A cooperative close of a factory with a sale pays each client the sum of its channels' balances
    (its leaf's and its sale channels'); the sale channels are retired with the leaf channels."""
    lsp, clients = network(node_factory, plugin_path, 2)
    buyer, mate = clients
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    old = next(ch["funding_outpoint"] for ch in res["channels"] if ch["peer_id"] == buyer.info["id"])
    pay_msat(lsp, buyer, 150_000_000, "use-inbound")
    settled(lsp, clients)
    old_inbound = spendable_msat(lsp, buyer, old)
    sale = sell(lsp, fid, buyer, CAPACITY_SAT)
    wait_for(lambda: channels_in(buyer, lsp, sale["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL")
    pay_msat(lsp, buyer, old_inbound + 20_000_001, "over-the-sale")
    settled(lsp, clients)
    owed = {c.info["id"]: sum(msat(ch["to_us_msat"]) for ch in channels_in(c, lsp)) // 1000 for c in clients}
    assert owed[buyer.info["id"]] > 200_000  # more than its leaf channel alone could hold for it
    before = {c.info["id"]: wallet_sat(c) for c in clients}
    out = lsp.rpc.call("superscalar-close", {"factory_id": fid})
    assert out["payouts_sat"] == owed
    mine_until(bitcoind, [lsp, *clients], lambda: all(record(n, fid)["close"]["status"] == "confirmed"
                                                      for n in (lsp, *clients)))
    for c in clients:
        wait_for(lambda: wallet_sat(c) - before[c.info["id"]] == owed[c.info["id"]])
    mine_until(bitcoind, [lsp, *clients], lambda: all(record(n, fid)["close"]["retired"] for n in (lsp, *clients)))
    assert all(ch["state"] in CLOSING_STATES or ch["state"] == "CLOSED"
               for n in (lsp, buyer) for ch in n.rpc.listpeerchannels()["channels"])
    print(f"close with a sale: payouts {out['payouts_sat']} sat, LSP {out['lsp_sat']} sat, fee {out['fee_sat']} sat")
    no_broken([lsp, *clients])


def test_rollover_merges_sale_channels(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A rollover of a factory with a sale carries the buyer's leaf and sale channels into one channel of
    the next factory: capacity their capacities together, balance theirs together to the msat, on both
    sides; its mate is carried as usual. Once the close confirms the old channels (the sale's too) are
    retired and the new channel carries payments over the whole merged capacity."""
    lsp, clients = network(node_factory, plugin_path, 2)
    buyer, mate = clients
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    leaf = next(ch["funding_outpoint"] for ch in res["channels"] if ch["peer_id"] == buyer.info["id"])
    pay_msat(lsp, buyer, 150_000_000, "use-inbound")
    settled(lsp, clients)
    sale = sell(lsp, fid, buyer, CAPACITY_SAT)
    wait_for(lambda: channels_in(buyer, lsp, sale["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL")
    pay_msat(lsp, buyer, spendable_msat(lsp, buyer, leaf) + 20_000_001, "over-the-sale")
    pay_msat(mate, lsp, 7_000_003, "mate-pays")
    settled(lsp, clients)
    old = {c.info["id"]: channels_in(c, lsp) for c in clients}
    assert len(old[buyer.info["id"]]) == 2 and len(old[mate.info["id"]]) == 1
    balance = {p: sum(msat(ch["to_us_msat"]) for ch in chans) for p, chans in old.items()}
    capacity = {p: sum(msat(ch["total_msat"]) for ch in chans) for p, chans in old.items()}
    assert capacity[buyer.info["id"]] == capacity[mate.info["id"]] + CAPACITY_SAT * 1000
    lsp_before = wallet_sat(lsp)

    out = lsp.rpc.call("superscalar-rollover", {"factory_id": fid})
    nxt = out["next_factory"]
    assert {r["peer_id"]: r["push_msat"] for r in out["rolled"]} == balance
    tx = Tx.from_hex(bitcoind.rpc.getrawtransaction(out["close_txid"]))
    assert len(tx.outputs) == 3 and tx.outputs[0].value == out["next_funding_sat"]  # B, LSP rest, anchor
    entry = bitcoind.rpc.getmempoolentry(out["close_txid"])
    assert int(round(entry["fees"]["base"] * 100_000_000)) == out["fee_sat"]
    b_rec = record(lsp, nxt)
    b_chan = {ch["peer_id"]: ch["funding_outpoint"] for ch in b_rec["channels"]}
    for c in clients:
        p = c.info["id"]
        [mine], [theirs] = channels_in(c, lsp, b_chan[p]), channels_in(lsp, c, b_chan[p])
        assert msat(mine["total_msat"]) == msat(theirs["total_msat"]) == capacity[p]
        assert msat(mine["to_us_msat"]) == balance[p] and msat(theirs["to_us_msat"]) == capacity[p] - balance[p]
        assert record(c, nxt)["push_msat"] == balance[p]
    assert next(ch for ch in b_rec["channels"] if ch["peer_id"] == buyer.info["id"])["capacity_msat"] == capacity[buyer.info["id"]]
    b_lstock = FactoryParams.deserialize(b_rec["params"].encode()).lstock_sat

    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    wait_for(lambda: wallet_sat(lsp) - lsp_before == out["lsp_sat"])
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["retired"] for n in nodes))
    for c in clients:  # the leaf channels and the sale channel alike, on both sides
        retired = {ch["channel_id"] for ch in old[c.info["id"]]}
        states = [ch["state"] for ch in channels_in(c, lsp) + channels_in(lsp, c) if ch["channel_id"] in retired]
        assert len(states) == 2 * len(retired) and "CHANNELD_NORMAL" not in states
    wait_for(lambda: all(not record(n, nxt).get("frozen") for n in nodes))
    # The merged channel holds more than the buyer's old leaf channel could (its capacity) and carries
    # payments: the LSP pays it nearly all it can send over it.
    assert balance[buyer.info["id"]] > (BALANCE_SAT + INBOUND_SAT) * 1000
    amount = spendable_msat(lsp, buyer, b_chan[buyer.info["id"]]) - 1_000_000
    pay_msat(lsp, buyer, amount, "over-the-merged")
    settled(lsp, clients)
    [merged] = channels_in(buyer, lsp, b_chan[buyer.info["id"]])
    assert msat(merged["to_us_msat"]) == balance[buyer.info["id"]] + amount
    print(f"rollover with a sale: buyer carried {balance[buyer.info['id']]} msat in one channel of "
          f"{capacity[buyer.info['id']] // 1000} sat (leaf + {CAPACITY_SAT} sat sale), mate {balance[mate.info['id']]} msat; "
          f"B funding {out['next_funding_sat']} sat, B L-stock {b_lstock} sat per leaf, close fee {out['fee_sat']} sat, "
          f"LSP {out['lsp_sat']} sat; then {amount} msat received over the merged channel")
    no_broken(nodes)


def test_client_that_missed_a_sale_catches_up(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """The leaf-mate drops the connection instead of taking the first sale's final signatures: the LSP
    (which stored the sale first) opens the channel anyway; the mate adds that sale, checked and
    signature-verified, from the next sale's proposal, and signs the next one, chained off it."""
    lsp, clients = network(node_factory, plugin_path, 2, mate_fail="sale-signatures-disconnect")
    buyer, mate = clients
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    first = sell(lsp, fid, buyer, 30_000)
    assert "sales" not in record(mate, fid) and [s["txid"] for s in record(buyer, fid)["sales"]] == [first["sale_txid"]]
    mate.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    wait_for(lambda: all(c["peer_connected"] and c["state"] == "CHANNELD_NORMAL" for c in channels_in(lsp, mate)))
    second = sell(lsp, fid, buyer, 30_000)
    assert second["lstock_before_sat"] == first["lstock_after_sat"]
    for c in clients:
        assert [s["txid"] for s in record(c, fid)["sales"]] == [first["sale_txid"], second["sale_txid"]]
    assert mate.daemon.is_in_log(f"caught up with earlier sale {first['sale_txid']}")
    assert len(channels_in(buyer, lsp)) == 3
    no_broken([lsp, *clients])


@pytest.mark.parametrize("buyer_offline", [False, True])
def test_leaf_on_chain_makes_the_buyer_publish_its_sale(node_factory: Any, bitcoind: Any, plugin_path: Path,
                                                        buyer_offline: bool) -> None:
    """The leaf-mate exits, so the shared leaf confirms: the buyer publishes its sale by itself (before
    the L-stock's script path opens) and its sale channel becomes an ordinary funded channel. Offline
    while the leaf confirmed, the buyer finds it on chain when it comes back and publishes at once."""
    lsp, clients = network(node_factory, plugin_path, 2)
    buyer, mate = clients
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    sale = sell(lsp, fid, buyer, CAPACITY_SAT)
    wait_for(lambda: channels_in(buyer, lsp, sale["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL")
    leaf_txid = Tx.from_hex(record(lsp, fid)["sales"][0]["tx"]).inputs[0].prevout.txid_hex
    if buyer_offline:
        buyer.stop()
    mate.rpc.call("superscalar-exit", {"factory_id": fid})  # the buyer never asks to exit
    if buyer_offline:
        mine_until(bitcoind, [lsp, mate], lambda: _confirmed(bitcoind, leaf_txid), blocks=30)
        buyer.start()
        buyer.rpc.connect(lsp.info["id"], "localhost", lsp.port)
        sync_blockheight(bitcoind, [buyer])
    mine_until(bitcoind, [lsp, *clients], lambda: _confirmed(bitcoind, sale["sale_txid"]), blocks=30)
    lstock_csv = FactoryParams.deserialize(record(lsp, fid)["params"].encode()).lstock_csv_blocks
    leaf_height = bitcoind.rpc.getblockheader(bitcoind.rpc.getrawtransaction(leaf_txid, True)["blockhash"])["height"]
    sale_height = bitcoind.rpc.getblockheader(bitcoind.rpc.getrawtransaction(sale["sale_txid"], True)["blockhash"])["height"]
    assert sale_height < leaf_height + lstock_csv, (leaf_height, sale_height)
    # The buyer's own lifecycle published it (its exit of the path started when the mate's kickoff confirmed,
    # or at once if its leaf was found confirmed already), channels left open.
    progress = record_exit(buyer, fid)
    assert f"sale/{record(lsp, fid)['sales'][0]['leaf']}/0" in progress["confirmed"] and progress["channels"] == []
    wait_for(lambda: channels_in(buyer, lsp, sale["funding_outpoint"])[0].get("short_channel_id") is not None)
    assert channels_in(buyer, lsp, sale["funding_outpoint"])[0]["state"] == "CHANNELD_NORMAL"
    # The rest of the L-stock (the sale's output 1) goes back to the LSP's wallet after its CSV, for the
    # pre-agreed fee.
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())

    def rest_sweep() -> Optional[dict[str, Any]]:
        view = next(f for f in lsp.rpc.call("superscalar-list")["factories"] if f["factory_id"] == fid)
        return view.get("sweeps", {}).get("sale-rest/0")
    mine_until(bitcoind, [lsp, *clients], lambda: (rest_sweep() or {}).get("status") == "confirmed",
               blocks=params.lstock_csv_blocks + 10)
    sweep = rest_sweep()
    assert sweep is not None and sweep["outpoint"] == f"{sale['sale_txid']}:1" and sweep["kind"] == "lstock"
    tx = Tx.from_hex(bitcoind.rpc.getrawtransaction(sweep["txid"]))
    rest = Tx.from_hex(bitcoind.rpc.getrawtransaction(sale["sale_txid"])).outputs[1].value
    assert rest == record(lsp, fid)["sales"][0]["rest_sat"] and tx.outputs[0].value == rest - params.fee(tx.vsize)
    sweep_height = bitcoind.rpc.getblockheader(bitcoind.rpc.getrawtransaction(sweep["txid"], True)["blockhash"])["height"]
    assert sweep_height >= sale_height + params.lstock_csv_blocks
    assert [o["amount_msat"] // 1000 for o in lsp.rpc.listfunds()["outputs"] if o["txid"] == sweep["txid"]] == \
        [tx.outputs[0].value]
    print(f"sale rest: {rest} sat at {sale['sale_txid']}:1 (confirmed {sale_height}) swept to the LSP's wallet: "
          f"{tx.outputs[0].value} sat, fee {params.fee(tx.vsize)} sat ({tx.vsize} vB), at {sweep_height}")
    no_broken([lsp, *clients])


def _confirmed(bitcoind: Any, txid: str) -> bool:
    try:
        return int(bitcoind.rpc.getrawtransaction(txid, True).get("confirmations", 0)) > 0
    except Exception:
        return False
