"""Which channels are factory channels, held in memory for the `htlc_accepted` hook.

The hook must do constant work per HTLC, whatever the number of factories and clients: it may neither
read every record from the datastore nor list every channel from lightningd. `HtlcIndex` holds both
halves of the answer and joins them on lookup:

- from the factory records (loaded at start, then kept current by `Store`'s write listener): which
  channel ids (LSP records) and leaf outpoints (client records) belong to which factory, with their
  early-warning blocks, whether anything backs them, and whether a client's leaf script is verified;
- from lightningd: each channel's id, funding outpoint, peer, short channel id and aliases (loaded at
  start, refreshed after `channel_opened` / `channel_state_changed` (that peer's channels, in a thread
  of its own: `PeerRefresh`) and once per block (all), and when an HTLC names an unknown short channel
  id: that channel only, at most once per such id per block).

A record that cannot be read makes every lookup raise `IndexUnreadable`: the hook then fails the HTLC
(fail closed), as it did when it read the records itself.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from ..records import MISMATCH, UNVERIFIED, funding_ok, leaf_status
from ..factory.params import FactoryParams
from ..sales import sale_position
from .store import Store, StoreError

# LSP factory stages whose channels nothing funds.
DEAD_STAGES = ("abandoned", "funding-mismatch")
LSP, CLIENT = "lsp", "client"
# The fields of a listpeerchannels entry the index reads (a `filter` keeps lightningd's answer small).
CHANNEL_FIELDS = ("channel_id", "peer_id", "funding_txid", "funding_outnum", "short_channel_id", "alias")


class IndexUnreadable(RuntimeError):
    """A factory record could not be read: no HTLC can be checked against it."""


@dataclass(frozen=True, slots=True)
class FactoryChannel:
    """One factory channel as this node's record describes it."""

    factory_id: str
    role: str  # this node's role in the factory: "lsp" or "client"
    peer_id: str  # the client (LSP role) or the LSP (client role)
    early_warning_blocks: int
    backed: bool  # False: nothing funds it (abandoned, unfunded, leaf paying another script)
    leaf_unverified: bool  # client role: its leaf script is not verified yet
    confirm_blocks: int = 6  # the factory's confirmation allowance per transaction
    frozen: bool = False  # a cooperative close or rollover is under way: it takes no HTLC


@dataclass(frozen=True, slots=True)
class LiveChannel:
    """A channel as lightningd lists it: the ids an HTLC may name it by."""

    channel_id: str
    peer_id: str
    outpoint: str
    short_channel_id: Optional[str]
    aliases: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(x for x in (self.short_channel_id, *self.aliases) if x)

    @classmethod
    def from_listing(cls, ch: dict[str, Any]) -> "LiveChannel":
        aliases = tuple(str(x) for x in (ch.get("alias") or {}).values() if x)
        scid = ch.get("short_channel_id")
        return cls(str(ch.get("channel_id", "")), str(ch.get("peer_id", "")),
                   f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}", str(scid) if scid else None, aliases)


@dataclass(frozen=True, slots=True)
class Lookup:
    """What the index knows of a short channel id: the channel, its factory (None: not a factory
    channel), and whether nothing backs it (a factory nothing funds, or a zero-conf channel from an
    LSP that is not a leaf)."""

    channel: LiveChannel
    factory: Optional[FactoryChannel]
    unbacked: bool


def record_channels(factory_id: str, rec: dict[str, Any]) -> tuple[dict[str, FactoryChannel], Optional[str]]:
    """The factory channels a `factory` record describes, keyed by channel id (LSP) or leaf outpoint
    (client), and the LSP a client record names."""
    if rec.get("role") == LSP:
        backed = rec.get("stage") not in DEAD_STAGES
        confirm = FactoryParams.deserialize(rec["params"].encode()).confirm_blocks
        frozen = bool(rec.get("frozen"))
        entries = {str(c["channel_id"]): FactoryChannel(factory_id, LSP, str(c["peer_id"]), int(c["early_warning_blocks"]),
                                                        backed, False, confirm, frozen)
                   for c in rec["channels"] if c.get("channel_id")}
        sales = rec.get("sales", [])
        for k, s in enumerate(sales):  # a sale channel's exit publishes its leaf's sales up to its own too
            if s.get("channel_id"):
                ewt = _leaf_ewt(rec, str(s["peer_id"])) + confirm * sale_position(sales, k)
                entries[str(s["channel_id"])] = FactoryChannel(factory_id, LSP, str(s["peer_id"]), ewt, backed, False,
                                                               confirm, frozen)
        return entries, None
    if rec.get("role") == CLIENT:
        ok = funding_ok(rec)
        entry = FactoryChannel(factory_id, CLIENT, str(rec["lsp"]), int(rec["early_warning_blocks"]), ok,
                               ok and leaf_status(rec) == UNVERIFIED,
                               FactoryParams.deserialize(rec["params"].encode()).confirm_blocks, bool(rec.get("frozen")))
        out = {str(rec["leaf_outpoint"]): entry}
        sales = rec.get("sales", [])
        for k, s in enumerate(sales):
            if s.get("mine"):
                sale_ok = ok and s.get("verified") != MISMATCH
                out[str(s["channel_outpoint"])] = FactoryChannel(
                    factory_id, CLIENT, str(rec["lsp"]), int(rec["early_warning_blocks"]) + entry.confirm_blocks
                    * sale_position(sales, k), sale_ok, sale_ok and s.get("verified") == UNVERIFIED,
                    entry.confirm_blocks, entry.frozen)
        return out, str(rec["lsp"])
    return {}, None


