"""Every factory's life after creation, block by block, for either role (a step of the chain follower).

Each block is read once (`blocks.py`) and matched against an in-memory index of what every factory
watches: its funding outpoint, and the txids of its distribution, its cooperative close (if one is
recorded), its tree transactions and the LSP's sweeps. A block costs one dict lookup per transaction
and per spent outpoint, whatever the number of factories; then one height comparison per factory
that has not reached its end (distributed or closed) decides whether anything is due:

- **Dying period (LSP):** from `expiry_height` until the funding output is spent, a warning (level
  "unusual") every `dying_warning_interval` blocks: close or roll the factory over before the
  distribution height, or the distribution gives the clients the channels' whole capacity.
- **Distribution (both roles):** from the distribution height on, while the funding output is unspent,
  every participant holding the signed distribution broadcasts it (it is final from then on: its
  nLockTime is the distribution height), again every block until it or a conflicting spend confirms.
  It was signed with fee variants (`factory.graph.fee_variants`: the same payments at 4, 16 and 64
  times the agreed rate, the extra from the LSP's output): a variant the mempool refuses for its fee
  moves on to the next at once, and one still unconfirmed `escalate_blocks` after it went out is
  replaced by the next (RBF), so the distribution confirms at a market rate far above the agreed one
  with no coin of the holder's own, before the LSP's timeout (`timeout(0)`) could take the funding output.
- **A balance the distribution does not pay (client):** the distribution, signed at creation, pays a
  client its leaf channel's capacity; a client whose liquidity sales brought its balance above that
  (leaf and sale channels together) would lose the difference if the factory ended by distribution. From
  `uncovered_exit_height` on (its root can still confirm before the distribution height, its path before
  its leaf's timeout), unless a close of the factory is already on chain, such a client publishes its own
  path and its sales (racing a close still pending: either pays it): each of its channels is then an
  ordinary funded channel holding its balance.
- **Tree on chain (client):** the funding output spent by neither the distribution nor a recorded
  cooperative close means the tree is going on chain: the distribution can no longer confirm and
  every output times out to the LSP. The client publishes its own path (`exit_plan`, without closing
  its channel: once its leaf confirms the channel is an ordinary one) at once if a kickoff on its path
  confirmed (an older state of that node could follow it: the newest state, with the shortest
  relative wait, must confirm first), else at `exit_start_height` (its leaf's timeout less its
  early-warning time and some slack), leaving room for a cooperative rollover until then.
- **Sweeps (LSP):** every tree output whose absolute timeout has passed and that no tree transaction
  spent (`timeout_sweep`; not the funding output itself while the LSP holds the distribution, which it
  keeps offering instead), and the L-stock of every confirmed leaf `lstock_csv_blocks` after it
  confirmed (`lstock_sweep`), signed with the LSP's factory key and paid to the LSP's payout script
  (a wallet script: lightningd's `listfunds` gets them), broadcast every block until confirmed.

What was seen is kept per factory in a `lifecycle` record (written only when something changes); the
height scanned last is kept under `SCANNED_KEY`, so blocks that arrived while the node was down are
read at the next start (at most `SCAN_LIMIT`).
"""

from __future__ import annotations

import json
import secrets
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..bitcoin.tx import OutPoint, Tx
from ..factory.graph import Factory, FactoryGraph, FactoryScripts, ScriptSpend, lstock_sweep, timeout_sweep
from ..factory.lifecycle import (CLOSE_CONFIRMED, TERMINAL, Facts, Phase, client_online_deadline,
                                 dying_warning_interval, exit_start_height, next_phase, phase, sign_script_spend,
                                 timeline, uncovered_exit_height)
from ..factory.params import ClientTerms, FactoryParams
from ..cln.node import ClnNode, msat
from ..records import ExitPaths, channel_in_factory, factory_key_label
from ..sales import UNOPENED, sale_chain
from ..cln.store import Store
from .blocks import Blocks, BlockView
from .exits import DONE, Exits
from .retire import factory_channel_ids, retire_channels
from .close_watch import close_txids
from .routing import exit_plan, never_funded
from .variants import escalate_blocks, offer, rate_of

