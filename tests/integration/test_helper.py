"""A helper (issue 23): another node that watches a client's leaf channel while the client is offline
and publishes the penalty when the LSP puts an old commitment on chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx
from superscalar.crypto.tower_blob import locator
from superscalar.factory.params import FactoryParams

from .test_close_rollover import mine_until, no_broken, record
from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, channel_with, create_factory, pay

pytestmark = pytest.mark.lightningd


def network(node_factory: Any, plugin_path: Path, n: int) -> tuple[Any, Any, list[Any]]:
    """A helper, an LSP (funded) and `n` clients that name the helper, each connected to both."""
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    helper = node_factory.get_node(options={**common, "superscalar-helper": "true"})
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    clients = node_factory.get_nodes(n, opts={**common, "superscalar-join": lsp.info["id"],
                                              "superscalar-helpers": helper.info["id"], "may_reconnect": True})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
        c.rpc.connect(helper.info["id"], "localhost", helper.port)
    lsp.fundwallet(10_000_000)
    return helper, lsp, clients


def test_helper_punishes_old_leaf_commitment(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    helper, lsp, [client] = network(node_factory, plugin_path, 1)
    res = create_factory(lsp, [client], bitcoind)
    pay(lsp, client, 10_000, "first")
    old = lsp.rpc.call("dev-sign-last-tx", {"id": client.info["id"]})["tx"]  # the LSP's commitment now
    old_tx = Tx.from_hex(old)
    lsp_old_sat = max(o.value for o in old_tx.outputs)  # its to_local: its inbound less what it paid
    assert lsp_old_sat > INBOUND_SAT - 20_000
    pay(lsp, client, 100_000, "second")  # the old commitment is revoked: the LSP would gain 100,000 sat
    # every revocation went to the helper, sealed; the old commitment's among them
    wait_for(lambda: client.rpc.call("superscalar-getinfo")["watchtowers"]["pending_blobs"] == 0)
    info = helper.rpc.call("superscalar-getinfo")["helper"]
    assert info["clients"] == 1 and info["blobs"] >= 2
    stored = helper.rpc.call("listdatastore", {"key": ["superscalar", "tower", client.info["id"]]})["datastore"]
    assert locator(old_tx.txid).hex() in {e["key"][-1] for e in stored}
    assert all(old_tx.txid not in e.get("string", "") for e in stored)  # it sees a locator, not the txid

    leaf_txid = channel_with(client, lsp)["funding_txid"]
    client.stop()  # the client sleeps; the LSP puts the leaf on chain, then its old commitment
    lsp.rpc.call("superscalar-exit", {"factory_id": res["factory_id"], "peer_id": client.info["id"]})
    for _ in range(100):
        if leaf_txid in bitcoind.rpc.getrawmempool():
            break
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [lsp, helper])
    assert leaf_txid in bitcoind.rpc.getrawmempool()
    lsp.stop()  # before its own close of the channel can go out
    bitcoind.generate_block(1)
    assert bitcoind.rpc.getrawtransaction(leaf_txid, True)["confirmations"] == 1
    bitcoind.rpc.sendrawtransaction(old)
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [helper])
    wait_for(lambda: helper.rpc.call("superscalar-getinfo")["helper"]["penalties"])
    [penalty] = helper.rpc.call("superscalar-getinfo")["helper"]["penalties"]
    assert penalty["commitment_txid"] == old_tx.txid and penalty["error"] is None
    wait_for(lambda: penalty["penalty_txid"] in bitcoind.rpc.getrawmempool())
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [helper])
    wait_for(lambda: helper.rpc.call("superscalar-getinfo")["helper"]["penalties"][0]["confirmed_height"])
    spent = bitcoind.rpc.getrawtransaction(penalty["penalty_txid"], True)
    assert spent["vin"][0]["txid"] == old_tx.txid
    penalty_sat = round(spent["vout"][0]["value"] * 100_000_000)
    assert lsp_old_sat - 5_000 <= penalty_sat < lsp_old_sat  # the LSP's whole balance, less the fee
    # the client comes back: the penalty paid its wallet
    client.start()
    sync_blockheight(bitcoind, [client])
    wait_for(lambda: any(o["txid"] == penalty["penalty_txid"] and o["status"] == "confirmed"
                         for o in client.rpc.listfunds()["outputs"]))
    got = sum(o["amount_msat"] // 1000 for o in client.rpc.listfunds()["outputs"] if o["txid"] == penalty["penalty_txid"])
    assert got == penalty_sat
    assert got + BALANCE_SAT > BALANCE_SAT + 100_000  # more than the client's own balance in that state


def test_helper_publishes_sleeping_clients_distribution(node_factory: Any, bitcoind: Any,
                                                        plugin_path: Path) -> None:
    """The LSP vanishes before the distribution height, both clients sleep through it, own no coin, and
    the fee market ignores the distribution and its 4x variant (`prioritisetransaction`): their helper
    publishes the 16x variant, which confirms before the LSP's timeout and pays each client its
    channel's whole capacity, to the sat, found in its wallet when it wakes. The helper paid nothing."""
    helper, lsp, clients = network(node_factory, plugin_path, 2)
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    rec = record(clients[0], fid)
    base = bitcoind.rpc.decoderawtransaction(rec["distribution"])
    variants = [bitcoind.rpc.decoderawtransaction(h) for h in rec["distribution_variants"]]
    funding_value = record(lsp, fid)["funding_value_sat"]
    # each client hands its helper the signed distribution (at the next block), and the helper checks it
    mine_until(bitcoind, [lsp, helper, *clients], lambda: all(
        c.rpc.call("superscalar-getinfo")["watchtowers"]["factories"].get(fid) == {helper.info["id"]: "kept"}
        for c in clients))
    watched = helper.rpc.call("superscalar-getinfo")["helper"]
    assert watched["factories_watched"] == 2  # one per client (each could be the only one left)
    assert {d["until_height"] for d in watched["distributions"]} == {params.timeout(0)}

    def fee_sat(tx: dict[str, Any]) -> int:
        return funding_value - sum(round(o["value"] * 100_000_000) for o in tx["vout"])

    for tx in (base, variants[0]):  # the market ignores these: as if they paid nothing
        bitcoind.rpc.prioritisetransaction(tx["txid"], 0, -fee_sat(tx))
    assert all(c.rpc.listfunds()["outputs"] == [] for c in clients)  # the clients own no coin
    helper_coins = helper.rpc.listfunds()["outputs"]
    lsp.stop()
    for c in clients:
        c.stop()
    bitcoind.generate_block(params.distribution_height - bitcoind.rpc.getblockcount())
    sync_blockheight(bitcoind, [helper])
    wait_for(lambda: variants[1]["txid"] in bitcoind.rpc.getrawmempool())
    helper.daemon.wait_for_log("trying its variant at 16x")
    mine_until(bitcoind, [helper], lambda: bitcoind.rpc.gettxout(variants[1]["txid"], 0, False) is not None, blocks=3)
    mined = bitcoind.rpc.getrawtransaction(variants[1]["txid"], True)
    assert bitcoind.rpc.getblockcount() < params.timeout(0)
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [helper])
    wait_for(lambda: helper.rpc.call("superscalar-getinfo")["helper"]["factories_watched"] == 0)
    assert [d["txid"] for d in helper.rpc.call("superscalar-getinfo")["helper"]["distributions_confirmed"]] == \
        [variants[1]["txid"]] * 2
    assert helper.rpc.listfunds()["outputs"] == helper_coins  # it spent nothing
    for i, c in enumerate(clients):
        paid = round(mined["vout"][i]["value"] * 100_000_000)
        assert paid == BALANCE_SAT + INBOUND_SAT
        c.start()
        sync_blockheight(bitcoind, [c])
        wait_for(lambda: sum(o["amount_msat"] for o in c.rpc.listfunds()["outputs"]
                             if o["txid"] == variants[1]["txid"]) == paid * 1000)
    no_broken([helper, *clients])


