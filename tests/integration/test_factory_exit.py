"""A client leaves unilaterally: its signed path goes on chain block by block, respecting every
relative wait, CLN closes the leaf channel on chain and the client's money reaches its wallet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx

from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT as INBOUND, channel_with, create_factory, pay, start_network

pytestmark = pytest.mark.lightningd

OPENER_CLOSE_COST = 10_000  # sat: commitment fee and two anchors at regtest feerates, an upper bound


def wallet_sat(node: Any) -> int:
    return sum(o["amount_msat"] // 1000 for o in node.rpc.listfunds()["outputs"] if o["status"] == "confirmed")


def swept_sat(lsp: Any) -> int:
    """What the LSP's own sweeps (chain/lifecycle.py: L-stock after its CSV, timed-out outputs) brought to
    its wallet so far (confirmed)."""
    txids = {s["txid"] for f in lsp.rpc.call("superscalar-list")["factories"] for s in f.get("sweeps", {}).values()}
    return sum(o["amount_msat"] // 1000 for o in lsp.rpc.listfunds()["outputs"]
               if o["status"] == "confirmed" and o["txid"] in txids)


def exit_until_paid(bitcoind: Any, client: Any, nodes: list[Any], factory_id: str, before: int) -> list[dict[str, Any]]:
    """Start the client's exit and mine one block at a time until its channel money is in its wallet."""
    view = client.rpc.call("superscalar-exit", {"factory_id": factory_id})
    # The transactions with no relative wait go out at once: the root's (kickoff or static node) and,
    # under a static root, the leaf's kickoff as its child (version 3: one unconfirmed parent).
    assert view["exit"]["published"][0] == "path/0"
    for i in range(200):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)
        if i == 3:  # the exit resumes by itself after a restart
            client.restart()
            sync_blockheight(bitcoind, [client])
        if wallet_sat(client) > before:
            break
    [rec] = client.rpc.call("superscalar-list")["factories"]
    return [rec]


def check_path_on_chain(bitcoind: Any, client: Any) -> list[int]:
    """Every path transaction confirmed, each at least its wait after its parent; their heights."""
    [rec] = client.rpc.call("superscalar-list")["factories"]
    store = client.rpc.call("listdatastore", {"key": ["superscalar", "factories", rec["factory_id"], "factory"]})
    import json
    data = json.loads(store["datastore"][0]["string"])["data"]
    heights = []
    for tx_hex, wait in zip(data["signed_path"], data["path_waits"]):
        info = bitcoind.rpc.getrawtransaction(Tx.from_hex(tx_hex).txid, True)
        height = bitcoind.rpc.getblockheader(info["blockhash"])["height"]
        if heights:
            assert height - heights[-1] >= wait, (heights, height, wait)
        heights.append(height)
    return heights


def test_client_exits_alone_while_others_keep_working(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 4)
    res = create_factory(lsp, clients, bitcoind)
    bitcoind.generate_block(1)
    leaver = clients[1]
    balance = channel_with(leaver, lsp)["to_us_msat"] // 1000
    before = wallet_sat(leaver)
    exit_until_paid(bitcoind, leaver, [lsp, *clients], res["factory_id"], before)
    heights = check_path_on_chain(bitcoind, leaver)
    assert len(heights) == 3  # the static root, the leaf's kickoff and state
    gained = wallet_sat(leaver) - before
    assert balance - 5_000 <= gained <= balance, (balance, gained)
    # The other clients' channels stay open and carry payments: those on other leaves, and the
    # leaver's leaf-mate, whose channel's funding (the shared leaf) is now on chain.
    leaves = [ch["funding_outpoint"].split(":")[0] for ch in res["channels"]]
    assert sum(leaf == leaves[1] for leaf in leaves) == 2  # leaf arity 2: one leaf-mate
    for i, c in enumerate(clients):
        if c is not leaver:
            assert channel_with(c, lsp)["state"] == "CHANNELD_NORMAL"
            assert pay(lsp, c, 3_000, f"after-exit-{i}") == 0


