"""Finality, on real lightningd and bitcoind (regtest, `superscalar-confirm-depth` 3): a cooperative close
is acted on only at three confirmations; its block reorganised away before that (bitcoind's
`invalidateblock`) puts it back to pending on every node, nothing retired, and it settles once it is
three deep again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyln.testing.utils import sync_blockheight, wait_for

from .test_close_rollover import channels_in, mine_until, no_broken, record
from .test_factory_plugin import create_factory

pytestmark = pytest.mark.lightningd
DEPTH = 3


def test_close_reorganised_away_goes_back_to_pending(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest", "superscalar-confirm-depth": str(DEPTH)}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true"}, may_reconnect=True)
    clients = node_factory.get_nodes(2, opts={"may_reconnect": True, **common, "superscalar-join": lsp.info["id"]})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    nodes = [lsp, *clients]
    res = create_factory(lsp, clients, bitcoind)
    fid = res["factory_id"]
    # A client counts its funding only at the depth: until then it signs no close.
    assert all(record(c, fid)["funding"]["status"] == "awaiting" for c in clients)
    bitcoind.generate_block(DEPTH - 1)
    sync_blockheight(bitcoind, nodes)
    wait_for(lambda: all(record(c, fid)["funding"]["status"] == "confirmed" for c in clients))

    out = lsp.rpc.call("superscalar-close", {"factory_id": fid})
    close_txid = out["close_txid"]
    [block] = bitcoind.generate_block(1)
    sync_blockheight(bitcoind, nodes)
    wait_for(lambda: all(record(n, fid)["close"]["status"] == "seen" for n in nodes))
    for c in clients:  # nothing acted on: the channels are not retired
        assert all(ch["state"] == "CHANNELD_NORMAL" for ch in channels_in(c, lsp))

    # The block holding the close is reorganised away; two empty blocks take its place.
    bitcoind.rpc.invalidateblock(block)
    address = bitcoind.rpc.getnewaddress()
    for _ in range(2):
        bitcoind.rpc.generateblock(address, [])
    sync_blockheight(bitcoind, nodes)
    wait_for(lambda: all(record(n, fid)["close"]["status"] in ("signed", "broadcast") for n in nodes))
    for n in nodes:
        assert n.daemon.is_in_log(f"holding {close_txid} was reorganised away")
    assert close_txid in bitcoind.rpc.getrawmempool()

    # Mined again: acted on at the depth, not before.
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, nodes)
    wait_for(lambda: all(record(n, fid)["close"]["status"] == "seen" for n in nodes))
    bitcoind.generate_block(DEPTH - 2)
    sync_blockheight(bitcoind, nodes)
    assert all(record(n, fid)["close"]["status"] == "seen" for n in nodes)
    mine_until(bitcoind, nodes, lambda: all(record(n, fid)["close"]["status"] == "confirmed" for n in nodes))
    mined_at = bitcoind.rpc.getblockheader(bitcoind.rpc.getrawtransaction(close_txid, True)["blockhash"])["height"]
    assert {record(n, fid)["close"]["confirmed_height"] for n in nodes} == {mined_at}
    for c in clients:
        wait_for(lambda: all(ch["state"] != "CHANNELD_NORMAL" for ch in channels_in(c, lsp)))
    no_broken(nodes)
