"""Laddering: with `superscalar-ladder` on, the LSP starts a factory every interval for the clients
waiting to join, and rolls every factory that enters its dying period over into the next one, so that
at any time up to `max_alive` factories are alive, one per interval (seed "What is an LSP": a 30-day
life, a 3-day dying period, a factory a day, ~33 alive).

`plan` is pure: from the height, the waiting clients and a summary of each factory it decides what to
start now. `Ladder` is the shell: a chain-follower step that reads the records, asks `plan`, and runs
one action at a time in a worker thread (a ceremony waits for peer messages that arrive on pyln's main
thread, so it must never run there). Its own state (the waiting clients, when it last started a
factory) is one datastore document.

A rollover is a cooperative close (every client of the old factory must sign: N-of-N), so it can only
happen while all of them are online; the ladder tries again while the factory is dying. A failed
attempt can leave the next factory's opened channels behind (stock lightningd never forgets them,
docs/retiring-channels.md), so after each failure the next attempt waits twice as long (`retry_delay`:
1, 2, 4, ... blocks, at most an eighth of the dying period), not every block. A client that stays away
until the distribution height is paid by the distribution transaction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from ..factory.params import MAX_CLIENTS, FactoryParams
from ..cln.node import ClnNode
from ..cln.store import Store

LADDER_DOC = "ladder"
PAST_MARGIN = 6  # blocks after a distribution height beyond which no reorganisation is assumed
STARTED_KEPT = 32  # factory ids kept in the ladder document's `started` (superscalar-ladder shows them)


@dataclass(frozen=True)
class LadderConfig:
    interval_blocks: int  # a new factory at most once per interval (144: daily on mainnet)
    max_alive: int = 33  # factories alive (active or dying) at once
    max_clients: int = MAX_CLIENTS  # clients per new factory
    # Batching (issue 12): start a factory at once when this many clients wait (0: off) ...
    batch_size: int = 0
    # ... or when the client waiting longest has waited this many blocks (0: off). With
    # interval_blocks 0 only these two start factories.
    batch_wait_blocks: int = 0

    def wait_bound_blocks(self) -> Optional[int]:
        """The most blocks a queued client waits before a factory starts for it (while fewer than
        max_alive factories are alive), or None if only batch_size can start one."""
        bounds = [b for b in (self.interval_blocks, self.batch_wait_blocks) if b > 0]
        return min(bounds) if bounds else None


@dataclass(frozen=True)
class Waiting:
    node_id: str
    balance_sat: int
    inbound_sat: int
    since_height: int
    orders: tuple[str, ...] = ()  # LSPS1 orders whose amounts this entry includes (lsp/orders.py)

    @classmethod
    def from_doc(cls, w: dict[str, Any]) -> "Waiting":
        return cls(w["node_id"], w["balance_sat"], w["inbound_sat"], w["since_height"], tuple(w.get("orders", ())))


@dataclass(frozen=True)
class FactorySummary:
    factory_id: str
    start_height: int
    expiry_height: int
    distribution_height: int
    settled: bool  # a cooperative close or rollover is recorded or abandoned, or the factory is exiting or gone
    clients: tuple[str, ...]
    offline: tuple[str, ...]  # its clients that are not connected now


@dataclass(frozen=True)
class Create:
    clients: tuple[Waiting, ...]


@dataclass(frozen=True)
class Rollover:
    factory_id: str


@dataclass(frozen=True)
class WaitForClients:
    """A dying factory that cannot roll over yet: these clients are offline."""

    factory_id: str
    offline: tuple[str, ...]
    distribution_height: int


Action = Create | Rollover | WaitForClients


def alive(factories: Sequence[FactorySummary], height: int) -> list[FactorySummary]:
    """Factories in their active or dying period that nobody has closed, rolled over or exited."""
    return [f for f in factories if not f.settled and height < f.distribution_height]


def plan(config: LadderConfig, height: int, last_start: Optional[int], waiting: Sequence[Waiting],
         factories: Sequence[FactorySummary]) -> list[Action]:
    """What the ladder does at `height`, most urgent first: roll over dying factories whose clients are
    all online (the one whose distribution comes first leads), say which dying factories wait for
    whom, and start a factory for the waiting clients once an interval has passed since the last
    (interval_blocks > 0), or at once when batch_size clients wait, or when the oldest has waited
    batch_wait_blocks (batching: each rule that is configured can start one)."""
    actions: list[Action] = []
    dying = sorted((f for f in alive(factories, height) if f.expiry_height <= height),
                   key=lambda f: f.distribution_height)
    for f in dying:
        actions.append(Rollover(f.factory_id) if not f.offline
                       else WaitForClients(f.factory_id, f.offline, f.distribution_height))
    # The interval counts from the newest factory's own start height (what its timelines derive from),
    # or from when the ladder last started one, whichever is later.
    starts = [f.start_height for f in factories] + ([last_start] if last_start is not None else [])
    due = config.interval_blocks > 0 and (not starts or height >= max(starts) + config.interval_blocks)
    if config.batch_size > 0 and len(waiting) >= config.batch_size:
        due = True
    if config.batch_wait_blocks > 0 and waiting and height - min(w.since_height for w in waiting) >= config.batch_wait_blocks:
        due = True
    if waiting and due and len(alive(factories, height)) < config.max_alive:
        actions.append(Create(tuple(waiting[:config.max_clients])))
    return actions


def retry_delay(failures: int, dying_blocks: int) -> int:
    """Blocks to wait before another rollover attempt after `failures` failed ones in a row: doubling
    from 1, at most an eighth of the dying period (so a dying period still holds several attempts)."""
    if failures <= 0:
        return 0
    return min(1 << min(failures - 1, 30), max(1, dying_blocks // 8))


def _after_start(waiting: list[dict[str, Any]], started: Sequence[Waiting]) -> list[dict[str, Any]]:
    """The waiting list once a factory started for `started` (a snapshot): what was queued for a client
    since the snapshot (an order paid meanwhile) stays queued; the rest leaves the list."""
    taken = {w.node_id: w for w in started}
    out = []
    for w in waiting:
        t = taken.get(w["node_id"])
        if t is None:
            out.append(w)
            continue
        left = [o for o in w.get("orders", []) if o not in t.orders]
        inbound = w["inbound_sat"] - t.inbound_sat
        if left and inbound > 0:
            out.append({**w, "balance_sat": max(0, w["balance_sat"] - t.balance_sat), "inbound_sat": inbound,
                        "orders": left})
    return out


Creator = Callable[[Sequence[Waiting], int], dict[str, Any]]  # a creation ceremony starting at a height
Roller = Callable[[str], dict[str, Any]]  # rolls a factory over, returns the result


class Ladder:
    def __init__(self, node: ClnNode, store: Store, config: LadderConfig, create: Creator,
                 rollover: Optional[Roller], log: Callable[..., None]) -> None:
        self.node, self.store, self.config = node, store, config
        self.create, self.rollover = create, rollover
        self.log = log
        self._busy: Optional[threading.Thread] = None
        self._warned: dict[str, int] = {}  # factory id → height of its last "waiting for clients" line
        self._past: set[str] = set()  # factories past their distribution (+ PAST_MARGIN): never alive again
        self._failed: dict[str, tuple[int, int]] = {}  # factory id → (failed rollovers in a row, retry height)
        self._lock = threading.Lock()  # the waiting list is written by hooks, commands and the worker
        # told of each factory the ladder started (its id), after the ladder recorded it
        self.on_started: Optional[Callable[[str], None]] = None

    # --- the waiting list (superscalar-ladder-add) ---

    def state(self) -> dict[str, Any]:
        return self.store.get_doc(LADDER_DOC) or {"waiting": [], "last_start_height": None, "started": []}

    def add(self, node_id: str, balance_sat: int, inbound_sat: int) -> dict[str, Any]:
        """Queue a client for the next laddered factory (once; a second add replaces its amounts)."""
        with self._lock:
            st = self.state()
            st["waiting"] = [w for w in st["waiting"] if w["node_id"] != node_id]
            st["waiting"].append({"node_id": node_id, "balance_sat": balance_sat, "inbound_sat": inbound_sat,
                                  "since_height": self.node.blockheight()})
            self.store.put_doc(LADDER_DOC, st)
            return st

    def add_more(self, node_id: str, balance_sat: int, inbound_sat: int, order_id: str) -> dict[str, Any]:
        """Queue a client with these amounts on top of what it already waits with (a bought order adds
        to a free join or an earlier order: one channel in the next factory holds them all). A client
        already waiting keeps its place (its since_height)."""
        with self._lock:
            st = self.state()
            mine = [w for w in st["waiting"] if w["node_id"] == node_id]
            entry: dict[str, Any] = mine[0] if mine else {"node_id": node_id, "balance_sat": 0, "inbound_sat": 0,
                                                          "since_height": self.node.blockheight()}
            if order_id in entry.get("orders", []):
                return st
            entry = {**entry, "balance_sat": entry["balance_sat"] + balance_sat,
                     "inbound_sat": entry["inbound_sat"] + inbound_sat,
                     "orders": [*entry.get("orders", []), order_id]}
            st["waiting"] = [w for w in st["waiting"] if w["node_id"] != node_id] + [entry]
            self.store.put_doc(LADDER_DOC, st)
            return st

    def withdraw(self, node_id: str, balance_sat: int, inbound_sat: int, order_id: str) -> bool:
        """Take back what `add_more` queued for an order that failed; the entry goes when nothing is
        left. False if the order is not waiting (its factory already started, or never queued)."""
        with self._lock:
            st = self.state()
            mine = [w for w in st["waiting"] if w["node_id"] == node_id and order_id in w.get("orders", [])]
            if not mine:
                return False
            rest = {**mine[0], "balance_sat": max(0, mine[0]["balance_sat"] - balance_sat),
                    "inbound_sat": max(0, mine[0]["inbound_sat"] - inbound_sat),
                    "orders": [o for o in mine[0]["orders"] if o != order_id]}
            st["waiting"] = [w for w in st["waiting"] if w["node_id"] != node_id]
            if rest["inbound_sat"] > 0:
                st["waiting"].append(rest)
            self.store.put_doc(LADDER_DOC, st)
            return True

    def next_start_height(self, height: int, factories: Sequence[FactorySummary]) -> Optional[int]:
        """The first height at which the ladder may start its next factory (as `plan` counts), by the
        interval or the batch wait; None when only batch_size can start one (it depends on who comes)."""
        st = self.state()
        last = st["last_start_height"]
        starts = [f.start_height for f in factories] + ([last] if last is not None else [])
        heights = []
        if self.config.interval_blocks > 0:
            heights.append(max(height, max(starts) + self.config.interval_blocks) if starts else height)
        if self.config.batch_wait_blocks > 0 and st["waiting"]:
            heights.append(max(height, min(w["since_height"] for w in st["waiting"]) + self.config.batch_wait_blocks))
        return min(heights) if heights else None

    def status(self, height: int) -> dict[str, Any]:
        """What `superscalar-ladder` shows: the queue, the next start height, the factories alive."""
        st = self.state()
        summaries = self.summaries()
        live = [{"factory_id": f.factory_id, "start_height": f.start_height, "expiry_height": f.expiry_height,
                 "distribution_height": f.distribution_height, "dying": f.expiry_height <= height,
                 "offline_clients": list(f.offline)}
                for f in alive(summaries, height)]
        return {"enabled": True, "interval_blocks": self.config.interval_blocks, "max_alive": self.config.max_alive,
                "batch_size": self.config.batch_size, "batch_wait_blocks": self.config.batch_wait_blocks,
                "waiting": st["waiting"], "last_start_height": st["last_start_height"],
                "next_start_height": self.next_start_height(height, summaries), "started": st["started"],
                "alive": live}

    # --- per block ---

    def _connected(self) -> set[str]:
        return {p["id"] for p in self.node.rpc.call("listpeers", {})["peers"] if p.get("connected")}

    def summaries(self, connected: Optional[set[str]] = None, height: Optional[int] = None) -> list[FactorySummary]:
        """Every factory of ours that may still be alive. One whose distribution height is PAST_MARGIN
        blocks behind `height` never is again: it is not read again (the per-block work does not grow
        with the factories a year of laddering leaves behind)."""
        connected = self._connected() if connected is None else connected
        out = []
        for fid in self.store.factory_ids():
            if fid in self._past:
                continue
            rec = self.store.get(fid, "factory")
            if rec is None or rec.get("role") != "lsp" or rec.get("stage") != "funded":
                continue
            params = FactoryParams.deserialize(rec["params"].encode())
            if height is not None and height >= params.distribution_height + PAST_MARGIN:
                self._past.add(fid)
                continue
            clients = tuple(c["peer_id"] for c in rec["channels"])
            # (an abandoned rollover close: clients that signed it refuse any other, so none is tried)
            settled = (bool(rec.get("close")) or rec.get("abandoned_close") is not None
                       or self.store.get(fid, "exit") is not None)
            out.append(FactorySummary(fid, params.start_height, params.expiry_height, params.distribution_height, settled, clients,
                                      tuple(c for c in clients if c not in connected)))
        return out

    def on_block(self, height: int) -> list[Action]:
        """Decide and start at most one ceremony; returns what `plan` said (for tests and the log)."""
        if self._busy is not None and self._busy.is_alive():
            return []
        st = self.state()
        # a client that is not connected now cannot take part in a ceremony: it keeps its place and
        # does not stall the others' factory (nor count towards the batch size)
        connected = self._connected()
        waiting = [w for w in (Waiting.from_doc(w) for w in st["waiting"]) if w.node_id in connected]
        actions = plan(self.config, height, st["last_start_height"], waiting, self.summaries(connected, height))
        for a in actions:
            if isinstance(a, WaitForClients) and height - self._warned.get(a.factory_id, -10**9) >= 6:
                self._warned[a.factory_id] = height
                self.log(f"ladder: factory {a.factory_id} is dying and cannot roll over while "
                         f"{len(a.offline)} of its clients are offline ({', '.join(a.offline)}); "
                         f"its distribution pays them at height {a.distribution_height}", level="unusual")
        runnable = next((a for a in actions if isinstance(a, (Create, Rollover))
                         and (self.rollover is not None or isinstance(a, Create))
                         and not (isinstance(a, Rollover) and height < self._failed.get(a.factory_id, (0, 0))[1])),
                        None)
        if runnable is not None:
            self._busy = threading.Thread(target=self._run, args=(runnable, height), name="superscalar-ladder",
                                          daemon=True)
            self._busy.start()
        return actions

    def _run(self, action: Create | Rollover, height: int) -> None:
        try:
            if isinstance(action, Create):
                result = self.create(action.clients, height)
                with self._lock:
                    st = self.state()
                    st["waiting"] = _after_start(st["waiting"], action.clients)
                    st["last_start_height"] = height
                    # the newest STARTED_KEPT: the document is read every block and must not grow
                    st["started"] = [*st["started"], result["factory_id"]][-STARTED_KEPT:]
                    orders = [o for w in action.clients for o in w.orders]
                    live = set(self.store.factory_ids())  # an archived factory's orders were settled long ago
                    st["filled_orders"] = {fid: filled for fid, filled in st.get("filled_orders", {}).items()
                                           if fid in live}
                    if orders:  # which LSPS1 orders this factory fills (lsp/orders.py reads it)
                        st["filled_orders"][result["factory_id"]] = orders
                    self._past &= live
                    self.store.put_doc(LADDER_DOC, st)
                self.log(f"ladder: started factory {result['factory_id']} for {len(action.clients)} clients")
                if self.on_started is not None:
                    self.on_started(result["factory_id"])
            elif self.rollover is not None:
                result = self.rollover(action.factory_id)
                self._failed.pop(action.factory_id, None)
                self.log(f"ladder: rolled factory {action.factory_id} over: {result}")
        except Exception as e:  # tried again: a creation next block, a rollover after its backoff
            when = "next block"
            if isinstance(action, Rollover):
                failures = self._failed.get(action.factory_id, (0, 0))[0] + 1
                summary = next((f for f in self.summaries() if f.factory_id == action.factory_id), None)
                dying = summary.distribution_height - summary.expiry_height if summary is not None else 8
                retry = height + retry_delay(failures, dying)
                self._failed[action.factory_id] = (failures, retry)
                when = f"at height {retry} ({failures} failed in a row)"
            self.log(f"ladder: {type(action).__name__.lower()} failed, retrying {when}: {e}", level="info")
