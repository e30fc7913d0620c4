"""Inbound on demand, out of a factory's liquidity stock first.

- `sale_first`: how the LSPS2 service (lsp/jit.py) gets a JIT channel for a client: an L-stock sale in
  one of the client's factories with this LSP (lsp/sale.py: every signer of its leaf online, enough
  L-stock), else `fallback` (a zero-conf channel from the wallet).
- `OnDemand`: an HTLC the LSP is to forward over a factory channel whose LSP side cannot carry it (the
  client's inbound is used up) is held while a sale adds a channel to that client, then forwarded over
  the new channel (the hook's `forward_to`). One sale per client at a time; HTLCs for the same client
  meanwhile wait for it. If no sale can be made the HTLC goes on as it came and lightningd fails it as
  it would have. The sale is priced by the LSP's sale fee (`Seller.fee_sat`); this path deducts nothing
  from the payment, so it runs only while that price is 0 (a priced sale is bought through LSPS1 or
  LSPS2, whose payments carry the fee).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

from ..node import ClnNode, msat
from ..store import Store
from .jit import OpenFor, channel_capacity_sat
from .sale import SaleError, Seller

Answer = Callable[[dict[str, Any]], None]
Log = Callable[..., None]
CHANNEL_READY_SECONDS = 60.0


def client_factories(store: Store, peer: str) -> list[str]:
    """The funded factories of ours in which `peer` is a client, newest first (most L-stock left)."""
    found = []
    for fid in store.factory_ids():
        rec = store.get(fid, "factory")
        if rec and rec.get("role") == "lsp" and rec.get("stage") == "funded" and not rec.get("frozen") \
                and rec.get("close") is None and any(c.get("peer_id") == peer for c in rec.get("channels", [])):
            found.append((int(rec.get("start_height") or 0), fid))
    return [fid for _, fid in sorted(found, reverse=True)]


def sale_somewhere(seller: Seller, store: Store, peer: str, capacity_sat: int, log: Log) -> Optional[dict[str, Any]]:
    """A sale of a new channel of `capacity_sat` to `peer` out of one of its factories' L-stock
    (`Seller.sell`'s result); None if none can."""
    for fid in client_factories(store, peer):
        try:
            return seller.sell(fid, peer, capacity_sat)
        except SaleError as e:
            log(f"inbound for {peer}: no sale in factory {fid}: {e}", level="info")
    return None


def sell_somewhere(seller: Seller, store: Store, peer: str, capacity_sat: int, log: Log) -> Optional[str]:
    """The channel id of such a sale, or None."""
    sale = sale_somewhere(seller, store, peer, capacity_sat, log)
    return None if sale is None else str(sale["channel_id"])


def sale_first(seller: Seller, store: Store, fallback: OpenFor, log: Log) -> OpenFor:
    def open_for(peer: str, capacity_sat: int) -> str:
        return sell_somewhere(seller, store, peer, capacity_sat, log) or fallback(peer, capacity_sat)
    return open_for


def wait_ready(node: ClnNode, peer: str, channel_id: str, seconds: float = CHANNEL_READY_SECONDS) -> dict[str, Any]:
    """The channel once both sides sent channel_ready (CHANNELD_NORMAL): only then can it carry HTLCs."""
    deadline = time.monotonic() + seconds
    while True:
        for ch in node.peer_channels(peer):
            if ch.get("channel_id") == channel_id and ch.get("state") == "CHANNELD_NORMAL":
                return ch
        if time.monotonic() > deadline:
            raise TimeoutError(f"channel {channel_id} not ready after {seconds:.0f} s")
        time.sleep(0.1)


class OnDemand:
    def __init__(self, node: ClnNode, store: Store, seller: Seller, is_factory_channel: Callable[[str], bool],
                 log: Log) -> None:
        self.node, self.store, self.seller, self.log = node, store, seller, log
        self._is_factory_channel = is_factory_channel
        self._lock = threading.Lock()
        self._waiting: dict[str, list[Answer]] = {}  # peer -> the hook answers waiting for its sale

    def on_htlc(self, onion: dict[str, Any], htlc: dict[str, Any], answer: Answer) -> bool:
        """Hold the HTLC (True) if it needs a sale to reach its factory client; False: not ours."""
        scid = onion.get("short_channel_id")
        if not scid or "forward_msat" not in onion or not self._is_factory_channel(str(scid)) \
                or self.seller.fee_sat(1) or self.seller.fee_sat(10**8):
            return False
        named = self.node.channel_named(str(scid))
        if not named or not named[0].get("peer_connected"):
            return False
        channel = named[0]
        need = msat(onion["forward_msat"])
        peer = str(channel["peer_id"])
        if sum(msat(c.get("spendable_msat", 0)) for c in self.node.peer_channels(peer)
               if c.get("state") == "CHANNELD_NORMAL") >= need or not client_factories(self.store, peer):
            return False
        with self._lock:
            if peer in self._waiting:
                self._waiting[peer].append(answer)
                return True
            self._waiting[peer] = [answer]
        self.log(f"inbound for {peer}: {need} msat to forward, more than our side holds: selling a channel")
        threading.Thread(target=self._sell_and_forward, args=(peer, need), name="superscalar-inbound",
                         daemon=True).start()
        return True

    def _sell_and_forward(self, peer: str, need_msat: int) -> None:
        result: dict[str, Any] = {"result": "continue"}  # no sale: lightningd fails it as it would have
        try:
            channel_id = sell_somewhere(self.seller, self.store, peer, channel_capacity_sat(need_msat), self.log)
            if channel_id is not None:
                wait_ready(self.node, peer, channel_id)
                result = {"result": "continue", "forward_to": channel_id}
                self.log(f"inbound for {peer}: forwarding over the new channel {channel_id}")
        except Exception as e:
            self.log(f"inbound for {peer}: {e!r}", level="unusual")
        finally:
            with self._lock:
                answers = self._waiting.pop(peer, [])
            for a in answers:
                a(result)
