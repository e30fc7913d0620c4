"""Forgetting retired channels, or counting what keeping them costs (`superscalar-forget-retired`).

A retired channel (chain/retire.py) spends a leaf that can never exist: stock lightningd keeps it for
ever and sends its closing transaction to bitcoind on every block and every 30-60 s
(docs/retiring-channels.md). The only way out on v26.06.x is `dev-forget-channel`, which needs
lightningd's `--developer`. So:

- **On** (`superscalar-forget-retired=true`, refused unless lightningd runs with `--developer`): once a
  factory's channels are retired, which happens only after its replacement (the cooperative close, or
  the distribution) is `superscalar-confirm-depth` deep, each of them is forgotten on this node
  (`dev-forget-channel`) when its funding output provably cannot exist: the factory's own funding
  output is spent (`getutxout` finds nothing: the close or the distribution spent it, so no transaction
  of the tree can ever be valid) and so is the channel's (`getutxout` again, which lightningd repeats
  before forgetting). A channel with HTLCs is left (lightningd refuses) and tried again next block.
- **Off** (the default): nothing is forgotten. Once a day (every WARN_EVERY_BLOCKS) the retired
  channels are counted, and above WARN_THRESHOLD the log says how many there are and what they cost.

Each factory is looked at until its channels are gone from lightningd, then marked
(`channels_forgotten`). ARCHIVE_AFTER_BLOCKS later its records, which nothing can need any more (its
funding output is spent by its replacement, no transaction of its tree can ever be valid, lightningd
has no channel of it), are deleted and counted in one document of bounded size (cln/store.py
`archive_factory`): neither the datastore nor the per-block work of every step that reads factory
records grows with the factories a node has seen. With forgetting off the records stay, as the
channels they describe do.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional, Protocol

from ..factory.params import FactoryParams
from .close_watch import CONFIRMED
from .exits import CLOSING_STATES
from .lifecycle import LIFECYCLE
from .retire import ChannelNode, factory_channel_ids

WARN_EVERY_BLOCKS = 144
WARN_THRESHOLD = 100  # retired channels before the daily warning
ARCHIVE_AFTER_BLOCKS = 6  # after the last channel of a retired factory was forgotten
RETIRED_STATES = CLOSING_STATES | {"ONCHAIN"}
# The retirement's mutual close not yet agreed by the peer (it was offline): the peer still takes the
# channel for a live one, and forgetting it now would make this node's connectd answer the peer's
# channel_reestablish with an error and drop the connection when it returns (docs/retiring-channels.md).
# Such a channel is forgotten once the peer came back and signed, or FORGET_AWAY_BLOCKS after the
# factory's distribution height for a peer that never does.
AWAITING_PEER = frozenset({"CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE"})
FORGET_AWAY_BLOCKS = 1008


class ForgetNode(ChannelNode, Protocol):
    def output_exists(self, txid: str, vout: int) -> bool: ...

    rpc: Any


class ForgetStore(Protocol):
    def factory_ids(self) -> list[str]: ...

    def get(self, factory_id: str, record: str) -> Optional[dict[str, Any]]: ...

    def put(self, factory_id: str, record: str, data: dict[str, Any]) -> None: ...

    def archive_factory(self, factory_id: str, summary: dict[str, Any]) -> None: ...


def retired(store: ForgetStore, fid: str, rec: dict[str, Any]) -> bool:
    """Were this factory's channels retired (its replacement confirmed at depth)?"""
    close = rec.get("close") or {}
    if close.get("status") == CONFIRMED and close.get("retired"):
        return True
    life = store.get(fid, LIFECYCLE) or {}
    return bool(life.get("channels_retired"))