def _leaf_ewt(rec: dict[str, Any], peer: str) -> int:
    return max(int(c["early_warning_blocks"]) for c in rec["channels"] if c["peer_id"] == peer)


class HtlcIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, dict[str, FactoryChannel]] = {}  # channel id / leaf outpoint → factory → entry
        self._keys_of: dict[str, tuple[str, ...]] = {}  # factory id → its keys
        self._lsp_of: dict[str, str] = {}  # client factory id → its LSP
        self._lsps: Counter[str] = Counter()  # LSPs of our client factories
        self._unreadable: dict[str, str] = {}  # factory id → why its record cannot be read
        self._channels: dict[str, LiveChannel] = {}  # channel id → channel
        self._by_name: dict[str, str] = {}  # short channel id or alias → channel id
        self._refreshed: dict[str, int] = {}  # unknown short channel id → height of its last refresh
        self._seq = 0  # counts the writes of lightningd's half
        self._written_at: dict[str, int] = {}  # channel id → the write that last put it in

    # --- the records' half ---

    def load(self, store: Store) -> None:
        """Read every factory record (at start)."""
        for fid in store.factory_ids():
            try:
                rec = store.get(fid, "factory")
            except StoreError as e:
                with self._lock:
                    self._unreadable[fid] = str(e)
                continue
            if rec is not None:
                self.on_record(fid, "factory", rec)

    def on_record(self, factory_id: str, record: str, data: Optional[dict[str, Any]]) -> None:
        """`Store`'s write listener: a record was written (`data`) or deleted (None)."""
        if record != "factory":
            return
        try:
            entries, lsp = record_channels(factory_id, data) if data is not None else ({}, None)
            problem = None
        except (KeyError, TypeError, ValueError) as e:
            entries, lsp, problem = {}, None, f"{factory_id}: malformed factory record ({e!r})"
        with self._lock:
            for key in self._keys_of.pop(factory_id, ()):
                owners = self._by_key.get(key, {})
                owners.pop(factory_id, None)
                if not owners:
                    self._by_key.pop(key, None)
            old_lsp = self._lsp_of.pop(factory_id, None)
            if old_lsp is not None:
                self._lsps[old_lsp] -= 1
                if self._lsps[old_lsp] <= 0:
                    del self._lsps[old_lsp]
            for key, entry in entries.items():
                self._by_key.setdefault(key, {})[factory_id] = entry
            self._keys_of[factory_id] = tuple(entries)
            if lsp is not None:
                self._lsp_of[factory_id] = lsp
                self._lsps[lsp] += 1
            if problem is None:
                self._unreadable.pop(factory_id, None)
            else:
                self._unreadable[factory_id] = problem

    # --- lightningd's half ---

    def mark(self) -> int:
        """Taken before asking lightningd for a listing, and given to `set_channels` with it."""
        with self._lock:
            return self._seq

    def set_channels(self, listing: Iterable[dict[str, Any]], peer: Optional[str] = None,
                     taken: Optional[int] = None) -> None:
        """Replace what the index knows of lightningd's channels (of `peer` only, if given) by `listing`.
        With `taken` (`mark()` before the listing was asked for), a channel written since is kept as it
        is: the listing may be older than what an HTLC's lookup added meanwhile."""
        fresh = [LiveChannel.from_listing(ch) for ch in listing]
        with self._lock:
            newer = set() if taken is None else {i for i, at in self._written_at.items() if at > taken}
            self._seq += 1
            gone = [c for c in self._channels.values()
                    if (peer is None or c.peer_id == peer) and c.channel_id not in newer]
            for c in gone:
                self._channels.pop(c.channel_id, None)
                self._written_at.pop(c.channel_id, None)
                for name in c.names:
                    if self._by_name.get(name) == c.channel_id:
                        del self._by_name[name]
            for c in fresh:
                if c.channel_id not in newer:
                    self._put(c)

    def _put(self, c: LiveChannel) -> None:
        """Add or replace channel `c`; the caller holds the lock."""
        old = self._channels.get(c.channel_id)
        for name in old.names if old is not None else ():
            if self._by_name.get(name) == c.channel_id:
                del self._by_name[name]
        self._channels[c.channel_id] = c
        self._written_at[c.channel_id] = self._seq
        for name in c.names:
            self._by_name[name] = c.channel_id
            self._refreshed.pop(name, None)

    def add_channels(self, listing: Iterable[dict[str, Any]]) -> None:
        """Add (or update) the channels of `listing`, keeping every other one."""
        fresh = [LiveChannel.from_listing(ch) for ch in listing]
        with self._lock:
            self._seq += 1
            for c in fresh:
                self._put(c)

    def should_refresh(self, name: str, height: int) -> bool:
        """May an HTLC naming the unknown `name` refresh the channels? Once per name per block; the
        record of earlier blocks is dropped."""
        with self._lock:
            if self._refreshed.get(name) == height:
                return False
            if len(self._refreshed) > 1024:
                self._refreshed = {k: h for k, h in self._refreshed.items() if h == height}
            self._refreshed[name] = height
            return True

    # --- lookups ---

    def lookup(self, name: str) -> Optional[Lookup]:
        """The channel `name` (short channel id or alias) names, or None if the index does not know it."""
        with self._lock:
            if self._unreadable:
                fid, why = next(iter(self._unreadable.items()))
                raise IndexUnreadable(f"factory record {fid} cannot be read: {why}")
            channel_id = self._by_name.get(name)
            if channel_id is None:
                return None
            ch = self._channels[channel_id]
            owners = self._owners(ch)
            dead = any(not e.backed for e in owners.values())
            factory = next(iter(owners.values()), None)
            if factory is not None:
                return Lookup(ch, None if dead else factory, dead)
            return Lookup(ch, None, ch.peer_id in self._lsps and ch.short_channel_id is None)

    def factory_channels(self) -> list[tuple[LiveChannel, FactoryChannel]]:
        """Every live channel of a backed factory, with its factory entry (for the per-block HTLC watch)."""
        with self._lock:
            out = []
            for ch in self._channels.values():
                owners = self._owners(ch)
                if owners and all(e.backed for e in owners.values()):
                    out.append((ch, next(iter(owners.values()))))
            return out

    def lsps(self) -> tuple[str, ...]:
        """The LSPs of this node's client factories (from the records alone)."""
        with self._lock:
            return tuple(self._lsps)

    def _owners(self, ch: LiveChannel) -> dict[str, FactoryChannel]:
        """The factory entries of `ch`, by its channel id (LSP records) or funding outpoint (client
        records); the caller holds the lock."""
        by_id, by_outpoint = self._by_key.get(ch.channel_id), self._by_key.get(ch.outpoint)
        if by_id and by_outpoint:
            return {**by_id, **by_outpoint}
        return by_id or by_outpoint or {}

    def channel_of(self, name: str) -> Optional[str]:
        """The channel id a short channel id or alias names, if known."""
        with self._lock:
            return self._by_name.get(name)


