"""The ladder's decisions (lsp/ladder.py `plan`) and its shell over an in-memory datastore."""

from __future__ import annotations

import threading
from typing import Any

from superscalar.lsp.ladder import (
    Create,
    FactorySummary,
    Ladder,
    LadderConfig,
    Rollover,
    WaitForClients,
    Waiting,
    alive,
    plan,
    retry_delay,
)
from superscalar.cln.store import Store
from superscalar.factory.params import regtest_params

from ..fakes import MemoryDatastore

CFG = LadderConfig(interval_blocks=144, max_alive=33)
W = [Waiting("02" + "11" * 32, 0, 500_000, 100), Waiting("03" + "22" * 32, 10_000, 400_000, 101)]


def summary(fid: str, start: int, settled: bool = False, offline: tuple[str, ...] = ()) -> FactorySummary:
    return FactorySummary(fid, start, start + 4320, start + 4320 + 432, settled, ("a", "b"), offline)


def test_first_factory_starts_at_once_then_one_per_interval() -> None:
    assert plan(CFG, 1000, None, W, []) == [Create(tuple(W))]
    assert plan(CFG, 1143, 1000, W, [summary("f1", 1000)]) == []
    assert plan(CFG, 1144, 1000, W, [summary("f1", 1000)]) == [Create(tuple(W))]
    assert plan(CFG, 5000, 1000, [], [summary("f1", 1000)]) == []  # nobody waiting: nothing to start


def test_a_dying_factory_rolls_over_first_or_waits_for_its_clients() -> None:
    f1, f2 = summary("f1", 0), summary("f2", 144, offline=("b",))
    h = f2.expiry_height  # both dying; f1's distribution comes first
    assert plan(CFG, h, 144, [], [f2, f1]) == [Rollover("f1"), WaitForClients("f2", ("b",), f2.distribution_height)]
    # a settled factory (closed, rolled, exiting) or one past its distribution is no longer the ladder's
    assert plan(CFG, h, 144, [], [summary("f1", 0, settled=True)]) == []
    assert plan(CFG, f1.distribution_height, 144, [], [f1]) == []


def test_at_most_max_alive_factories_and_batch_size() -> None:
    ladder = [summary(f"f{i}", i * 144) for i in range(33)]  # a 30-day life, a 3-day dying period, daily
    h = 32 * 144 + 100  # f0 is near the end of its dying period, f32 a day old
    assert len(alive(ladder, h)) == 33
    assert not any(isinstance(a, Create) for a in plan(CFG, h, 32 * 144, W, ladder))
    small = LadderConfig(interval_blocks=1, max_clients=1)
    assert plan(small, 10, None, W, []) == [Create((W[0],))]


class Node(MemoryDatastore):
    def __init__(self) -> None:
        super().__init__()
        self.height = 500
        self.rpc = self
        self.connected = {w.node_id for w in W}

    def blockheight(self) -> int:
        return self.height

    def call(self, method: str, params: Any) -> Any:
        assert method == "listpeers"
        return {"peers": [{"id": p, "connected": True} for p in sorted(self.connected)]}


def test_ladder_starts_a_factory_and_forgets_who_it_served() -> None:
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    done = threading.Event()
    created: list[list[str]] = []

    def create(clients: Any, height: int) -> dict[str, Any]:
        assert height == 500
        created.append([c.node_id for c in clients])
        done.set()
        return {"factory_id": "ab" * 32}

    lines: list[str] = []
    ladder = Ladder(node, store, LadderConfig(interval_blocks=10), create, None,  # type: ignore[arg-type]
                    lambda text, level="info": lines.append(text))
    ladder.add(W[0].node_id, 0, 500_000)
    ladder.add(W[1].node_id, 0, 300_000)
    ladder.add(W[0].node_id, 0, 600_000)  # a second add replaces the first
    assert [w["inbound_sat"] for w in ladder.state()["waiting"]] == [300_000, 600_000]
    ladder.on_block(500)
    assert done.wait(5) and ladder._busy is not None
    ladder._busy.join(5)
    assert created == [[W[1].node_id, W[0].node_id]]
    st = ladder.state()
    assert st["waiting"] == [] and st["last_start_height"] == 500 and st["started"] == ["ab" * 32]
    assert ladder.on_block(505) == []  # nobody waiting


