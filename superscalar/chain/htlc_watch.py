"""Start a factory exit early enough to enforce an HTLC on chain.

An HTLC on a factory channel can only be enforced on chain once the leaf is there: the path takes the
channel's early-warning time (EWT) to confirm, then the commitment and the HTLC transaction need their
own blocks (`allowance`, option `superscalar-htlc-exit-allowance-blocks`). lightningd goes on chain for
an HTLC only near its deadline, far too late for a leaf that is not on chain yet. So once per block
each node looks at the pending HTLCs of its factory channels (one `listpeerchannels`, filtered) and
starts the exit of a channel's path (`exit_routing.exit_plan`, `Exits.start`) at height
`cltv_expiry − (EWT + allowance)` for an HTLC it must enforce:

- a client: every HTLC of its factory channel, either way (incoming ones it can claim with the
  preimage, outgoing ones it must time out);
- the LSP: HTLCs it offered to the client (it must time them out before its own upstream HTLC expires)
  and incoming ones it fulfilled (it holds the preimage; `listforwards` / `listinvoices` say so).

An HTLC counts only once it was already pending at an earlier block's pass: one caught in the middle
of being settled as a block arrives (a normal payment, or a short-headroom one the LSP took within its
bounds, whose exit height has passed already) starts nothing. The same pass recounts the LSP's pending short-headroom HTLCs for `htlc_exposure.py` and refreshes the
index's view of lightningd's channels. The exit record says why it started (`reasons`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..cln.htlc_index import CHANNEL_FIELDS, LSP, FactoryChannel, HtlcIndex, LiveChannel
from ..cln.htlc_exposure import PendingHtlc, ShortHtlcExposure
from ..cln.node import ClnNode, msat
from ..records import ExitPaths
from ..cln.store import Store
from .exits import Exits
from .routing import exit_plan

# Blocks allowed, after the leaf confirms, for the commitment and then the HTLC transaction to confirm
# (each gets its own fee-bumped broadcast by lightningd's onchaind). Option superscalar-htlc-exit-allowance-blocks.
DEFAULT_HTLC_EXIT_ALLOWANCE = 12
# lightningd's HTLC states once we have started to remove an incoming HTLC (fulfil or fail).
WE_REMOVE_PREFIX = "SENT_REMOVE_"


@dataclass(frozen=True, slots=True)
class Deadline:
    """An HTLC of a factory channel and the height at which its path must start out."""

    factory: FactoryChannel
    channel: LiveChannel
    htlc_id: int
    direction: str  # "in" or "out", as lightningd lists it
    state: str
    payment_hash: str
    cltv_expiry: int
    amount_msat: int
    allowance: int

    @property
    def exit_height(self) -> int:
        return self.cltv_expiry - (self.factory.early_warning_blocks + self.allowance)

    def reason(self, height: int) -> dict[str, Any]:
        return {"reason": f"htlc {self.payment_hash} expires at {self.cltv_expiry}", "height": height,
                "payment_hash": self.payment_hash, "direction": self.direction, "cltv_expiry": self.cltv_expiry,
                "early_warning_blocks": self.factory.early_warning_blocks, "allowance_blocks": self.allowance,
                "exit_height": self.exit_height}


def deadlines(listing: list[dict[str, Any]], factory: dict[str, tuple[LiveChannel, FactoryChannel]],
              allowance: int) -> list[Deadline]:
    """Every pending HTLC of a backed factory channel in `listing` (listpeerchannels entries)."""
    out = []
    for ch in listing:
        found = factory.get(str(ch.get("channel_id")))
        if found is None:
            continue
        live, entry = found
        for h in ch.get("htlcs") or []:
            out.append(Deadline(entry, live, int(h["id"]), str(h["direction"]), str(h.get("state", "")),
                                str(h["payment_hash"]), int(h["expiry"]), msat(h["amount_msat"]), allowance))
    return out


class HtlcWatch:
    def __init__(self, node: ClnNode, store: Store, index: HtlcIndex, client: ExitPaths, exits: Exits,
                 exposure: ShortHtlcExposure, log: Callable[..., None],
                 allowance: int = DEFAULT_HTLC_EXIT_ALLOWANCE) -> None:
        self.node, self.store, self.index, self.client, self.exits = node, store, index, client, exits
        self.exposure, self.log, self.allowance = exposure, log, allowance
        self._first_seen: dict[tuple[str, int, str], int] = {}  # (channel id, HTLC id, direction) → height

    def on_block(self, height: int) -> list[str]:
        """Refresh the channels, recount the LSP's short HTLCs, and start each exit an HTLC calls for.
        Returns the factory ids whose exit was started."""
        taken = self.index.mark()
        listing = self.node.peer_channels_fields((*CHANNEL_FIELDS, "htlcs"))
        self.index.set_channels(listing, taken=taken)
        factory = {live.channel_id: (live, entry) for live, entry in self.index.factory_channels()}
        pending = deadlines(listing, factory, self.allowance)
        self.exposure.recount([PendingHtlc(d.factory.peer_id, (d.channel.channel_id, d.htlc_id), d.amount_msat)
                               for d in pending if d.factory.role == LSP and d.direction == "in"
                               and d.cltv_expiry - height < d.factory.early_warning_blocks], height)
        if pending:
            nearest = min(pending, key=lambda d: d.exit_height)
            self.log(f"HTLC watch at height {height}: {len(pending)} factory HTLCs pending, the nearest "
                     f"({nearest.payment_hash}) calls for an exit at height {nearest.exit_height}", level="debug")
        seen = {(d.channel.channel_id, d.htlc_id, d.direction): self._first_seen.get(
            (d.channel.channel_id, d.htlc_id, d.direction), height) for d in pending}
        self._first_seen = seen
        started = []
        for d in pending:
            if height < d.exit_height or seen[(d.channel.channel_id, d.htlc_id, d.direction)] >= height:
                continue
            if not self.must_enforce(d) or self._exiting(d):
                continue
            peer = d.factory.peer_id if d.factory.role == LSP else None
            why = d.reason(height)
            try:
                plan = exit_plan(self.store, self.client, d.factory.factory_id, peer)
            except ValueError as e:  # a factory whose funding never went out has no path
                self.log(f"factory {d.factory.factory_id}: {why['reason']}, but no exit: {e}", level="unusual")
                continue
            self.log(f"factory {d.factory.factory_id}: {why['reason']}, its path needs {d.factory.early_warning_blocks} "
                     f"+ {self.allowance} blocks: starting the exit at height {height}", level="info")
            plan.start(self.exits, d.factory.factory_id, d.cltv_expiry, reason=why)
            started.append(d.factory.factory_id)
        return started

    def must_enforce(self, d: Deadline) -> bool:
        """A client enforces every HTLC of its factory channel; the LSP those it offered and the incoming
        ones it fulfilled."""
        if d.factory.role != LSP or d.direction == "out":
            return True
        return d.state.startswith(WE_REMOVE_PREFIX) and self.node.incoming_fulfilled(
            d.channel.names, d.htlc_id, d.payment_hash)

    def _exiting(self, d: Deadline) -> bool:
        progress = self.store.get(d.factory.factory_id, "exit")
        return bool(progress is not None and progress.get("status") != "cancelled"
                    and d.channel.outpoint in progress.get("channels", []))
