"""chain/forget.py: retired channels forgotten once their funding output provably cannot exist, and the
factory's records archived ARCHIVE_AFTER_BLOCKS later (what keeps a long-running node's datastore and
per-block work flat)."""

from __future__ import annotations

from typing import Any, Optional

from superscalar.chain.close_watch import CONFIRMED
from superscalar.chain.forget import ARCHIVE_AFTER_BLOCKS, Forgetter
from superscalar.cln.store import Store
from superscalar.factory.params import regtest_params

from ...fakes import MemoryDatastore

LIVE_ROOT = "aa" * 32 + ":0"
DEAD_ROOT = "bb" * 32 + ":0"


class Node(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.channels: list[dict[str, Any]] = []
        self.unspent = {LIVE_ROOT}
        self.rpc = self
        self.refuse: set[str] = set()  # channels lightningd will not forget yet (HTLCs attached)

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]:
        return [c for c in self.channels if peer is None or c["peer_id"] == peer]

    def output_exists(self, txid: str, vout: int) -> bool:
        return f"{txid}:{vout}" in self.unspent

    def call(self, method: str, params: dict[str, Any]) -> Any:
        assert method == "dev-forget-channel"
        if params["channel_id"] in self.refuse:
            raise RuntimeError("channel has HTLCs")
        self.channels = [c for c in self.channels if c["channel_id"] != params["channel_id"]]
        return {}


PARAMS = regtest_params(3, 50)  # distribution at 50 + 30 + 10


def lsp_factory(store: Store, node: Node, fid: str, root: str, retired: bool, state: str = "CLOSINGD_COMPLETE") -> None:
    channels = [{"channel_id": f"{fid[:2]}{i:062x}", "peer_id": f"02{i:064x}"} for i in range(3)]
    node.channels += [{**c, "state": state, "funding_txid": "cc" * 32, "funding_outnum": i}
                      for i, c in enumerate(channels)]
    store.put(fid, "factory", {"role": "lsp", "funding_outpoint": root, "channels": channels,
                               "params": PARAMS.serialize().decode(),
                               "close": {"status": CONFIRMED, "retired": retired, "txid": "dd" * 32}})
    store.put(fid, "nonces", {"scratch": True})


def test_forgotten_factories_are_archived_and_the_live_one_kept() -> None:
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    logs: list[str] = []
    forgetter = Forgetter(node, store, lambda text, level="info": logs.append(text), forget=True)
    lsp_factory(store, node, "11" * 32, DEAD_ROOT, retired=True)
    lsp_factory(store, node, "22" * 32, LIVE_ROOT, retired=True)  # its root unspent: not provably dead
    lsp_factory(store, node, "33" * 32, DEAD_ROOT, retired=False)  # its replacement not deep yet
    node.refuse.add("11" + f"{1:062x}")
    forgetter.on_block(100)
    assert forgetter.forgotten == 2 and len(node.channels) == 7  # one refused: tried again
    node.refuse.clear()
    forgetter.on_block(101)
    assert forgetter.forgotten == 3 and (store.get("11" * 32, "factory") or {})["forgotten_height"] == 101
    for height in range(102, 101 + ARCHIVE_AFTER_BLOCKS):
        forgetter.on_block(height)
    assert forgetter.archived == 0 and "11" * 32 in store.factory_ids()
    forgetter.on_block(101 + ARCHIVE_AFTER_BLOCKS)
    assert store.factory_ids() == ["22" * 32, "33" * 32]
    archive = store.archived()
    assert (archive["factories"], archive["channels"]) == (1, 3)
    [summary] = archive["recent"]
    assert summary["factory_id"] == "11" * 32 and summary["ended_by"] == "dd" * 32
    assert not [k for k in node.data if k[2] == "11" * 32 and k[1] == "factories"]  # every record gone
    # a restart: nothing is forgotten or archived twice, and the others are still waiting
    again = Forgetter(node, store, lambda text, level="info": None, forget=True)
    again.on_block(200)
    assert again.forgotten == 0 and again.archived == 0 and len(node.channels) == 6


