"""A factory's life after creation, with nobody doing anything by hand: the dying-period warning, the
distribution at the distribution height, the clients' own paths once someone else's exit put the tree
partly on chain, and the LSP's sweeps of L-stock and timed-out outputs (chain/lifecycle.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx
from superscalar.factory.params import FactoryParams

from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, create_factory, start_network

pytestmark = pytest.mark.lightningd

CAPACITY_SAT = BALANCE_SAT + INBOUND_SAT


def view_of(node: Any, fid: str) -> dict[str, Any]:
    return next(f for f in node.rpc.call("superscalar-list")["factories"] if f["factory_id"] == fid)


def record(node: Any, fid: str, name: str = "factory") -> dict[str, Any]:
    [entry] = node.rpc.call("listdatastore", {"key": ["superscalar", "factories", fid, name]})["datastore"]
    return dict(json.loads(entry["string"])["data"])


def mine_to(bitcoind: Any, nodes: list[Any], height: int) -> None:
    while bitcoind.rpc.getblockcount() < height:
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)


def confirmed_height(bitcoind: Any, txid: str) -> int:
    info = bitcoind.rpc.getrawtransaction(txid, True)
    return int(bitcoind.rpc.getblockheader(info["blockhash"])["height"])


def outputs_of(node: Any, txid: str) -> list[int]:
    return [o["amount_msat"] // 1000 for o in node.rpc.listfunds()["outputs"]
            if o["txid"] == txid and o["status"] == "confirmed"]


def test_distribution_pays_clients_left_alone(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 4)
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    lsp_view = view_of(lsp, fid)
    expiry, dist_height = lsp_view["expiry_height"], lsp_view["distribution_height"]
    assert lsp_view["phase"] == "active"
    assert lsp_view["next_phase"] == {"phase": "dying", "height": expiry}
    assert dist_height > expiry and set(lsp_view["timeout_heights"]) == {"0", "1"}
    for c in clients:
        v = view_of(c, fid)
        assert v["phase"] == "active" and v["must_be_online_by_height"] == dist_height - 1
        assert c.rpc.listfunds()["outputs"] == []  # these clients have no coin of their own
    distribution = Tx.from_hex(record(lsp, fid)["distribution"])

    mine_to(bitcoind, nodes, expiry)
    assert view_of(lsp, fid)["phase"] == "dying"
    assert view_of(lsp, fid)["next_phase"] == {"phase": "distributing", "height": dist_height}
    lsp.daemon.wait_for_log(rf"factory {fid} is in its dying period: close or roll it over before height {dist_height}")
    mine_to(bitcoind, nodes, expiry + 2)
    assert lsp.daemon.is_in_log(rf"UNUSUAL.*factory {fid} is in its dying period")
    assert distribution.txid not in bitcoind.rpc.getrawmempool()

    # At the distribution height the funding output is still unspent: every node broadcasts it.
    mine_to(bitcoind, nodes, dist_height)
    for n in nodes:
        n.daemon.wait_for_log(f"broadcast the distribution transaction {distribution.txid}")
        assert view_of(n, fid)["phase"] in ("distributing", "distributed")
    wait_for(lambda: distribution.txid in bitcoind.rpc.getrawmempool())
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, nodes)
    assert confirmed_height(bitcoind, distribution.txid) == dist_height + 1
    print(f"expiry {expiry}, distribution height {dist_height}: distribution {distribution.txid} broadcast by "
          f"all {len(nodes)} nodes, confirmed at {dist_height + 1}, {distribution.vsize} vB")
    for n in nodes:
        wait_for(lambda: view_of(n, fid)["phase"] == "distributed")
        v = view_of(n, fid)
        assert v["distribution"]["confirmed_height"] == dist_height + 1 and v["distribution"]["attempts"] >= 1
        assert "must_be_online_by_height" not in v
    # Each client's wallet gets exactly its channel's capacity; the LSP the rest (its own output).
    for c in clients:
        wait_for(lambda: outputs_of(c, distribution.txid) == [CAPACITY_SAT])
        assert sum(o["amount_msat"] for o in c.rpc.listfunds()["outputs"] if o["status"] == "confirmed") \
            == CAPACITY_SAT * 1000
    # Their channels are retired: each client signed a mutual close that can never confirm (its input is a
    # leaf that will never exist); lightningd lists that close's output as unconfirmed, never spendable.
    for c in clients:
        wait_for(lambda: all(ch["state"] == "CLOSINGD_COMPLETE" for ch in c.rpc.listpeerchannels()["channels"]))
        phantom = [o for o in c.rpc.listfunds()["outputs"] if o["status"] != "confirmed"]
        assert all(o["status"] == "unconfirmed" for o in phantom)
    lsp_out = distribution.outputs[len(clients)].value
    wait_for(lambda: outputs_of(lsp, distribution.txid) == [lsp_out])
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    assert lsp_out == res_funding_value(lsp, fid) - 4 * CAPACITY_SAT - params.anchor_sat \
        - params.fee(distribution.vsize)
    # The next blocks change nothing: no further broadcast, no warning.
    start = len(lsp.daemon.logs)
    mine_to(bitcoind, nodes, dist_height + 3)
    for n in nodes:
        assert view_of(n, fid)["phase"] == "distributed"
    assert not lsp.daemon.is_in_log("in its dying period", start=start)
    assert not lsp.daemon.is_in_log("broadcast the distribution", start=start)


def res_funding_value(lsp: Any, fid: str) -> int:
    return int(record(lsp, fid)["funding_value_sat"])


def test_tree_on_chain_clients_exit_lsp_sweeps(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 6)
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    leaf_timeout = params.timeout(params.height)
    # Three leaves of two clients: one client leaves, its leaf-mate and the next leaf's two stay
    # online, the third leaf's two clients are gone for good.
    by_leaf: dict[str, list[Any]] = {}
    for c, ch in zip(clients, res["channels"]):
        by_leaf.setdefault(ch["funding_outpoint"].split(":")[0], []).append(c)
    (leaf_x, (leaver, mate)), (leaf_y, stayers), (leaf_z, absent) = by_leaf.items()
    for c in absent:
        c.stop()
    online = [lsp, leaver, mate, *stayers]
    lsp_coins = {(o["txid"], o["output"]) for o in lsp.rpc.listfunds()["outputs"]}

    leaver.rpc.call("superscalar-exit", {"factory_id": fid})
    # One of the clients that stay is down while the root confirms: it reads the blocks it missed.
    late = stayers[0]
    late.stop()
    for _ in range(3):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [n for n in online if n is not late])
    late.start()
    for _ in range(80):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, online)
        sweeps = view_of(lsp, fid).get("sweeps", {})
        if len(sweeps) == 3 and all(s["status"] == "confirmed" for s in sweeps.values()):
            break
    lsp_view = view_of(lsp, fid)
    assert lsp_view["phase"] == "exiting" and lsp_view["funding_spent"]["by"] == "tree"

    # The leaf-mate saw a kickoff of its own path confirm and published its path at once; the other
    # leaf's clients theirs later, but before their leaf's timeout. Their channels stay open, now
    # funded on chain.
    assert mate.daemon.is_in_log(f"factory {fid}: tree partly on chain: kickoff")
    for c in stayers:
        assert c.daemon.is_in_log(f"factory {fid}: tree partly on chain: its path must confirm before its leaf's "
                                  f"timeout {leaf_timeout}")
        v = view_of(c, fid)
        assert v["phase"] == "exiting" and v["exit_progress"]["status"] == "closed"
        [ch] = v["channels"]
        assert v["must_be_online_by_height"] == leaf_timeout - ch["early_warning_blocks"]
        assert ch["state"] == "CHANNELD_NORMAL"
    assert confirmed_height(bitcoind, leaf_y) < leaf_timeout
    assert confirmed_height(bitcoind, leaf_x) < leaf_timeout

    # The LSP swept the two confirmed leaves' L-stock after their CSV, and the absent clients' leaf
    # output after its timeout, each for its pre-agreed fee, to its wallet.
    sweeps = lsp_view["sweeps"]
    assert {k.split("/")[0] for k in sweeps} == {"lstock", "timeout"}, sweeps
    assert sorted(s["kind"] for s in sweeps.values()) == ["lstock", "lstock", "timeout"]
    total = 0
    for s in sweeps.values():
        assert s["status"] == "confirmed", s
        tx = Tx.from_hex(bitcoind.rpc.getrawtransaction(s["txid"]))
        prev_txid, prev_vout = s["outpoint"].split(":")
        prevout = Tx.from_hex(bitcoind.rpc.getrawtransaction(prev_txid)).outputs[int(prev_vout)]
        assert s["fee_sat"] == params.fee(tx.vsize) and tx.outputs[0].value == prevout.value - params.fee(tx.vsize)
        height = confirmed_height(bitcoind, s["txid"])
        parent_height = confirmed_height(bitcoind, prev_txid)
        if s["kind"] == "lstock":
            assert prevout.value == params.lstock_sat
            assert prev_txid in (leaf_x, leaf_y) and height >= parent_height + params.lstock_csv_blocks
        else:
            assert prev_txid not in (leaf_x, leaf_y) and height > leaf_timeout
        assert outputs_of(lsp, s["txid"]) == [tx.outputs[0].value]
        total += tx.outputs[0].value
        print(f"sweep {s['kind']}: {prevout.value} sat at {prev_txid}:{prev_vout} (confirmed {parent_height}) -> "
              f"{tx.outputs[0].value} sat, fee {s['fee_sat']} sat ({tx.vsize} vB), confirmed at {height}")
    print(f"leaves confirmed at {confirmed_height(bitcoind, leaf_x)} (leaver) and {confirmed_height(bitcoind, leaf_y)} "
          f"(stayers), leaf timeout {leaf_timeout}; paths started at "
          f"{[record(c, fid, 'lifecycle')['exit_started']['height'] for c in (mate, *stayers)]}")
    # Nothing else reached the LSP's wallet but the sweeps and its side of the leaver's closed channel.
    new = [o for o in lsp.rpc.listfunds()["outputs"] if (o["txid"], o["output"]) not in lsp_coins]
    sweep_txids = {s["txid"] for s in sweeps.values()}
    others = [o for o in new if o["txid"] not in sweep_txids]
    assert sum(o["amount_msat"] for o in new) // 1000 == total + sum(o["amount_msat"] for o in others) // 1000
    leaver_channel = next(ch["funding_outpoint"] for c, ch in zip(clients, res["channels"]) if c is leaver)
    for o in others:
        spent = {f"{i['txid']}:{i['vout']}" for i in bitcoind.rpc.getrawtransaction(o["txid"], True)["vin"]}
        assert leaver_channel in spent, (o, leaver_channel)