LIFECYCLE = "lifecycle"  # the per-factory record this step writes
SCANNED_KEY = ["superscalar", "chain", "lifecycle-height"]
SCAN_LIMIT = 144
Log = Callable[..., None]


def new_record() -> dict[str, Any]:
    return {"funding_spent": None, "distribution": None, "tree_confirmed": {}, "exit_started": None, "sweeps": {}}


@dataclass
class Watch:
    """What the index knows of one factory (rebuilt from its records whenever they change)."""

    fid: str
    role: str
    params: FactoryParams
    funding: str  # "txid:vout"
    funding_prevout: tuple[int, bytes]
    distribution: Optional[Tx]  # the base distribution (at the agreed fee rate)
    close_txid: Optional[str]
    close_status: Optional[str]
    tree: dict[str, str]  # txid -> name of each tree transaction this node holds signed
    kickoffs: set[str] = field(default_factory=set)  # client: names of the DW kickoffs on its path
    ewt: int = 0  # client: its path's early-warning time
    leaf: Optional[str] = None  # client: name of its leaf's transaction
    lsp_script: bytes = b""  # LSP: its payout script (a wallet script), where sweeps pay
    sold_leaves: frozenset[int] = frozenset()  # LSP: leaves whose L-stock a liquidity sale (that backs a channel) spends
    sales: tuple[dict[str, Any], ...] = ()  # LSP: its record's liquidity sales, in signing order
    distributions: tuple[Tx, ...] = ()  # the distribution and its fee variants, cheapest first
    close_txids: frozenset[str] = frozenset()  # the close and its fee variants


def watch_of(fid: str, rec: dict[str, Any]) -> Optional[Watch]:
    """The index entry of a factory record, or None if there is nothing to follow (never funded)."""
    if never_funded(rec):
        return None
    params = FactoryParams.deserialize(rec["params"].encode())
    close = rec.get("close") if isinstance(rec.get("close"), dict) else None
    dist = Tx.from_hex(rec["distribution"]) if rec.get("distribution") else None
    dists = (dist, *(Tx.from_hex(h) for h in rec.get("distribution_variants", []))) if dist is not None else ()
    # a close this node only partially signed (it never got the whole) is still recognised by its txid,
    # and a close by any of its fee variants' txids
    close_txid = Tx.from_hex(close["tx"]).txid if close and close.get("tx") else \
        (rec.get("frozen") or {}).get("close_txid")
    closes = close_txids(rec)
    if rec["role"] == "lsp":
        first = rec["txs"][0]
        tree = {Tx.from_hex(h).txid: name for name, h, _, _ in rec["txs"]}
        return Watch(fid, "lsp", params, rec["funding_outpoint"], (int(first[2]), bytes.fromhex(first[3])), dist,
                     close_txid, close.get("status") if close else None, tree,
                     lsp_script=bytes.fromhex(rec["scripts"]["lsp"]),
                     sold_leaves=frozenset(int(x["leaf"]) for x in rec.get("sales", []) if x.get("status") != UNOPENED),
                     sales=tuple(rec.get("sales", [])), distributions=dists, close_txids=closes)
    names = [f"path/{i}" for i in range(len(rec["signed_path"]))]
    tree = {Tx.from_hex(h).txid: n for n, h in zip(names, rec["signed_path"])}
    kickoffs = {f"path/{params.path_offset(d)}" for d in range(params.first_dw_depth, params.height + 1)}
    value, script = rec["path_prevouts"][0]
    return Watch(fid, "client", params, rec["funding_outpoint"], (int(value), bytes.fromhex(script)), dist,
                 close_txid, close.get("status") if close else None, tree, kickoffs,
                 int(rec["early_warning_blocks"]), names[-1], distributions=dists, close_txids=closes)


def facts_of(watch_or_rec: Any, life: Optional[dict[str, Any]], exit_rec: Optional[dict[str, Any]]) -> Facts:
    """The recorded facts the phase function reads."""
    life = life or new_record()
    spent = life.get("funding_spent") or {}
    close_status = watch_or_rec.close_status if isinstance(watch_or_rec, Watch) else \
        ((watch_or_rec.get("close") or {}).get("status") if isinstance(watch_or_rec.get("close"), dict) else None)
    if spent.get("by") == "close":
        close_status = CLOSE_CONFIRMED
    dist = life.get("distribution") or {}
    return Facts(close_status=close_status,
                 distribution_confirmed_height=dist.get("confirmed_height") if spent.get("by") == "distribution" else None,
                 tree_confirmed_height=spent.get("height") if spent.get("by") == "tree" else None,
                 exit_recorded=exit_rec is not None and exit_rec.get("status") != "cancelled")


