"""Forgetting retired channels (chain/forget.py) against a fake lightningd and store."""

from __future__ import annotations

from typing import Any, Optional

from superscalar.chain.forget import WARN_EVERY_BLOCKS, WARN_THRESHOLD, Forgetter

LSP_PEER = "02" + "aa" * 32


class Node:
    def __init__(self) -> None:
        self.channels: list[dict[str, Any]] = []
        self.unspent: set[str] = set()
        self.forgot: list[str] = []
        self.refuse: set[str] = set()
        self.rpc = self

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        return [c for c in self.channels if peer is None or c["peer_id"] == peer]

    def close(self, channel_id: str, unilateral_after: int = 1) -> dict[str, Any]:
        raise AssertionError("not used")

    def output_exists(self, txid: str, vout: int) -> bool:
        return f"{txid}:{vout}" in self.unspent

    def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert method == "dev-forget-channel"
        if params["channel_id"] in self.refuse:
            raise RuntimeError("This channel has HTLCs attached")
        self.forgot.append(params["channel_id"])
        self.channels = [c for c in self.channels if c["channel_id"] != params["channel_id"]]
        return {"forced": False, "funding_unspent": False}


class Store:
    def __init__(self) -> None:
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.reads = 0

    def factory_ids(self) -> list[str]:
        return sorted({fid for fid, _ in self.records})

    def get(self, factory_id: str, record: str) -> Optional[dict[str, Any]]:
        self.reads += 1
        return self.records.get((factory_id, record))

    def put(self, factory_id: str, record: str, data: dict[str, Any]) -> None:
        self.records[(factory_id, record)] = data


def lsp_factory(store: Store, node: Node, fid: str, n: int, close: Optional[dict[str, Any]] = None) -> list[str]:
    ids = [f"{fid}{i:02d}" * 8 for i in range(n)]
    store.put(fid, "factory", {"role": "lsp", "funding_outpoint": f"{fid * 16}:0", "close": close,
                               "channels": [{"channel_id": cid, "peer_id": f"03{i:064x}"} for i, cid in enumerate(ids)]})
    for i, cid in enumerate(ids):
        node.channels.append({"channel_id": cid, "peer_id": f"03{i:064x}", "state": "CLOSINGD_COMPLETE",
                              "funding_txid": ("e" + fid[:3]) * 16, "funding_outnum": i})
    return ids


def test_forgets_only_retired_channels_whose_outputs_cannot_exist() -> None:
    node, store, logs = Node(), Store(), []
    retired = lsp_factory(store, node, "aaaa", 3, {"status": "confirmed", "retired": True})
    live = lsp_factory(store, node, "bbbb", 2, {"status": "confirmed", "retired": False})  # not retired yet
    node.unspent.add("bbbb" * 16 + ":0")
    f = Forgetter(node, store, lambda text, level="info": logs.append(text), forget=True)
    node.refuse.add(retired[1])  # an HTLC still attached: left, tried again
    f.on_block(100)
    assert node.forgot == [retired[0], retired[2]] and f.forgotten == 2
    assert not store.records[("aaaa", "factory")].get("channels_forgotten")
    node.refuse.clear()
    f.on_block(101)
    assert node.forgot == [retired[0], retired[2], retired[1]]
    assert store.records[("aaaa", "factory")]["channels_forgotten"] is True
    assert {c["channel_id"] for c in node.channels} == set(live)
    reads = store.reads
    f.on_block(102)
    assert store.reads - reads == 2  # the finished factory is not read again; the other one is (and its lifecycle)
    # the other factory's channels retire, but its own funding output is still unspent: kept
    store.records[("bbbb", "factory")]["close"]["retired"] = True
    f.on_block(103)
    assert {c["channel_id"] for c in node.channels} == set(live)
    node.unspent.clear()
    node.unspent.add(node.channels[0]["funding_txid"] + ":0")  # a channel whose own output exists: kept
    f.on_block(104)
    assert [c["channel_id"] for c in node.channels] == [live[0]]


def test_off_it_forgets_nothing_and_warns_daily_above_the_threshold() -> None:
    node, store, logs = Node(), Store(), []
    lsp_factory(store, node, "cccc", WARN_THRESHOLD, {"status": "confirmed", "retired": True})
    f = Forgetter(node, store, lambda text, level="info": logs.append(text), forget=False)
    f.on_block(WARN_EVERY_BLOCKS * 10 + 1)
    assert logs == []
    f.on_block(WARN_EVERY_BLOCKS * 10)
    assert node.forgot == [] and len(logs) == 1
    assert logs[0].startswith(f"{WARN_THRESHOLD} retired factory channels are kept by lightningd")
    assert f.count()[0] == WARN_THRESHOLD
    node.channels.pop()
    f.on_block(WARN_EVERY_BLOCKS * 11)
    assert len(logs) == 1  # below the threshold: quiet
