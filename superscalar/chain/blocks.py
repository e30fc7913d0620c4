"""Each block fetched and parsed once, for every step of the chain follower and every factory.

A `BlockView` is what a watcher needs of a block: its transactions, their txids, and every outpoint
it spends mapped to the spending txid ("txid:vout" strings, as the records write outpoints), so a
step finds what touched its factories with one dict lookup per watched item, whatever the number of
factories. `Blocks` keeps the last few views; `new_tip(height)` (the follower's first step) drops
those at and above a new tip's height, so a reorganised block is fetched again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from ..bitcoin.block import block_transactions
from ..bitcoin.tx import Tx

KEEP = 16  # views kept: a catch-up after a short pause reads each block once for every step


@dataclass(frozen=True)
class BlockView:
    height: int
    txs: tuple[Tx, ...]
    by_txid: dict[str, Tx]
    spent: dict[str, str]  # "txid:vout" spent in this block -> the spending txid

    @classmethod
    def parse(cls, height: int, raw: bytes) -> "BlockView":
        txs = block_transactions(raw)
        by_txid = {tx.txid: tx for tx in txs}
        spent = {f"{i.prevout.txid_hex}:{i.prevout.vout}": tx.txid for tx in txs for i in tx.inputs}
        return cls(height, txs, by_txid, spent)


class Blocks:
    """Blocks by height through `fetch` (lightningd's `getrawblockbyheight`, hex), parsed once."""

    def __init__(self, fetch: Callable[[int], str], keep: int = KEEP) -> None:
        self.fetch, self.keep = fetch, keep
        self._views: OrderedDict[int, BlockView] = OrderedDict()
        self._lock = threading.Lock()
        self.fetched = 0  # blocks fetched and parsed so far (for tests and the benchmark)

    def new_tip(self, height: int) -> None:
        """A block arrived at `height`: any view at or above it is stale (a reorganisation)."""
        with self._lock:
            for h in [h for h in self._views if h >= height]:
                del self._views[h]

    def at(self, height: int) -> BlockView:
        with self._lock:
            view = self._views.get(height)
            if view is not None:
                self._views.move_to_end(height)
                return view
        view = BlockView.parse(height, bytes.fromhex(self.fetch(height)))
        with self._lock:
            self._views[height] = view
            self.fetched += 1
            while len(self._views) > self.keep:
                self._views.popitem(last=False)
        return view

    def transactions(self, height: int) -> tuple[Tx, ...]:
        return self.at(height).txs