def test_the_ladder_document_stays_small_over_a_year() -> None:
    """Read every block: it keeps the newest STARTED_KEPT factory ids, and the orders of factories whose
    records are gone (archived, chain/forget.py) are dropped."""
    from superscalar.lsp.ladder import LADDER_DOC, STARTED_KEPT

    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    made: list[str] = []

    def create(clients: Any, height: int) -> dict[str, Any]:
        fid = f"{len(made):064x}"
        made.append(fid)
        store.put(fid, "factory", {"role": "lsp", "stage": "building"})
        return {"factory_id": fid}

    ladder = Ladder(node, store, LadderConfig(interval_blocks=1), create, None,  # type: ignore[arg-type]
                    lambda text, level="info": None)
    for i in range(STARTED_KEPT + 8):
        ladder.add_more(W[0].node_id, 0, 500_000, f"order-{i}")
        ladder.on_block(500 + i)
        assert ladder._busy is not None
        ladder._busy.join(5)
        if i == 4:  # the first factory is archived
            store.archive_factory(made[0], {"role": "lsp"})
    st = ladder.state()
    assert st["started"] == made[-STARTED_KEPT:]
    assert made[0] not in st["filled_orders"] and st["filled_orders"][made[1]] == ["order-1"]
    assert len(store.get_doc(LADDER_DOC) or {}) == len(st)


# --- batching (issue 12): a size or a wait limit starts a factory, with no operator command ---

BATCH = LadderConfig(interval_blocks=0, batch_size=3, batch_wait_blocks=10)


def waiting(*since: int) -> list[Waiting]:
    return [Waiting(f"02{i:064x}", 0, 100_000, h) for i, h in enumerate(since)]


def test_batch_size_starts_a_factory_at_once() -> None:
    assert plan(BATCH, 200, None, waiting(200, 200), []) == []  # two wait, no interval: nothing yet
    three = waiting(200, 200, 200)
    assert plan(BATCH, 200, None, three, []) == [Create(tuple(three))]
    # right after another factory started: the size rule does not wait for an interval
    assert plan(BATCH, 201, 200, three, [summary("f1", 200)]) == [Create(tuple(three))]


def test_batch_wait_starts_a_factory_for_the_oldest_waiting() -> None:
    two = waiting(195, 199)
    assert plan(BATCH, 204, None, two, []) == []  # the oldest has waited 9 blocks
    assert plan(BATCH, 205, None, two, []) == [Create(tuple(two))]  # 10 blocks
    assert plan(LadderConfig(interval_blocks=0, batch_size=3), 10_000, None, two, []) == []  # wait rule off


def test_batching_beside_the_interval_and_its_limits() -> None:
    cfg = LadderConfig(interval_blocks=144, batch_size=3, batch_wait_blocks=50)
    one = waiting(1000)
    assert plan(cfg, 1010, 1000, one, [summary("f1", 1000)]) == []
    assert plan(cfg, 1050, 1000, one, [summary("f1", 1000)]) == [Create(tuple(one))]  # wait before interval
    assert plan(cfg, 1144, 1100, waiting(1143), [summary("f1", 1000)]) == []  # interval counts from the last start
    full = [summary(f"f{i}", 1000 + i) for i in range(33)]  # max_alive reached: no rule starts one
    assert not any(isinstance(a, Create) for a in plan(cfg, 1100, 1032, waiting(1000, 1000, 1000), full))
    capped = LadderConfig(interval_blocks=0, batch_size=2, max_clients=2)
    three = waiting(5, 5, 5)
    assert plan(capped, 5, None, three, []) == [Create(tuple(three[:2]))]
    assert cfg.wait_bound_blocks() == 50 and BATCH.wait_bound_blocks() == 10
    assert LadderConfig(interval_blocks=0, batch_size=3).wait_bound_blocks() is None


