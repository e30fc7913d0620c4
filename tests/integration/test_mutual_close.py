"""A cooperative `close` of a factory channel whose leaf is not on chain leaves the tree alone: only
a unilateral close makes the plugin publish an exit path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from superscalar.bitcoin.tx import Tx

from .test_factory_plugin import channel_with, create_factory, start_network

pytestmark = pytest.mark.lightningd


def tree_txids(node: Any, factory_id: str) -> set[str]:
    store = node.rpc.call("listdatastore", {"key": ["superscalar", "factories", factory_id, "factory"]})
    rec = json.loads(store["datastore"][0]["string"])["data"]
    return {t[1] and Tx.from_hex(t[1]).txid for t in rec["txs"]}


def test_mutual_close_leaves_the_tree_alone(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    lsp, clients = start_network(node_factory, plugin_path, 4)
    res = create_factory(lsp, clients, bitcoind)
    nodes = [lsp, *clients]
    closer = clients[1]
    channel = channel_with(closer, lsp)
    assert channel["peer_connected"]
    result = closer.rpc.close(channel["channel_id"])
    assert result["type"] == "mutual", result
    # CLN signed a closing transaction that spends the leaf output: it cannot be broadcast.
    wait_for(lambda: channel_with(closer, lsp)["state"] in ("CLOSINGD_COMPLETE", "ONCHAIN"))
    print("close:", result)
    closing = (result.get("txids") or [result.get("txid")])[0]
    tree = tree_txids(lsp, res["factory_id"])
    for _ in range(6):
        bitcoind.generate_block(1)
        sync_blockheight(bitcoind, nodes)
    mempool = set(bitcoind.rpc.getrawmempool())
    assert not tree & mempool and closing not in mempool
    height = bitcoind.rpc.getblockcount()
    for h in range(height - 6, height + 1):
        block = bitcoind.rpc.getblock(bitcoind.rpc.getblockhash(h))
        assert not tree & set(block["tx"]), h
    print(f"closer's channel: {channel_with(closer, lsp)['state']}; closing tx {closing} never broadcast; "
          f"{len(tree)} tree transactions, none published")
    for node in (closer, lsp):
        [view] = node.rpc.call("superscalar-list")["factories"]
        assert view["exit_progress"]["status"] == "none", view["exit_progress"]
    for c in clients:
        if c is not closer:
            assert channel_with(c, lsp)["state"] == "CHANNELD_NORMAL"
    assert not any(n.daemon.is_in_log("plugin-superscalar.*BROKEN") for n in nodes)
