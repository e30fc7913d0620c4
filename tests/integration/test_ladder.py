"""The LSP's ladder (lsp/ladder.py) on real lightningd: clients queued with superscalar-ladder-add get a
factory started by the LSP itself, at most one per interval, and several factories are alive at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pyln.testing.utils import sync_blockheight, wait_for

pytestmark = pytest.mark.lightningd


def lsp_factories(lsp: Any) -> list[dict[str, Any]]:
    return [f for f in lsp.rpc.call("superscalar-list")["factories"] if f["role"] == "lsp"]


def test_ladder_starts_one_factory_per_interval(node_factory: Any, bitcoind: Any, plugin_path: Path) -> None:
    common = {"plugin": str(plugin_path), "superscalar-profile": "regtest"}
    lsp = node_factory.get_node(options={**common, "superscalar-lsp": "true", "superscalar-ladder": "true",
                                         "superscalar-ladder-interval-blocks": "4"})
    clients = node_factory.get_nodes(3, opts={**common, "superscalar-join": lsp.info["id"]})
    for c in clients:
        c.rpc.connect(lsp.info["id"], "localhost", lsp.port)
    lsp.fundwallet(10_000_000)
    assert lsp.rpc.call("superscalar-ladder")["waiting"] == []

    for c in clients[:2]:
        lsp.rpc.call("superscalar-ladder-add", {"id": c.info["id"], "inbound_sat": 200_000, "balance_sat": 10_000})
    start = bitcoind.rpc.getblockcount()
    bitcoind.generate_block(1)  # the ladder acts on a block
    # the ladder records the factory it started once the ceremony returned (its record exists earlier)
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 1)
    assert len(lsp_factories(lsp)) == 1
    status = lsp.rpc.call("superscalar-ladder")
    [first] = status["alive"]
    assert status["waiting"] == [] and status["last_start_height"] == start + 1
    # the interval counts from the later of the ladder's own start height and the factory's start_height
    # (lightningd's getinfo height, which the block notification can be one ahead of)
    assert status["next_start_height"] == max(first["start_height"], start + 1) + 4
    next_start = status["next_start_height"]
    wait_for(lambda: len(bitcoind.rpc.getrawmempool()) == 1)  # its funding
    bitcoind.generate_block(1)

    # A client queued now waits for the interval: no factory at the next blocks.
    lsp.rpc.call("superscalar-ladder-add", {"id": clients[2].info["id"], "inbound_sat": 150_000})
    bitcoind.generate_block(1)
    sync_blockheight(bitcoind, [lsp])
    assert len(lsp_factories(lsp)) == 1 and len(lsp.rpc.call("superscalar-ladder")["waiting"]) == 1
    while bitcoind.rpc.getblockcount() < next_start:
        bitcoind.generate_block(1)
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 2)
    wait_for(lambda: len(bitcoind.rpc.getrawmempool()) == 1)
    bitcoind.generate_block(1)

    # And a third, one interval later: three factories alive at once, each listed by the ladder.
    lsp.rpc.call("superscalar-ladder-add", {"id": clients[0].info["id"], "inbound_sat": 100_000})
    bitcoind.generate_block(4)
    wait_for(lambda: len(lsp.rpc.call("superscalar-ladder")["started"]) == 3)
    status = lsp.rpc.call("superscalar-ladder")
    assert len(status["alive"]) == 3 and len(status["started"]) == 3
    heights = sorted(f["start_height"] for f in status["alive"])
    assert heights[1] - heights[0] >= 4 and heights[2] - heights[1] >= 4  # one per interval
    # Each client holds its factories: the first client is in two.
    wait_for(lambda: len(clients[0].rpc.call("superscalar-list")["factories"]) == 2)
    assert len(clients[2].rpc.call("superscalar-list")["factories"]) == 1