def test_orders_queue_on_top_and_leave_with_their_factory() -> None:
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    ladder = Ladder(node, store, BATCH, lambda c, h: {"factory_id": "cd" * 32}, None,  # type: ignore[arg-type]
                    lambda text, level="info": None)
    a, b = W[0].node_id, W[1].node_id
    ladder.add(a, 0, 50_000)  # a free join
    ladder.add_more(a, 1_000, 200_000, "o1")
    ladder.add_more(a, 1_000, 200_000, "o1")  # the same order twice counts once
    ladder.add_more(b, 0, 300_000, "o2")
    st = ladder.state()
    assert [(w["node_id"], w["balance_sat"], w["inbound_sat"], w["orders"]) for w in st["waiting"]] == [
        (a, 1_000, 250_000, ["o1"]), (b, 0, 300_000, ["o2"])]
    snapshot = [Waiting.from_doc(w) for w in st["waiting"]]
    node.height = 501
    ladder.add_more(b, 0, 100_000, "o3")  # paid while the factory is being made: stays queued
    assert ladder.withdraw(a, 0, 0, "nope") is False
    done = threading.Event()
    ladder.create = lambda clients, height: (done.set(), {"factory_id": "cd" * 32})[1]  # type: ignore[assignment]
    seen: list[str] = []
    ladder.on_started = seen.append
    ladder._run(Create(tuple(snapshot)), 501)
    st = ladder.state()
    assert st["filled_orders"] == {"cd" * 32: ["o1", "o2"]} and seen == ["cd" * 32]
    assert [(w["node_id"], w["inbound_sat"], w["orders"]) for w in st["waiting"]] == [(b, 100_000, ["o3"])]
    assert ladder.withdraw(b, 0, 100_000, "o3") is True and ladder.state()["waiting"] == []


def test_a_client_offline_keeps_its_place_and_stalls_nobody() -> None:
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    created: list[list[str]] = []
    ladder = Ladder(node, store, LadderConfig(interval_blocks=0, batch_size=2), lambda c, h: (  # type: ignore[arg-type]
        created.append([w.node_id for w in c]), {"factory_id": "ef" * 32})[1], None, lambda text, level="info": None)
    ladder.add(W[0].node_id, 0, 100_000)
    ladder.add(W[1].node_id, 0, 100_000)
    node.connected = {W[0].node_id}
    assert ladder.on_block(500) == []  # one of two online: the batch is not full
    node.connected = {W[0].node_id, W[1].node_id}
    both = Create(tuple(Waiting.from_doc(w) for w in ladder.state()["waiting"]))
    assert ladder.on_block(501) == [both]
    assert ladder._busy is not None
    ladder._busy.join(5)
    assert created == [[W[0].node_id, W[1].node_id]]


def test_retry_delay_doubles_up_to_an_eighth_of_the_dying_period() -> None:
    assert [retry_delay(k, 432) for k in range(9)] == [0, 1, 2, 4, 8, 16, 32, 54, 54]
    assert [retry_delay(k, 3) for k in range(1, 4)] == [1, 1, 1]


def test_a_failing_rollover_backs_off() -> None:
    """A rollover that fails (e.g. a client refuses the close after the next factory's channels were
    opened) is tried again 1, 2, 4, ... blocks later, not on every block of the dying period."""
    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    attempts: list[int] = []
    height = [0]

    def roll(fid: str) -> dict[str, Any]:
        attempts.append(height[0])
        raise RuntimeError("a client refused the close")

    ladder = Ladder(node, store, LadderConfig(interval_blocks=0), lambda c, h: {}, roll,  # type: ignore[arg-type]
                    lambda text, level="info": None)
    dying = FactorySummary("ab" * 32, 0, 100, 100 + 432, False, ("a", "b"), ())
    ladder.summaries = lambda connected=None, height=None: [dying]  # type: ignore[method-assign]
    for h in range(100, 120):
        height[0] = h
        ladder.on_block(h)
        if ladder._busy is not None:
            ladder._busy.join(5)
    assert attempts == [100, 101, 103, 107, 115]


def test_factories_long_past_their_distribution_are_not_read_again() -> None:
    """A year of laddering leaves hundreds of factory records: once a factory's distribution height is
    PAST_MARGIN blocks behind, the ladder's per-block summary skips it without reading it."""
    from superscalar.lsp.ladder import PAST_MARGIN

    node = Node()
    store = Store(node)  # type: ignore[arg-type]
    ladder = Ladder(node, store, LadderConfig(interval_blocks=5), lambda c, h: {}, None,  # type: ignore[arg-type]
                    lambda text, level="info": None)
    params = regtest_params(2, 100)
    store.put("f1", "factory", {"role": "lsp", "stage": "funded", "params": params.serialize().decode(),
                                "channels": [{"peer_id": "02" + "11" * 32}, {"peer_id": "02" + "22" * 32}]})
    assert [f.factory_id for f in ladder.summaries(set(), params.distribution_height)] == ["f1"]
    reads: list[str] = []
    real_get = store.get
    store.get = lambda fid, rec: reads.append(fid) or real_get(fid, rec)  # type: ignore[method-assign]
    assert ladder.summaries(set(), params.distribution_height + PAST_MARGIN) == []
    assert ladder.summaries(set(), params.distribution_height + PAST_MARGIN + 1) == []
    assert reads == ["f1"]  # read once more, then never
