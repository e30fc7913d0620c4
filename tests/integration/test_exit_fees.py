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
from .test_factory_plugin import BALANCE_SAT, channel_with, create_factory

pytestmark = pytest.mark.lightningd

MIN_RELAY_BTC_PER_KVB = "0.00005"  # 5 sat/vB: above the regtest profile's 2 sat/vB tree fee rate
MAX_FEERATE = 20_000  # sat/kvB: superscalar-exit-max-feerate-perkvb in these tests
ANCHOR_SAT = 240  # what a CPFP child takes from its parent's P2A anchor into the wallet


def start_network(node_factory: Any, plugin_path: Path, n_clients: int) -> tuple[Any, list[Any]]:
    """As test_factory_plugin.start_network, with the exit fee cap of these tests."""
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest",
              "superscalar-exit-max-feerate-perkvb": MAX_FEERATE}
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


def test_exit_below_min_relay_fee_goes_as_package(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    # bitcoind refuses anything below 5 sat/vB: every tree transaction (2 sat/vB) alone.
    bitcoind.stop()
    bitcoind.cmd_line += [f"-minrelaytxfee={MIN_RELAY_BTC_PER_KVB}"]
    bitcoind.start()
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