def test_a_channel_back_in_lightningd_keeps_its_factory() -> None:
    """A channel of the factory listed again (e.g. its leaf reorged back in) stops the archive."""
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    forgetter = Forgetter(node, store, lambda text, level="info": None, forget=True)
    lsp_factory(store, node, "11" * 32, DEAD_ROOT, retired=True)
    forgetter.on_block(100)
    node.channels.append({"channel_id": "11" + f"{0:062x}", "peer_id": "02" + f"{0:064x}", "state": "CHANNELD_NORMAL"})
    forgetter.on_block(100 + ARCHIVE_AFTER_BLOCKS)
    assert store.archived()["factories"] == 0 and store.factory_ids() == ["11" * 32]


def test_a_crash_mid_archive_finishes_on_restart() -> None:
    """The summary is written first and the factory record deleted last: killed in between, the
    factory is archived again on restart (its summary kept), never half-read as live."""
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    lsp_factory(store, node, "11" * 32, DEAD_ROOT, retired=True)
    forgetter = Forgetter(node, store, lambda text, level="info": None, forget=True)
    forgetter.on_block(100)
    deleted: list[tuple[str, ...]] = []
    real_del = node.datastore_del

    def dies_after_one(key: list[str]) -> None:
        if deleted:
            raise KeyboardInterrupt("kill -9")
        deleted.append(tuple(key))
        real_del(key)
    node.datastore_del = dies_after_one  # type: ignore[method-assign]
    try:
        forgetter.on_block(100 + ARCHIVE_AFTER_BLOCKS)
    except KeyboardInterrupt:
        pass
    assert deleted == [("superscalar", "factories", "11" * 32, "nonces")]  # the factory record still there
    node.datastore_del = real_del  # type: ignore[method-assign]
    store = Store(node)  # type: ignore[arg-type]
    restarted = Forgetter(node, store, lambda text, level="info": None, forget=True)
    restarted.on_block(101 + ARCHIVE_AFTER_BLOCKS)
    restarted.on_block(101 + 2 * ARCHIVE_AFTER_BLOCKS)
    assert store.factory_ids() == [] and store.archived()["factories"] == 1  # counted once


def test_the_archive_stays_small_over_a_year() -> None:
    """A year of rollovers archives hundreds of factories: the document keeps their count and only the
    newest ARCHIVE_KEPT summaries."""
    from superscalar.cln.store import ARCHIVE_KEPT

    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    for i in range(400):
        store.put(f"{i:064x}", "factory", {"role": "lsp"})
        store.archive_factory(f"{i:064x}", {"channel_ids": ["c"] * 64})
    archive = store.archived()
    assert (archive["factories"], archive["channels"]) == (400, 400 * 64) and store.factory_ids() == []
    assert [r["factory_id"] for r in archive["recent"]] == [f"{i:064x}" for i in range(400 - ARCHIVE_KEPT, 400)]
    assert len(node.data) == 1  # that document alone


def test_a_channel_its_peer_has_not_retired_waits_for_the_peer() -> None:
    """A retirement its peer has not signed (the peer was offline: CHANNELD_SHUTTING_DOWN) leaves the
    peer taking the channel for a live one: it is forgotten once the peer came back and signed, or
    FORGET_AWAY_BLOCKS after the distribution for a peer that never comes back."""
    from superscalar.chain.forget import FORGET_AWAY_BLOCKS

    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    forgetter = Forgetter(node, store, lambda text, level="info": None, forget=True)
    lsp_factory(store, node, "11" * 32, DEAD_ROOT, retired=True, state="CHANNELD_SHUTTING_DOWN")
    lsp_factory(store, node, "44" * 32, DEAD_ROOT, retired=True, state="CHANNELD_SHUTTING_DOWN")
    forgetter.on_block(100)
    assert forgetter.forgotten == 0 and len(node.channels) == 6
    for ch in node.channels[:3]:  # the first factory's peers came back: the mutual closes were signed
        ch["state"] = "CLOSINGD_COMPLETE"
    forgetter.on_block(101)
    assert forgetter.forgotten == 3 and len(node.channels) == 3
    forgetter.on_block(PARAMS.distribution_height + FORGET_AWAY_BLOCKS - 1)
    assert len(node.channels) == 3
    forgetter.on_block(PARAMS.distribution_height + FORGET_AWAY_BLOCKS)
    assert forgetter.forgotten == 6 and node.channels == []
