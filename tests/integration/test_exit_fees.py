"""Exits that always confirm, on real bitcoind and lightningd: a tree transaction below the mempool's
minimum fee goes out as a package with a CPFP child (submitpackage), bumps escalate toward the
deadline and replace the child, an evicted transaction is sent again, and a conflicting spend (the
distribution) is named in the exit record and stops that branch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx

from .test_factory_exit import wallet_sat
from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, channel_with, create_factory

pytestmark = pytest.mark.lightningd

MIN_RELAY_BTC_PER_KVB = "0.00005"  # 5 sat/vB: above the regtest profile's 2 sat/vB tree fee rate
MAX_FEERATE = 20_000  # sat/kvB: superscalar-exit-max-feerate-perkvb in these tests
ANCHOR_SAT = 240  # what a CPFP child takes from its parent's P2A anchor into the wallet


def start_network(node_factory: Any, plugin_path: Path, n_clients: int,
                  max_feerate: int | None = MAX_FEERATE) -> tuple[Any, list[Any]]:
    """As test_factory_plugin.start_network, with the exit fee cap of these tests (None: the default)."""
    common: dict[str, Any] = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    if max_feerate is not None:
        common["superscalar-exit-max-feerate-perkvb"] = max_feerate
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    clients = node_factory.get_nodes(n_clients, opts={"may_reconnect": True, **common,
                                                      "superscalar-join": lsp.info["id"]})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    return lsp, clients


def progress(node: Any) -> dict[str, Any]:
    return dict(node.rpc.call("superscalar-list")["factories"][0]["exit_progress"])


def factory_record(node: Any, factory_id: str) -> dict[str, Any]:
    store = node.rpc.call("listdatastore", {"key": ["superscalar", "factories", factory_id, "factory"]})
    return dict(json.loads(store["datastore"][0]["string"])["data"])


def mine(bitcoind: Any, nodes: list[Any], n: int = 1) -> None:
    for _ in range(n):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)


def mine_empty(bitcoind: Any, nodes: list[Any], n: int = 1, txs: list[str] | None = None) -> None:
    """Blocks holding only `txs` (a miner that ignores the mempool)."""
    for _ in range(n):
        bitcoind.rpc.generateblock(bitcoind.rpc.getnewaddress(), txs or [])
        txs = None
        sync_blockheight(bitcoind, nodes)


def children_cost(bitcoind: Any, p: dict[str, Any]) -> int:
    """What the CPFP children of this exit that confirmed took from the wallet: their fees less the
    anchors they collected."""
    total = 0
    for child in p["cpfp_children"].values():
        info = bitcoind.rpc.getrawtransaction(child["txid"], True)
        if info.get("confirmations", 0) >= 1:
            total += child["fee"] - ANCHOR_SAT
    return total


def raise_min_relay_fee(bitcoind: Any) -> None:
    """Restart bitcoind (before any node uses it) refusing anything below 5 sat/vB: every tree
    transaction (2 sat/vB) alone."""
    bitcoind.stop()
    bitcoind.cmd_line += [f"-minrelaytxfee={MIN_RELAY_BTC_PER_KVB}"]
    bitcoind.start()


def test_exit_below_min_relay_fee_goes_as_package(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    raise_min_relay_fee(bitcoind)
    lsp, clients = start_network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    nodes = [lsp, *clients]
    leaver = clients[0]
    leaver.fundwallet(300_000)  # the coins the CPFP children spend
    sync_blockheight(bitcoind, nodes)
    rec = factory_record(leaver, res["factory_id"])
    root = Tx.from_hex(rec["signed_path"][0])
    verdict = bitcoind.rpc.testmempoolaccept([root.to_hex()])[0]
    assert not verdict["allowed"] and "min relay fee not met" in verdict["reject-reason"], verdict
    balance = channel_with(leaver, lsp)["to_us_msat"] // 1000
    assert balance == BALANCE_SAT
    before = wallet_sat(leaver)

    view = leaver.rpc.call("superscalar-exit", {"factory_id": res["factory_id"]})["exit"]
    assert view["published"] == ["path/0"], view
    child = view["bumped"]["path/0"]
    mempool = bitcoind.rpc.getrawmempool()
    assert root.txid in mempool and child in mempool  # the package is in
    leaver.daemon.wait_for_log("path/0 .* is below the mempool's minimum fee: sent as a package")
    for _ in range(80):
        mine(bitcoind, nodes)
        p = progress(leaver)
        if p["status"] == "closed" and wallet_sat(leaver) - before + children_cost(bitcoind, p) > BALANCE_SAT - 5_000:
            break
    p = progress(leaver)
    assert p["status"] == "closed", p
    assert sorted(p["confirmed"]) == sorted(p["published"]) and len(p["confirmed"]) == p["transactions"]
    # every path transaction went out as a package, its child mined in the same block
    assert set(p["bumped"]) == set(p["confirmed"]), p
    for name, c in p["cpfp_children"].items():
        parent = bitcoind.rpc.getrawtransaction(Tx.from_hex(rec["signed_path"][int(name.split("/")[1])]).txid, True)
        assert bitcoind.rpc.getrawtransaction(c["txid"], True)["blockhash"] == parent["blockhash"]
        assert 5_000 <= c["feerate"] <= MAX_FEERATE  # the mempool's minimum, and our cap
    cost = children_cost(bitcoind, p)
    gained = wallet_sat(leaver) - before
    print(f"channel balance {balance} sat, CPFP children cost {cost} sat "
          f"({ {n: c['fee'] for n, c in p['cpfp_children'].items()} }), wallet gained {gained} sat")
    assert balance - cost - 5_000 <= gained <= balance - cost, (balance, cost, gained)
    assert not leaver.daemon.is_in_log("superscalar.*BROKEN")


def expire_mempool(bitcoind: Any) -> None:
    """Evict everything in bitcoind's mempool the way bitcoind does: entries older than -mempoolexpiry
    (336 hours) are dropped when the next transaction is accepted. The clock is moved 15 days on for
    that one acceptance, then back."""
    now = int(bitcoind.rpc.getblockchaininfo()["time"])
    bitcoind.rpc.setmocktime(now + 15 * 24 * 3600)
    try:
        bitcoind.rpc.sendtoaddress(bitcoind.rpc.getnewaddress(), 0.001)
    finally:
        bitcoind.rpc.setmocktime(0)


def test_exit_resends_an_evicted_package(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    raise_min_relay_fee(bitcoind)
    lsp, clients = start_network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    nodes = [lsp, *clients]
    leaver = clients[0]
    leaver.fundwallet(300_000)
    sync_blockheight(bitcoind, nodes)
    before = wallet_sat(leaver)
    view = leaver.rpc.call("superscalar-exit", {"factory_id": res["factory_id"]})["exit"]
    root = Tx.from_hex(factory_record(leaver, res["factory_id"])["signed_path"][0]).txid
    first_child = view["bumped"]["path/0"]
    assert {root, first_child} <= set(bitcoind.rpc.getrawmempool())

    expire_mempool(bitcoind)
    bitcoind.wait_for_log("Expired 2 transactions from the memory pool")
    assert root not in bitcoind.rpc.getrawmempool() and first_child not in bitcoind.rpc.getrawmempool()
    # The next block does not hold them; the client notices and sends the package again.
    mine(bitcoind, nodes)
    leaver.daemon.wait_for_log(r"path/0 .* left the mempool without confirming: sending it again")
    p = progress(leaver)
    assert p["resent"] == {"path/0": 1}, p
    assert root in bitcoind.rpc.getrawmempool(), p["last_error"]
    assert p["cpfp_children"]["path/0"]["txid"] in bitcoind.rpc.getrawmempool()
    for _ in range(80):
        mine(bitcoind, nodes)
        p = progress(leaver)
        if p["status"] == "closed" and wallet_sat(leaver) - before + children_cost(bitcoind, p) > BALANCE_SAT - 5_000:
            break
    assert p["status"] == "closed", p
    assert bitcoind.rpc.getrawtransaction(root, True)["confirmations"] >= 1
    cost = children_cost(bitcoind, p)
    gained = wallet_sat(leaver) - before
    print(f"evicted and re-sent: channel balance {BALANCE_SAT} sat, CPFP children cost {cost} sat, "
          f"wallet gained {gained} sat")
    assert BALANCE_SAT - cost - 5_000 <= gained <= BALANCE_SAT - cost, (cost, gained)
    # the evicted child's coin was given back: nothing stays reserved
    assert not [o for o in leaver.rpc.listfunds()["outputs"] if o.get("reserved")]


def test_distribution_conflicting_with_an_exit(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 2, max_feerate=None)  # the default cap
    res = create_factory(lsp, clients, bitcoind)
    nodes = [lsp, *clients]
    leaver = clients[0]
    leaver.fundwallet(300_000)
    sync_blockheight(bitcoind, nodes)
    [view] = leaver.rpc.call("superscalar-list")["factories"]
    distribution_height = view["dying_height"]
    rec = factory_record(leaver, res["factory_id"])
    distribution = Tx.from_hex(rec["distribution"])
    while bitcoind.rpc.getblockcount() < distribution_height - 30:
        mine(bitcoind, nodes)
    leaver.rpc.call("superscalar-exit", {"factory_id": res["factory_id"]})
    root = Tx.from_hex(rec["signed_path"][0]).txid
    assert root in bitcoind.rpc.getrawmempool()
    # Miners ignore the exit until the distribution is valid; the client bumps it, more as its
    # deadline comes, each child replacing the last.
    children = []
    while bitcoind.rpc.getblockcount() < distribution_height:
        mine_empty(bitcoind, nodes)
        child = progress(leaver)["cpfp_children"].get("path/0")
        if child and (not children or children[-1]["txid"] != child["txid"]):
            children.append(child)
    print("CPFP children of path/0 (height, fee, sat/kvB):", [(c["height"], c["fee"], c["feerate"]) for c in children])
    assert len(children) >= 2, children
    assert all(a["feerate"] < b["feerate"] and a["fee"] < b["fee"] for a, b in zip(children, children[1:]))
    assert all(c["feerate"] <= 100_000 for c in children)  # the default cap
    mempool = bitcoind.rpc.getrawmempool()
    assert children[-1]["txid"] in mempool and not any(c["txid"] in mempool for c in children[:-1])

    # The distribution confirms instead.
    mine_empty(bitcoind, nodes, txs=[distribution.to_hex()])
    assert bitcoind.rpc.getrawtransaction(distribution.txid, True)["confirmations"] == 1
    wait_for(lambda: progress(leaver)["status"] == "conflicted")
    p = progress(leaver)
    [conflict] = p["conflicts"]
    assert conflict["tx"] == "path/0" and conflict["spent_by"] == distribution.txid
    assert conflict["kind"] == "distribution" and conflict["outpoint"] == rec["funding_outpoint"]
    assert sorted(p["dropped"]) == sorted(p["published"] + p["dropped"]) and "path/1" in p["dropped"]
    # Nothing is retried and nothing errors, block after block.
    error = p["last_error"]
    mine(bitcoind, nodes, 5)
    assert progress(leaver)["status"] == "conflicted" and progress(leaver)["last_error"] == error
    leaver.daemon.logs_catchup()
    assert sum("can no longer confirm" in line for line in leaver.daemon.logs) == 1
    assert not [o for o in leaver.rpc.listfunds()["outputs"] if o.get("reserved")]  # the child's coin is back
    # Each client is paid its channel's capacity by the distribution.
    for c in clients:
        wait_for(lambda: any(o["txid"] == distribution.txid and o["status"] == "confirmed"
                             for o in c.rpc.listfunds()["outputs"]))
        paid = [o["amount_msat"] // 1000 for o in c.rpc.listfunds()["outputs"] if o["txid"] == distribution.txid]
        print(f"client {c.info['id'][:8]} paid {paid} sat by the distribution")
        assert paid == [BALANCE_SAT + INBOUND_SAT]
    assert not leaver.daemon.is_in_log("superscalar.*BROKEN")


def test_exit_after_the_distribution_stops_at_once(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """An exit started when the distribution confirmed long before (older than any block the exit
    reads): bitcoind refuses the root for its spent input; the record names the distribution."""
    lsp, clients = start_network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    nodes = [lsp, *clients]
    leaver = clients[0]
    rec = factory_record(leaver, res["factory_id"])
    distribution = Tx.from_hex(rec["distribution"])
    [view] = leaver.rpc.call("superscalar-list")["factories"]
    while bitcoind.rpc.getblockcount() < view["dying_height"]:
        mine(bitcoind, nodes)
    bitcoind.rpc.sendrawtransaction(distribution.to_hex())
    mine(bitcoind, nodes, 3)
    p = leaver.rpc.call("superscalar-exit", {"factory_id": res["factory_id"]})["exit"]
    assert p["status"] == "conflicted" and p["published"] == []
    [conflict] = p["conflicts"]
    assert conflict["tx"] == "path/0" and conflict["kind"] == "distribution"
    assert conflict["spent_by"] == distribution.txid and conflict["outpoint"] == rec["funding_outpoint"]
    mine(bitcoind, nodes, 2)
    assert progress(leaver)["status"] == "conflicted"
    assert not leaver.daemon.is_in_log("superscalar.*BROKEN")
