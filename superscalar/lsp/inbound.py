"""Inbound on demand, out of a factory's liquidity stock first.

- `sale_first`: how the LSPS2 service (lsp/jit.py) gets a JIT channel for a client: an L-stock sale in
  one of the client's factories with this LSP (lsp/sale.py: every signer of its leaf online, enough
  L-stock), else `fallback` (a zero-conf channel from the wallet).
- `OnDemand`: an HTLC the LSP is to forward over a factory channel whose LSP side cannot carry it (the
  client's inbound is used up) is held while a sale adds a channel to that client, then forwarded over
  the new channel (the hook's `forward_to`). One sale per client at a time; HTLCs for the same client
  meanwhile wait for it. If no sale can be made the HTLC goes on as it came and lightningd fails it as
  it would have. The sale is priced by the LSP's sale fee (`Seller.fee_sat`), agreed in the sale's
  proposal (the buyer refuses a price above its limit, and then no sale is made) and paid out of the
  held HTLCs: each goes out short by its share of the price (bLIP-52's forwarding algorithm, with the
  bLIP-25 `extra_fee` TLV), as an LSPS2 opening fee is. The client takes a short part only for a
  single-part payment to one of its invoices (client/on_demand.py); a part it refuses is failed back,
  the payer may retry, and this LSP then sells that client nothing more on demand (`refused` below,
  recorded with the sale): what a client can take for free is bounded by one sale.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..cln.node import ClnNode, msat
from ..protocol import tlv
from ..protocol.lsps2 import forward_plan
from ..cln.store import Store
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


def sale_somewhere(seller: Seller, store: Store, peer: str, capacity_sat: int, log: Log,
                   price_msat: int = 0) -> Optional[dict[str, Any]]:
    """A sale of a new channel of `capacity_sat` to `peer` out of one of its factories' L-stock
    (`Seller.sell`'s result); None if none can."""
    for fid in client_factories(store, peer):
        try:
            return seller.sell(fid, peer, capacity_sat, price_msat=price_msat)
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


@dataclass(frozen=True)
class _Held:
    payload: tlv.Stream  # the onion payload for the next hop
    extra_tlvs: tlv.Stream  # the update_add_htlc TLVs to pass on
    forward_msat: int
    answer: Answer


class OnDemand:
    def __init__(self, node: ClnNode, store: Store, seller: Seller, is_factory_channel: Callable[[str], bool],
                 log: Log) -> None:
        self.node, self.store, self.seller, self.log = node, store, seller, log
        self._is_factory_channel = is_factory_channel
        self._lock = threading.Lock()
        self._waiting: dict[str, list[_Held]] = {}  # peer -> the HTLCs waiting for its sale
        # (in channel, in htlc id) of a forward short by a sale's price -> (peer, factory id, sale txid)
        self._short: dict[tuple[str, int], tuple[str, str, str]] = {}

    def on_htlc(self, onion: dict[str, Any], htlc: dict[str, Any], answer: Answer) -> bool:
        """Hold the HTLC (True) if it needs a sale to reach its factory client; False: not ours."""
        scid = onion.get("short_channel_id")
        if not scid or "forward_msat" not in onion or not self._is_factory_channel(str(scid)):
            return False
        named = self.node.channel_named(str(scid))
        if not named or not named[0].get("peer_connected"):
            return False
        channel = named[0]
        need = msat(onion["forward_msat"])
        peer = str(channel["peer_id"])
        if sum(msat(c.get("spendable_msat", 0)) for c in self.node.peer_channels(peer)
               if c.get("state") == "CHANNELD_NORMAL") >= need or not client_factories(self.store, peer) \
                or self.refused(peer):
            return False
        held = _Held(tlv.hop_payload(bytes.fromhex(onion["payload"])), tlv.parse_stream(bytes.fromhex(htlc.get("extra_tlvs") or "")),
                     need, answer)
        with self._lock:
            if peer in self._waiting:
                self._waiting[peer].append(held)
                return True
            self._waiting[peer] = [held]
        self.log(f"inbound for {peer}: {need} msat to forward, more than our side holds: selling a channel")
        threading.Thread(target=self._sell_and_forward, args=(peer, need, (str(htlc.get("short_channel_id")),
                                                                            int(htlc.get("id", -1)))),
                         name="superscalar-inbound", daemon=True).start()
        return True

    def _sell_and_forward(self, peer: str, need_msat: int, first: tuple[str, int]) -> None:
        answers: dict[int, dict[str, Any]] = {}  # index into the held list -> its answer
        rest: dict[str, Any] = {"result": "continue"}  # the others': no sale, lightningd fails them as it would have
        try:
            capacity = channel_capacity_sat(need_msat)
            price = self.seller.fee_sat(capacity) * 1000
            if price >= need_msat:
                raise ValueError(f"the payment ({need_msat} msat) cannot carry the price of the sale ({price} msat)")
            sale = sale_somewhere(self.seller, self.store, peer, capacity, self.log, price)
            if sale is not None:
                channel = wait_ready(self.node, peer, str(sale["channel_id"]))
                rest = {"result": "continue", "forward_to": sale["channel_id"]}  # come since: in full
                with self._lock:
                    held = list(self._waiting.get(peer, []))
                plan = forward_plan([h.forward_msat for h in held], price,
                                    msat(channel.get("minimum_htlc_out_msat", 0))) if price else \
                    [(h.forward_msat, 0) for h in held]
                for i, (h, (forward, deducted)) in enumerate(zip(held, plan)):
                    result: dict[str, Any] = {"result": "continue", "forward_to": sale["channel_id"]}
                    if deducted:
                        result["payload"] = tlv.serialize_stream(
                            tlv.replace(h.payload, tlv.AMT_TO_FORWARD, tlv.tu64(forward))).hex()
                        result["extra_tlvs"] = tlv.serialize_stream(
                            tlv.replace(h.extra_tlvs, tlv.EXTRA_FEE, deducted.to_bytes(8, "big"))).hex()
                    answers[i] = result
                if price:
                    with self._lock:
                        self._short[first] = (peer, str(sale["factory_id"]), str(sale["sale_txid"]))
                self.log(f"inbound for {peer}: forwarding {len(held)} HTLCs over the new channel {sale['channel_id']}"
                         f"{f' less its price of {price} msat' if price else ''}")
        except Exception as e:
            self.log(f"inbound for {peer}: {e!r}", level="unusual")
        finally:
            with self._lock:
                waiting = self._waiting.pop(peer, [])
            for i, h in enumerate(waiting):
                h.answer(answers.get(i, rest))

    def on_forward_event(self, event: dict[str, Any]) -> None:
        """A forward short by a sale's price that the client failed: no more sales on demand to it."""
        key = (str(event.get("in_channel")), int(event.get("in_htlc_id", -1)))
        status = event.get("status")
        if status not in ("settled", "failed", "local_failed"):
            return
        with self._lock:
            short = self._short.pop(key, None)
        if short is not None and status != "settled":
            peer, fid, txid = short
            self.seller.mark(fid, txid, price_refused=True)
            self.log(f"inbound for {peer}: it refused the forward that paid sale {txid}'s price: no more sales on "
                     f"demand to it", level="info")

    def refused(self, peer: str) -> bool:
        """Did `peer` refuse a forward that paid an on-demand sale's price (recorded with the sale)?"""
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec and rec.get("role") == "lsp" and any(s.get("price_refused") and s.get("peer_id") == peer
                                                        for s in rec.get("sales", [])):
                return True
        return False