def test_client_exits_alone_when_the_lsp_is_gone(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    bitcoind.generate_block(1)
    leaver = clients[0]
    balance = channel_with(leaver, lsp)["to_us_msat"] // 1000
    assert balance == BALANCE_SAT
    lsp.stop()
    before = wallet_sat(leaver)
    exit_until_paid(bitcoind, leaver, clients, res["factory_id"], before)
    check_path_on_chain(bitcoind, leaver)
    gained = wallet_sat(leaver) - before
    assert balance - 5_000 <= gained <= balance, (balance, gained)

    # The LSP was offline for the whole exit (path, leaf and commitment confirmed meanwhile). It
    # restarts, keeps running, and its side of that channel reaches its wallet.
    lsp.start()
    lsp_side = INBOUND
    sync_blockheight(bitcoind, [lsp])
    for _ in range(20):
        if any(o["status"] == "confirmed" and lsp_side - 5_000 <= o["amount_msat"] // 1000 <= lsp_side
               for o in lsp.rpc.listfunds()["outputs"]):
            break
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp])
    outs = [o["amount_msat"] // 1000 for o in lsp.rpc.listfunds()["outputs"] if o["status"] == "confirmed"]
    assert any(lsp_side - 5_000 <= v <= lsp_side for v in outs), outs
    assert lsp.rpc.getinfo()["id"] == lsp.info["id"]  # lightningd is still running


def test_client_force_close_offline_costs_lsp_nothing(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 2)
    create_factory(lsp, clients, bitcoind)
    bitcoind.generate_block(1)
    client = clients[0]
    lsp_before, client_before = wallet_sat(lsp), wallet_sat(client)
    channel = channel_with(client, lsp)
    client.rpc.disconnect(lsp.info["id"], force=True)
    assert client.rpc.close(channel["channel_id"], 1)["type"] == "unilateral"
    # The commitment cannot confirm before the leaf: the client's plugin publishes its path.
    wait_for(lambda: client.rpc.call("superscalar-list")["factories"][0]["exit_progress"]["status"] != "none")
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    for _ in range(200):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, *clients])
        if wallet_sat(lsp) - lsp_before - swept_sat(lsp) >= INBOUND - OPENER_CLOSE_COST \
                and wallet_sat(client) > client_before:
            break
    # The LSP opened the channel, so it pays the commitment's fee and anchors, as in any CLN close. (Its
    # sweep of the leaf's L-stock, once the leaf's CSV passed, is counted apart.)
    assert INBOUND - OPENER_CLOSE_COST <= wallet_sat(lsp) - lsp_before - swept_sat(lsp) <= INBOUND
    assert BALANCE_SAT - 5_000 <= wallet_sat(client) - client_before <= BALANCE_SAT
    assert lsp.rpc.getinfo()["id"]  # lightningd kept running


def test_lsp_exits_one_clients_path(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    bitcoind.generate_block(1)
    target = clients[1]
    lsp_before, client_before = wallet_sat(lsp), wallet_sat(target)
    view = lsp.rpc.call("superscalar-exit", {"factory_id": res["factory_id"], "peer_id": target.info["id"]})
    assert view["exit"]["published"] == ["kickoff/0"]
    with pytest.raises(Exception, match="not a client of this factory"):
        lsp.rpc.call("superscalar-exit", {"factory_id": res["factory_id"], "peer_id": lsp.info["id"]})
    for _ in range(100):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, *clients])
        if wallet_sat(target) > client_before and wallet_sat(lsp) > lsp_before:
            break
    [lsp_view] = lsp.rpc.call("superscalar-list")["factories"]
    assert lsp_view["exit_progress"]["status"] == "closed"
    assert wallet_sat(target) - client_before == BALANCE_SAT  # a mutual close: the opener pays its fee
    assert INBOUND - OPENER_CLOSE_COST <= wallet_sat(lsp) - lsp_before <= INBOUND


def test_exit_bumps_a_stuck_tx_by_cpfp_on_its_anchor(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    leaver = clients[0]
    leaver.fundwallet(200_000)  # the coin the CPFP child spends
    view = leaver.rpc.call("superscalar-exit", {"factory_id": res["factory_id"]})
    assert view["exit"]["published"] == ["path/0"]
    kickoff = next(t for t in bitcoind.rpc.getrawmempool(True).items())
    txid, entry = kickoff
    # Make the root kickoff unattractive to miners: its pre-agreed fee no longer counts.
    fee_sat = int(round(float(entry["fees"]["base"]) * 10**8))
    bitcoind.rpc.prioritisetransaction(txid, 0, -fee_sat)
    for _ in range(4):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, *clients])
        progress = leaver.rpc.call("superscalar-list")["factories"][0]["exit_progress"]
        if "path/0" in progress["confirmed"]:
            break
    assert "path/0" in progress["bumped"], progress
    child = progress["bumped"]["path/0"]
    parent_block = bitcoind.rpc.getrawtransaction(txid, True)["blockhash"]
    assert bitcoind.rpc.getrawtransaction(child, True)["blockhash"] == parent_block  # mined together
    # The exit then goes on to the end.
    before = wallet_sat(leaver)
    for _ in range(60):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, *clients])
        if leaver.rpc.call("superscalar-list")["factories"][0]["exit_progress"]["status"] == "closed" \
                and wallet_sat(leaver) > before:
            break
    assert wallet_sat(leaver) - before >= BALANCE_SAT - 5_000