class Forgetter:
    def __init__(self, node: ForgetNode, store: ForgetStore, log: Callable[..., None], forget: bool,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node, self.store, self.log, self.forget, self.clock = node, store, log, forget, clock
        self._done: set[str] = set()  # factories not to look at again (a record without its factory)
        self._forgotten_at: dict[str, int] = {}  # factories whose channels are all forgotten: at what height
        self.forgotten = 0  # channels forgotten since start (for superscalar-getinfo)
        self.archived = 0  # factories archived since start

    def on_block(self, height: int) -> None:
        if self.forget:
            self._forget_due(height)
            self._archive_due(height)
        elif height % WARN_EVERY_BLOCKS == 0:
            self._warn()

    def _forget_due(self, height: int) -> None:
        for fid in self.store.factory_ids():
            if fid in self._done or fid in self._forgotten_at:
                continue
            rec = self.store.get(fid, "factory")
            if rec is None:
                self._done.add(fid)
                continue
            if rec.get("channels_forgotten"):
                self._forgotten_at[fid] = int(rec.get("forgotten_height", height))
                continue
            if not retired(self.store, fid, rec):
                continue
            txid, vout = str(rec["funding_outpoint"]).split(":")
            if self.node.output_exists(txid, int(vout)):  # the root output unspent: not provably dead yet
                continue
            known = list(rec.get("forgotten_channel_ids") or ())
            if self._forget_factory(fid, rec, height) == 0:
                rec["channels_forgotten"], rec["forgotten_height"] = True, height
                self.store.put(fid, "factory", rec)
                self._forgotten_at[fid] = height
            elif rec["forgotten_channel_ids"] != known:
                self.store.put(fid, "factory", rec)

    def _archive_due(self, height: int) -> None:
        """Archive each factory whose channels were all forgotten ARCHIVE_AFTER_BLOCKS ago, once
        lightningd shows no channel of it (none came back, e.g. a channel reopened on a reorged leaf)."""
        due = [fid for fid, at in self._forgotten_at.items() if height >= at + ARCHIVE_AFTER_BLOCKS]
        if not due:
            return
        listed = {str(ch.get("channel_id")) for ch in self.node.peer_channels()}
        for fid in due:
            rec = self.store.get(fid, "factory")
            if rec is None:
                del self._forgotten_at[fid]
                continue
            ids = [str(c) for c in rec.get("forgotten_channel_ids") or factory_channel_ids(self.node, rec)]
            if set(ids) & listed:
                continue
            close = rec.get("close") or {}
            self.store.archive_factory(fid, {
                "role": rec.get("role"), "funding_outpoint": rec.get("funding_outpoint"),
                "ended_by": close.get("txid") or "distribution", "forgotten_height": self._forgotten_at[fid],
                "archived_height": height, "channel_ids": ids})
            del self._forgotten_at[fid]
            self.archived += 1
            self.log(f"factory {fid}: archived (its funding output is spent, its {len(ids)} channels forgotten "
                     f"at block {rec.get('forgotten_height')}); its records are deleted")

    def _forget_factory(self, fid: str, rec: dict[str, Any], height: int) -> int:
        """Forget each retired channel of the factory still listed; how many are left. (The ids are
        kept in the record: a client finds its channels through lightningd, which forgets them.)"""
        ids = set(factory_channel_ids(self.node, rec)) | set(rec.get("forgotten_channel_ids") or ())
        rec["forgotten_channel_ids"] = sorted(ids)
        left = 0
        for ch in self.node.peer_channels():
            if ch.get("channel_id") not in ids:
                continue
            if ch.get("state") in AWAITING_PEER and height < (
                    FactoryParams.deserialize(rec["params"].encode()).distribution_height + FORGET_AWAY_BLOCKS):
                left += 1  # its peer has not agreed the retirement yet
                continue
            if ch.get("state") not in RETIRED_STATES or self.node.output_exists(
                    str(ch.get("funding_txid")), int(ch.get("funding_outnum", 0))):
                left += 1
                continue
            try:
                self.node.rpc.call("dev-forget-channel", {"id": ch["peer_id"], "channel_id": ch["channel_id"]})
                self.forgotten += 1
                self.log(f"factory {fid}: forgot retired channel {ch['channel_id']} ({ch.get('state')}): "
                         "its funding output can never exist")
            except Exception as e:  # HTLCs still attached, or the peer busy: next block
                left += 1
                self.log(f"factory {fid}: cannot forget channel {ch['channel_id']} yet: {e}", level="info")
        return left

    def count(self) -> tuple[int, float]:
        """Retired factory channels lightningd still lists, and how long listing them took (s)."""
        started = self.clock()
        listing = self.node.peer_channels()
        took = self.clock() - started
        factory_ids: set[str] = set()
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is not None and not rec.get("channels_forgotten") and retired(self.store, fid, rec):
                factory_ids.update(factory_channel_ids(self.node, rec))
        return sum(1 for ch in listing if ch.get("channel_id") in factory_ids
                   and ch.get("state") in RETIRED_STATES), took

    def _warn(self) -> None:
        n, took = self.count()
        if n < WARN_THRESHOLD:
            return
        self.log(f"{n} retired factory channels are kept by lightningd: it sends {n} closing transactions "
                 f"that can never confirm to bitcoind on every block and every 30-60 s ({n} sendrawtransaction "
                 f"processes), and listpeerchannels took {took * 1000:.0f} ms. Run lightningd with --developer "
                 "and superscalar-forget-retired=true to forget them (docs/retiring-channels.md)", level="unusual")