def test_helper_publishes_coinless_clients_exit_path(node_factory: Any, bitcoind: Any,
                                                     plugin_path: Path) -> None:
    """The LSP stops answering; its client owns no coin and asks its helper to exit for it, then
    sleeps. The market ignores the kickoff's pre-agreed fee (`prioritisetransaction`): the helper bumps
    it by CPFP on its anchor with its own coin and publishes the client's whole path, each transaction
    after its relative wait, before the factory's timeout. The client wakes with its channel funded on
    chain, closes it, and its balance reaches its wallet."""
    helper, lsp, [client] = network(node_factory, plugin_path, 1)
    helper.fundwallet(300_000)  # the coin its CPFP children spend
    res = create_factory(lsp, [client], bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    nodes = [lsp, helper, client]
    # the client hands its signed path over (checked by the helper: every transaction signed for its output)
    mine_until(bitcoind, nodes, lambda: (client.rpc.call("superscalar-getinfo")["watchtowers"]["exit_paths"]
                                         .get(fid, {}).get(helper.info["id"], "")).isalnum())
    path = [Tx.from_hex(h) for h in record(client, fid)["signed_path"]]
    assert client.rpc.listfunds()["outputs"] == []  # no coin of its own
    balance = channel_with(client, lsp)["to_us_msat"] // 1000
    lsp.stop()
    asked = client.rpc.call("superscalar-helper-exit", {"factory_id": fid})
    assert asked["asked"] == [helper.info["id"]]
    wait_for(lambda: [p["started"] for p in helper.rpc.call("superscalar-getinfo")["helper"]["exit_paths"]] == [True])
    client.stop()
    wait_for(lambda: path[0].txid in bitcoind.rpc.getrawmempool())
    entry = bitcoind.rpc.getmempoolentry(path[0].txid)
    bitcoind.rpc.prioritisetransaction(path[0].txid, 0, -int(round(float(entry["fees"]["base"]) * 10**8)))
    for _ in range(80):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [helper])
        if len(helper.rpc.call("superscalar-getinfo")["helper"]["exit_paths"][0]["confirmed"]) == len(path):
            break
    [progress] = helper.rpc.call("superscalar-getinfo")["helper"]["exit_paths"]
    assert progress["confirmed"] == [f"path/{i}" for i in range(len(path))], progress
    assert bitcoind.rpc.getblockcount() < params.timeout(0)
    helper.daemon.logs_catchup()
    exits = helper.rpc.call("listdatastore", {"key": ["superscalar", "helped-exits", f"{client.info['id']}.{fid}",
                                                     "exit"]})["datastore"]
    import json
    bumped = json.loads(exits[0]["string"])["data"]["bumped"]
    assert "path/0" in bumped  # the kickoff went out with the helper's child
    child = bitcoind.rpc.getrawtransaction(bumped["path/0"], True)
    assert child["blockhash"] == bitcoind.rpc.getrawtransaction(path[0].txid, True)["blockhash"]
    # the client wakes: its leaf is on chain, its channel funded; it closes it and is paid
    client.start()
    sync_blockheight(bitcoind, [client])
    [ch] = client.rpc.listpeerchannels(lsp.info["id"])["channels"]
    assert ch["funding_txid"] == path[-1].txid
    client.rpc.close(ch["channel_id"], unilateraltimeout=1)
    for _ in range(40):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, [client])
        if sum(o["amount_msat"] // 1000 for o in client.rpc.listfunds()["outputs"] if o["status"] == "confirmed") \
                >= balance - 5_000:
            break
    got = sum(o["amount_msat"] // 1000 for o in client.rpc.listfunds()["outputs"] if o["status"] == "confirmed")
    assert balance - 5_000 <= got <= balance, (balance, got)
    no_broken([helper, client])


def spender(bitcoind: Any, txid: str, vout: int) -> Any:
    """The confirmed transaction spending txid:vout (looked for in the last 100 blocks), or None."""
    if bitcoind.rpc.gettxout(txid, vout, True) is not None:
        return None
    tip = bitcoind.rpc.getblockcount()
    for h in range(tip, max(0, tip - 100), -1):
        for tx in bitcoind.rpc.getblock(bitcoind.rpc.getblockhash(h), 2)["tx"]:
            if any(i.get("txid") == txid and i.get("vout") == vout for i in tx["vin"]):
                return tx
    return None


def test_client_restores_from_hsm_secret_alone(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    """A client's data directory is lost; it starts again from its hsm_secret alone and restores its
    factory from its helper (checked against its own key, signatures and the chain): the very record it
    had. Its channel died with the disk, so the LSP can neither close nor roll the factory over with it;
    when the LSP closes it, the restored client publishes its path, and the LSP's commitment that
    confirms on its leaf pays the client its balance, to the sat. (Sweeping that output needs the
    channel's keys back: Core Lightning's `recoverchannel`, which fails on this commitment in v26.06.6;
    see docs/helper.md.)"""
    helper, lsp, [client] = network(node_factory, plugin_path, 1)
    res = create_factory(lsp, [client], bitcoind)
    fid = res["factory_id"]
    params = FactoryParams.deserialize(record(lsp, fid)["params"].encode())
    pay(lsp, client, 10_000, "before")
    wait_for(lambda: channel_with(client, lsp)["to_us_msat"] // 1000 == BALANCE_SAT + 10_000)
    bitcoind.generate_block(1)  # the next block sends the newest version of every changed record
    sync_blockheight(bitcoind, [lsp, helper, client])
    wait_for(lambda: client.rpc.call("superscalar-getinfo")["watchtowers"]["backups_pending"] == 0)
    assert client.rpc.call("superscalar-getinfo")["watchtowers"]["backed_up"] == {fid: [helper.info["id"]]}
    before = record(client, fid)
    assert helper.rpc.call("superscalar-getinfo")["helper"]["backups"] == {client.info["id"]: 1}
    # the disk is lost: only hsm_secret is left
    client.stop()
    import shutil
    for item in (Path(client.daemon.lightning_dir) / "regtest").iterdir():
        if item.name != "hsm_secret":
            shutil.rmtree(item) if item.is_dir() else item.unlink()
    client.start()
    assert client.rpc.getinfo()["id"] == client.info["id"] and client.rpc.listpeerchannels()["channels"] == []
    assert client.rpc.listfunds()["outputs"] == []
    client.rpc.connect(helper.info["id"], "localhost", helper.port)
    out = client.rpc.call("superscalar-restore")
    assert [r["factory_id"] for r in out["restored"]] == [fid], out
    assert out["refused"] == [] and out["problems"] == [] and out["static_backups"]
    assert record(client, fid) == before  # what it checked and wrote is what it had
    assert [f["factory_id"] for f in client.rpc.call("superscalar-list")["factories"]] == [fid]
    # The LSP reestablishes the channel the client lost; the fresh lightningd answers with an error (it
    # knows no such channel), so the LSP closes with its latest commitment, which pays the client its
    # balance once the leaf is on chain. The restored client publishes its path for that.
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    path = [Tx.from_hex(h) for h in before["signed_path"]]
    leaf_txid, leaf_vout = res["channels"][0]["funding_outpoint"].split(":")
    assert path[-1].txid == leaf_txid
    mine_until(bitcoind, [lsp, client], lambda: spender(bitcoind, leaf_txid, int(leaf_vout)) is not None, blocks=60)
    assert bitcoind.rpc.getblockcount() < params.timeout(0)
    client.daemon.logs_catchup()
    assert client.daemon.is_in_log("publishing this client's path")
    commitment = spender(bitcoind, leaf_txid, int(leaf_vout))
    assert commitment is not None
    # its output to the client holds the client's balance, to the sat
    assert BALANCE_SAT + 10_000 in [round(o["value"] * 100_000_000) for o in commitment["vout"]], commitment["vout"]
    no_broken([helper, client])