class PeerRefresh:
    """Refreshes the index's channels of the peers that channel notifications name, in a thread of its
    own. pyln runs every notification and hook on one thread, so a `listpeerchannels` per notification
    (two or more per new channel) held up the HTLCs and ceremony messages queued behind them (one bench
    run at K = 32: 192 notifications held that thread 2.2 s). Until the refresh lands, an HTLC naming a
    new channel still finds it (`HtlcGuard.lookup` asks lightningd for that one)."""

    def __init__(self, index: HtlcIndex, list_peer: Callable[[str], list[dict[str, Any]]],
                 report: Callable[[Exception], None]) -> None:
        self.index, self.list_peer, self.report = index, list_peer, report
        self._dirty: set[str] = set()
        self._cond = threading.Condition()
        self._thread: Optional[threading.Thread] = None

    def mark(self, peer: str) -> None:
        """`peer`'s channels changed: refresh them soon (once for any number of marks meanwhile)."""
        with self._cond:
            self._dirty.add(peer)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="superscalar-index-refresh", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._dirty))
                peers, self._dirty = self._dirty, set()
            for peer in peers:
                try:
                    taken = self.index.mark()
                    self.index.set_channels(self.list_peer(peer), peer, taken)
                except Exception as e:  # the next notification, block or HTLC lookup refreshes it again
                    self.report(e)
