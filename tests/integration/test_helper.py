"""A helper (issue 23): another node that watches a client's leaf channel while the client is offline
and publishes the penalty when the LSP puts an old commitment on chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx
from superscalar.crypto.tower_blob import locator

from .test_factory_plugin import BALANCE_SAT, INBOUND_SAT, channel_with, create_factory, pay

pytestmark = pytest.mark.lightningd


def test_helper_punishes_old_leaf_commitment(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    helper = node_factory.get_node(options={**common, "superscalar-helper": "true"})
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    client = node_factory.get_node(options={**common, "superscalar-join": lsp.info["id"],
                                            "superscalar-helpers": helper.info["id"]}, may_reconnect=True)
    client.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    client.rpc.connect(helper.info["id"], "localhost", helper.port)
    lsp.fundwallet(10_000_000)
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