def describe_life(rec: dict[str, Any], life: Optional[dict[str, Any]], exit_rec: Optional[dict[str, Any]],
                  height: int) -> dict[str, Any]:
    """What `superscalar-list` shows of a factory's life: its phase, the heights of its next phases and,
    for a client, the last height by which it must be online."""
    params = FactoryParams.deserialize(rec["params"].encode())
    facts = facts_of(rec, life, exit_rec)
    now = phase(params, height, facts)
    nxt = next_phase(params, height, now)
    out: dict[str, Any] = {"phase": now.value, "next_phase": None if nxt is None else {"phase": nxt[0].value,
                                                                                      "height": nxt[1]},
                           **timeline(params)}
    if rec.get("role") == "client" and now not in TERMINAL:
        out["must_be_online_by_height"] = client_online_deadline(
            params, int(rec["early_warning_blocks"]), facts.tree_confirmed_height is not None)
    life = life or {}
    if life.get("distribution"):
        out["distribution"] = life["distribution"]
    if life.get("funding_spent"):
        out["funding_spent"] = life["funding_spent"]
    if life.get("sweeps"):
        out["sweeps"] = {k: {f: s.get(f) for f in ("kind", "outpoint", "txid", "value_sat", "fee_sat", "status",
                                                   "due_height", "confirmed_height", "last_error")}
                         for k, s in life["sweeps"].items()}
    return out


