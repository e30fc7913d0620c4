"""Offering a transaction that was signed with fee variants (`factory.graph.fee_variants`: the same
payments at higher multiples of the agreed fee rate, the extra from the LSP's output), for the
distribution and a cooperative close alike: the holder needs no coin of its own to get it confirmed
when the market is far above the agreed rate.

Each block: offer the current variant; if the mempool refuses it for its fee, the next one at once;
if it went out `step` blocks ago and still has not confirmed, the next one replaces it (RBF: each pays
more than the one before). The state lives in the caller's record entry: "variant" (index, 0 the
base) and "variant_since_height"."""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from ..bitcoin.tx import Tx
from ..factory.graph import FEE_VARIANT_MULTIPLIERS
from ..factory.lifecycle import escalate_blocks

__all__ = ["escalate_blocks", "fee_refusal", "offer", "rate_of"]

Broadcast = Callable[[Tx], Optional[str]]  # None if the mempool took it, else why not


def rate_of(k: int) -> str:
    return "the agreed fee rate" if k == 0 else f"{FEE_VARIANT_MULTIPLIERS[k - 1]}x the agreed fee rate"


def fee_refusal(error: str) -> bool:
    """Did the mempool refuse a transaction for its fee (not for a conflict or a missing input)?"""
    text = error.lower()
    return any(s in text for s in ("fee not met", "insufficient fee", "min relay fee", "mempool min fee",
                                   "feerate", "fee too low"))


def offer(broadcast: Broadcast, txs: Sequence[Tx], entry: dict[str, Any], height: int, step: int,
          log: Callable[[str], None]) -> tuple[Tx, Optional[str]]:
    """Offer the variant due now (see the module docstring); returns it and the mempool's refusal, if any.
    `entry` gets "variant" and "variant_since_height"."""
    k = min(int(entry.get("variant") or 0), len(txs) - 1)
    since = entry.get("variant_since_height")
    if since is not None and height - int(since) >= step and k + 1 < len(txs):
        k, since = k + 1, None
        log(f"not confirmed since height {entry.get('variant_since_height')}: replacing it with its variant at "
            f"{rate_of(k)}")
    while True:
        error = broadcast(txs[k])
        if error is None or not fee_refusal(error) or k + 1 >= len(txs):
            break
        log(f"at {rate_of(k)} it was refused for its fee ({error}); trying its variant at {rate_of(k + 1)}")
        k, since = k + 1, None
    entry["variant"] = k
    if since is None:
        entry["variant_since_height"] = height
    return txs[k], error