class Lifecycle:
    def __init__(self, node: ClnNode, store: Store, blocks: Blocks, client: ExitPaths, exits: Exits, log: Log,
                 depth: int = 1) -> None:
        self.node, self.store, self.blocks, self.client, self.exits, self.log = node, store, blocks, client, exits, log
        self.depth = max(1, depth)  # confirmations of the distribution before its factory's channels are retired
        self._watches: Optional[dict[str, Watch]] = None
        self._life: dict[str, dict[str, Any]] = {}
        self._txids: dict[str, tuple[str, str, str]] = {}  # txid -> (factory, kind, name)
        self._outpoints: dict[str, tuple[str, str, str]] = {}  # "txid:vout" -> (factory, kind, name)
        self._keys: dict[str, tuple[list[str], list[str]]] = {}  # factory -> its keys in the two tables
        self._dirty: set[str] = set()
        self._dirty_lock = threading.Lock()
        self._graphs: dict[str, FactoryGraph] = {}
        self._warned: dict[str, int] = {}
        self._retiring: set[str] = set()  # channel ids whose retiring close is under way
        self._scanned: Optional[int] = None
        self._scanned_generation: Optional[int] = None
        store.listen(self._on_record)

    # --- the index ---

    def _on_record(self, fid: str, record: str, data: Optional[dict[str, Any]]) -> None:
        if record == "factory":  # a new factory, a recorded close, a state advance
            with self._dirty_lock:
                self._dirty.add(fid)

    def _load(self) -> dict[str, Watch]:
        if self._watches is None:
            self._watches = {}
            with self._dirty_lock:
                self._dirty.clear()
            for fid in self.store.factory_ids():
                self._reload(fid)
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        for fid in dirty:
            self._reload(fid)
        return self._watches

    def _reload(self, fid: str) -> None:
        assert self._watches is not None
        self._watches.pop(fid, None)
        self._graphs.pop(fid, None)
        txids, outpoints = self._keys.pop(fid, ([], []))
        for key in txids:
            self._txids.pop(key, None)
        for key in outpoints:
            self._outpoints.pop(key, None)
        rec = self.store.get(fid, "factory")
        watch = watch_of(fid, rec) if rec else None
        if watch is None:
            if rec is None:  # archived (chain/forget.py): nothing of it is kept in memory either
                self._life.pop(fid, None)
            return
        self._watches[fid] = watch
        life = self._life.get(fid) or self.store.get(fid, LIFECYCLE) or new_record()
        self._life[fid] = life
        self._keys[fid] = ([], [])
        self._index_outpoint(fid, watch.funding, "funding", "funding")
        for dist in watch.distributions:
            self._index_txid(fid, dist.txid, "distribution", "distribution")
        for txid in watch.close_txids:
            self._index_txid(fid, txid, "close", "close")
        for txid, name in watch.tree.items():
            self._index_txid(fid, txid, "tree", name)
        for k, sale in enumerate(watch.sales):
            self._index_txid(fid, str(sale["txid"]), "sale", str(k))
        for name, sweep in life["sweeps"].items():
            self._index_sweep(fid, name, sweep)

    def _index_txid(self, fid: str, txid: str, kind: str, name: str) -> None:
        self._txids[txid] = (fid, kind, name)
        self._keys[fid][0].append(txid)

    def _index_outpoint(self, fid: str, outpoint: str, kind: str, name: str) -> None:
        self._outpoints[outpoint] = (fid, kind, name)
        self._keys[fid][1].append(outpoint)

    def _index_sweep(self, fid: str, name: str, sweep: dict[str, Any]) -> None:
        self._index_txid(fid, sweep["txid"], "sweep", name)
        self._index_outpoint(fid, sweep["outpoint"], "sweep-input", name)

    # --- each block ---

    def on_block(self, height: int) -> None:
        watches = self._load()
        changed: set[str] = set()
        for b in self._heights_to_scan(height):
            self._scan(self.blocks.at(b), changed)
        for fid, watch in watches.items():
            try:
                if self._act(watch, height):
                    changed.add(fid)
            except OSError:
                raise  # lightningd unreachable (shutting down): the follower reports it
            except Exception as e:  # one factory's failure does not hold up the others; retried next block
                self.log(f"factory {fid}: lifecycle step at height {height} failed: {e!r}", level="broken")
        for fid in changed:
            self.store.put(fid, LIFECYCLE, self._life[fid])
        self._save_scanned(height)

    def _heights_to_scan(self, height: int) -> range:
        if self._scanned is None:
            found = self.node.datastore_get(SCANNED_KEY)
            if found is not None:
                self._scanned, self._scanned_generation = int(json.loads(found[0])), found[1]
            else:
                self._scanned = height - 1
        if height <= self._scanned:  # the same height again (a reorganisation): read it again
            return range(height, height + 1)
        return range(max(self._scanned + 1, height - SCAN_LIMIT + 1), height + 1)

    def _save_scanned(self, height: int) -> None:
        self._scanned = height
        try:
            self._scanned_generation = self.node.datastore_put(SCANNED_KEY, json.dumps(height), self._scanned_generation)
        except OSError:
            raise
        except Exception:  # the generation moved (another copy of the key): read it again next block
            found = self.node.datastore_get(SCANNED_KEY)
            self._scanned_generation = found[1] if found else None

    def _scan(self, view: BlockView, changed: set[str]) -> None:
        for txid in view.by_txid:
            hit = self._txids.get(txid)
            if hit is not None:
                self._confirmed(hit, txid, view.height)
                changed.add(hit[0])
        for outpoint, spender in view.spent.items():
            hit = self._outpoints.get(outpoint)
            if hit is not None:
                self._spent(hit, spender, view.height)
                changed.add(hit[0])

    def _confirmed(self, hit: tuple[str, str, str], txid: str, height: int) -> None:
        fid, kind, name = hit
        life = self._life[fid]
        if kind == "distribution":
            dist = life["distribution"] or _distribution_entry()
            dist.update(status="confirmed", confirmed_height=height, txid=txid)
            life["distribution"] = dist
            self.log(f"factory {fid}: the distribution transaction {txid} confirmed at height {height}")
        elif kind == "tree":
            life["tree_confirmed"].setdefault(name, height)
        elif kind == "sale":
            life.setdefault("sales_confirmed", {}).setdefault(name, height)
        elif kind == "sweep":
            sweep = life["sweeps"][name]
            if sweep["status"] != "confirmed":
                sweep.update(status="confirmed", confirmed_height=height)
                self.log(f"factory {fid}: sweep {name} ({txid}) confirmed at height {height}: "
                         f"{sweep['value_sat']} sat to this node's wallet")

    def _spent(self, hit: tuple[str, str, str], spender: str, height: int) -> None:
        fid, kind, name = hit
        life, watch = self._life[fid], self._watches[fid] if self._watches else None
        if kind == "funding" and watch is not None and life["funding_spent"] is None:
            if spender in {d.txid for d in watch.distributions}:
                by = "distribution"
            elif spender in watch.close_txids:
                by = "close"
            else:
                by = "tree"
            life["funding_spent"] = {"height": height, "txid": spender, "by": by}
            if by == "tree":
                if life["distribution"] is not None and life["distribution"]["status"] != "confirmed":
                    life["distribution"]["status"] = "conflicted"
                self.log(f"factory {fid}: the funding output was spent by {spender} at height {height}: the tree is "
                         "going on chain; the distribution can no longer confirm")
        elif kind == "sweep-input":
            sweep = life["sweeps"][name]
            if spender != sweep["txid"] and sweep["status"] != "confirmed":
                sweep.update(status="spent_elsewhere", spent_by=spender)
                self.log(f"factory {fid}: the output sweep {name} was for ({sweep['outpoint']}) was spent by {spender}")

    def _act(self, watch: Watch, height: int) -> bool:
        """What is due for one factory at `height`; True if its lifecycle record changed."""
        life = self._life[watch.fid]
        facts = facts_of(watch, life, None)
        now = phase(watch.params, height, facts)
        if now == Phase.DISTRIBUTED and not life.get("channels_retired"):
            # The distribution paid each client its channels' whole capacity: the channels are backed
            # by nothing from now on, so they are retired like those of a closed factory, once it is
            # `depth` deep (and still in its block: a reorganisation puts it back to pending).
            dist = life["distribution"]
            confirmed = int(dist["confirmed_height"])
            gone = confirmed > height or dist["txid"] not in self.blocks.at(confirmed).by_txid
            if gone:
                self.log(f"factory {watch.fid}: the distribution {dist['txid']} left the chain (reorganisation); "
                         "broadcasting it again")
                dist.update(status="broadcast", confirmed_height=None)
                life["funding_spent"] = None
                return True
            if height < confirmed + self.depth - 1:
                return False
            rec = self.store.get(watch.fid, "factory")
            if rec is not None and retire_channels(self.node, factory_channel_ids(self.node, rec), self.log,
                                                   self._retiring) == 0:
                life["channels_retired"] = True
                return True
        if now in TERMINAL:
            return False
        changed = False
        if now == Phase.DYING and watch.role == "lsp":
            self._warn_dying(watch, height)
        if (now in (Phase.ACTIVE, Phase.DYING) and watch.role == "client"
                and height >= uncovered_exit_height(watch.params, watch.ewt)):
            changed |= self._client_uncovered_exit(watch, life, height)
        if now == Phase.DISTRIBUTING and watch.distribution is not None:
            changed |= self._broadcast_distribution(watch, life, height)
        if now == Phase.EXITING and life["funding_spent"] and life["funding_spent"]["by"] == "tree":
            if watch.role == "client":
                changed |= self._client_exit(watch, life, height)
        if watch.role == "lsp" and (now == Phase.EXITING or height >= watch.params.timeout(0)):
            changed |= self._sweeps(watch, life, height)
        return changed

    # --- dying period ---

    def _warn_dying(self, watch: Watch, height: int) -> None:
        last = self._warned.get(watch.fid)
        if last is not None and height - last < dying_warning_interval(watch.params):
            return
        self._warned[watch.fid] = height
        capacity = sum(o.value for o in watch.distribution.outputs[:watch.params.n_clients]) \
            if watch.distribution is not None else 0
        self.log(f"factory {watch.fid} is in its dying period: close or roll it over before height "
                 f"{watch.params.distribution_height}, or the distribution gives the clients the channels' whole "
                 f"capacity ({capacity} sat)", level="unusual")

    # --- distribution ---

    def _broadcast_distribution(self, watch: Watch, life: dict[str, Any], height: int) -> bool:
        """Offer the distribution, escalating through its fee variants (`chain/variants.py`)."""
        assert watch.distribution is not None
        dist = life["distribution"] or _distribution_entry()
        life["distribution"] = dist
        fresh = dist.get("variant_since_height") is None or dist["status"] != "broadcast"
        tx, error = offer(lambda t: self.node.broadcast(t.to_hex(), [watch.funding_prevout]),
                          watch.distributions or (watch.distribution,), dist, height,
                          escalate_blocks(watch.params.timeout_margin_blocks),
                          lambda text: self.log(f"factory {watch.fid}: the distribution {text}", level="info"))
        dist["attempts"] = int(dist.get("attempts", 0)) + 1
        if error is None:
            if fresh or dist.get("txid") != tx.txid:
                self.log(f"factory {watch.fid}: funding output unspent at the distribution height "
                         f"{watch.params.distribution_height}: broadcast the distribution transaction "
                         f"{tx.txid} ({rate_of(int(dist['variant']))})")
            dist.update(status="broadcast", last_error=None)
            dist["first_broadcast_height"] = dist.get("first_broadcast_height") or height
            dist["last_broadcast_height"] = height
        else:
            dist["last_error"] = error
            self.log(f"factory {watch.fid}: broadcasting the distribution failed (retried next block): {error}",
                     level="info")
        dist["txid"] = tx.txid
        return True

    # --- a balance the distribution would not pay: the client's own path, before it ---

    def _client_uncovered_exit(self, watch: Watch, life: dict[str, Any], height: int) -> bool:
        if life["exit_started"] is not None or self.store.get(watch.fid, "exit") is not None:
            return False
        rec = self.store.get(watch.fid, "factory")
        if rec is None or watch.distribution is None or (rec.get("close") or {}).get("status") in ("seen", "confirmed"):
            return False  # a close on chain pays the whole balance
        # A close or rollover still pending here (say, stuck at the agreed fee rate) may never confirm: our
        # exit races it, and either pays us (the close our balance, our exit keeps our channels backed).
        if not any(s.get("mine") for s in rec.get("sales", [])):
            return False  # only a sale channel can hold more than the leaf's capacity
        chans = [ch for ch in self.node.peer_channels(rec["lsp"]) if channel_in_factory(rec, ch)]
        balance_msat = sum(msat(ch.get("to_us_msat", 0)) for ch in chans)
        paid_sat = watch.distribution.outputs[int(rec["client_index"])].value
        if balance_msat <= paid_sat * 1000:
            return False
        why = (f"the distribution would pay {paid_sat} sat of our {balance_msat} msat (sale channels): exiting "
               f"before the distribution height {watch.params.distribution_height}")
        plan = exit_plan(self.store, self.client, watch.fid, None)
        # The path and our sales only: once they confirm, each channel is an ordinary funded one.
        progress = self.exits.start(watch.fid, plan.txs, [], plan.bump_after, plan.timeout_height, None, plan.known,
                                    plan.dw_step, {"reason": why, "height": height}, lstock_csv=plan.lstock_csv)
        life["exit_started"] = {"height": height, "reason": why}
        self.log(f"factory {watch.fid}: {why}; publishing this client's path ({progress['status']})", level="unusual")
        return True

    # --- the tree going on chain: the client's own path ---

    def _client_exit(self, watch: Watch, life: dict[str, Any], height: int) -> bool:
        if life["exit_started"] is not None:
            return False
        progress = self.store.get(watch.fid, "exit")
        if progress is not None and progress["status"] not in DONE:
            return False  # its own exit is running already
        confirmed = life["tree_confirmed"]
        # A client with channels on liquidity sales publishes those sales as soon as its leaf is on chain:
        # once the L-stock's script path opens (lstock_csv_blocks) the LSP alone could spend it.
        sold = watch.leaf in confirmed and any(s.get("mine") for s in
                                               (self.store.get(watch.fid, "factory") or {}).get("sales", []))
        if watch.leaf in confirmed and not sold:
            life["exit_started"] = {"height": height, "reason": "its leaf is on chain already: nothing to publish"}
            return True
        racing = sorted(k for k in watch.kickoffs if k in confirmed)
        start_at = exit_start_height(watch.params, watch.ewt)
        if not racing and not sold and height < start_at:
            return False
        why = ("its leaf is on chain: its liquidity sales must confirm before the L-stock's script path opens"
               if sold else
               f"tree partly on chain: kickoff {racing[0]} of its path confirmed, the newest state must confirm first"
               if racing else f"tree partly on chain: its path must confirm before its leaf's timeout "
                              f"{watch.params.timeout(watch.params.height)}")
        plan = exit_plan(self.store, self.client, watch.fid, None)
        # Publish the path only: once the leaf confirms the channel is an ordinary, funded one.
        progress = self.exits.start(watch.fid, plan.txs, [], plan.bump_after, plan.timeout_height, None, plan.known,
                                    plan.dw_step, {"reason": why, "height": height},
                                    {n: h for n, h in confirmed.items() if n in {t[0] for t in plan.txs}},
                                    lstock_csv=plan.lstock_csv)
        life["exit_started"] = {"height": height, "reason": why}
        self.log(f"factory {watch.fid}: {why}; publishing this client's path ({progress['status']})")
        return True

    # --- the LSP's sweeps ---

    def _graph(self, fid: str) -> Optional[FactoryGraph]:
        graph = self._graphs.get(fid)
        if graph is None:
            rec = self.store.get(fid, "factory")
            if rec is None:
                return None
            graph = lsp_graph(rec)
            signed = set(self._watches[fid].tree) if self._watches and fid in self._watches else set()
            if {t.tx.txid for t in graph.txs()} != signed:
                self.log(f"factory {fid}: the rebuilt tree does not match the signed one: no sweeps", level="unusual")
                return None
            self._graphs[fid] = graph
        return graph

    def _sweeps(self, watch: Watch, life: dict[str, Any], height: int) -> bool:
        graph = self._graph(watch.fid)
        if graph is None:
            return False
        changed = self._plan_sweeps(watch, graph, life, height)
        for name, sweep in life["sweeps"].items():
            if sweep["status"] in ("waiting", "broadcast") and height >= sweep["due_height"] - 1:
                error = self.node.broadcast(sweep["hex"], [(int(sweep["prevout_value"]), bytes.fromhex(sweep["prevout_script"]))])
                if error is None and sweep["status"] != "broadcast":
                    self.log(f"factory {watch.fid}: broadcast sweep {name} ({sweep['txid']}) of {sweep['outpoint']}: "
                             f"{sweep['value_sat']} sat after a {sweep['fee_sat']} sat fee")
                    sweep.update(status="broadcast", broadcast_height=height, last_error=None)
                    changed = True
                elif error is not None and error != sweep.get("last_error"):
                    sweep["last_error"] = error  # too early, or its parent not confirmed yet: next block
                    changed = True
        return changed

    def _plan_sweeps(self, watch: Watch, graph: FactoryGraph, life: dict[str, Any], height: int) -> bool:
        """Add the sweeps that became possible: timed-out outputs no tree transaction spent, and the
        L-stock of each confirmed leaf."""
        topology = graph.factory.topology
        confirmed = life["tree_confirmed"]
        params = watch.params
        dest = watch.lsp_script
        added = False
        candidates: list[int] = []
        # The funding output is never swept while we hold its distribution: that pays us our share too, and
        # its fee variants go on being offered; taking the clients' capacity instead would be theft.
        if life["funding_spent"] is None and height >= params.timeout(0) - 1 and watch.distribution is None:
            candidates.append(0)
        for n in topology.nodes:
            if graph.states[n.index].name not in confirmed:
                continue
            if n.is_leaf:
                key = f"lstock/{n.index}"
                # A sold L-stock backs sale channels: the sale, not the LSP's sweep, must spend it.
                if key not in life["sweeps"] and n.index not in watch.sold_leaves:
                    outpoint, prevout = graph.lstock(n.index)
                    due = confirmed[graph.states[n.index].name] + params.lstock_csv_blocks
                    spend = lstock_sweep(graph.factory, n.index, outpoint, prevout, dest)
                    added |= self._add_sweep(watch, life, key, "lstock", spend, outpoint, due)
            for c in n.children:
                first = graph.node_txs(c)[0].name
                if first not in confirmed and height >= params.timeout(topology.nodes[c].depth) - 1:
                    candidates.append(c)
            if n.is_leaf and n.index in watch.sold_leaves:
                added |= self._sold_lstock(watch, graph, life, n.index, height)
        for c in candidates:
            key = f"timeout/{c}"
            if key not in life["sweeps"]:
                outpoint, _ = graph.owned_outpoint(c)
                spend = timeout_sweep(graph, c, dest)
                added |= self._add_sweep(watch, life, key, "timeout", spend, outpoint,
                                         params.timeout(topology.nodes[c].depth) + 1)
        return added

    def _sold_lstock(self, watch: Watch, graph: FactoryGraph, life: dict[str, Any], leaf: int, height: int) -> bool:
        """A confirmed leaf whose L-stock was sold: publish its sales in order (each buyer does too; we hold
        them fully signed, and a buyer that stays away must not leave our rest stuck), then sweep the rest
        of the L-stock, output 1 of the last sale that backs a channel, `lstock_csv_blocks` after it
        confirmed. A later sale that backs nothing (`unopened`) is left out: the sweep spends its input."""
        chain = sale_chain(list(watch.sales), leaf)
        done = life.get("sales_confirmed", {})
        for pos, k in enumerate(chain):
            if str(k) in done:
                continue
            if pos == 0 or str(chain[pos - 1]) in done:
                sale = watch.sales[k]
                value, script = sale["prevout"]
                error = self.node.broadcast(str(sale["tx"]), [(int(value), bytes.fromhex(script))])
                if error is None and life.setdefault("sales_published", {}).get(str(k)) is None:
                    life["sales_published"][str(k)] = height
                    self.log(f"factory {watch.fid}: its leaf {leaf} is on chain: published liquidity sale {sale['txid']}")
                    return True
            return False
        if not chain:
            return False
        last = watch.sales[chain[-1]]
        key = f"sale-rest/{chain[-1]}"
        if key in life["sweeps"]:
            return False
        tx = Tx.from_hex(str(last["tx"]))
        spend = lstock_sweep(graph.factory, leaf, tx.outpoint(1), tx.outputs[1], watch.lsp_script)
        return self._add_sweep(watch, life, key, "lstock", spend, tx.outpoint(1),
                               int(done[str(chain[-1])]) + watch.params.lstock_csv_blocks)

    def _add_sweep(self, watch: Watch, life: dict[str, Any], key: str, kind: str, spend: ScriptSpend,
                   outpoint: OutPoint, due: int) -> bool:
        seckey = self.node.secret(factory_key_label(self.node.node_id(), bytes.fromhex(watch.fid), "lsp"))
        tx = sign_script_spend(spend, seckey, secrets.token_bytes(32))
        sweep = {"kind": kind, "outpoint": f"{outpoint.txid_hex}:{outpoint.vout}", "txid": tx.txid, "hex": tx.to_hex(),
                 "prevout_value": spend.prevout.value, "prevout_script": spend.prevout.script_pubkey.hex(),
                 "value_sat": tx.outputs[0].value, "fee_sat": spend.prevout.value - tx.outputs[0].value,
                 "due_height": due, "status": "waiting", "confirmed_height": None, "last_error": None}
        life["sweeps"][key] = sweep
        self._index_sweep(watch.fid, key, sweep)
        return True


def _distribution_entry() -> dict[str, Any]:
    return {"status": "waiting", "txid": None, "attempts": 0, "first_broadcast_height": None,
            "last_broadcast_height": None, "confirmed_height": None, "last_error": None, "variant": 0,
            "variant_since_height": None}


def lsp_graph(rec: dict[str, Any]) -> FactoryGraph:
    """The LSP's tree for its record's current state, rebuilt from the agreed terms, keys and scripts."""
    params = FactoryParams.deserialize(rec["params"].encode())
    scripts = rec["scripts"]
    factory = Factory(params, [ClientTerms(int(b), int(i)) for b, i in rec["terms"]],
                      [bytes.fromhex(k) for k in rec["pubkeys"]],
                      FactoryScripts(tuple(bytes.fromhex(s) for s in scripts["channels"]),
                                     tuple(bytes.fromhex(s) for s in scripts["payouts"]), bytes.fromhex(scripts["lsp"])))
    txid, vout = rec["funding_outpoint"].split(":")
    return factory.graph(OutPoint.from_hex(txid, int(vout)), rec["state"])
