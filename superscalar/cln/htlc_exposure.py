"""What an LSP risks on HTLCs from its clients that leave less CLTV headroom than the tree needs.

A client pays a plain payee through its LSP: the payee's invoice asks for a few blocks of final CLTV
(5–18 typically) and the LSP adds its own delta (34), far below the client's factory channel's
early-warning time. If the LSP learns the preimage downstream and the client then vanishes, the LSP
must get the tree on chain to claim that HTLC before it expires, and it cannot in time: the HTLC's
amount is at risk. The LSP takes such HTLCs anyway, but only while the sums still pending stay within
`superscalar-lsp-short-htlc-max-msat-per-client` (per client node) and
`superscalar-lsp-short-htlc-max-msat-total` (over all its factory channels).

`ShortHtlcExposure` keeps those sums: once per block it is recounted from lightningd's pending HTLCs
(incoming HTLCs on the LSP's factory channels whose expiry is nearer than the channel's early-warning
time), and between blocks each admitted HTLC is added and each resolved one removed (`forward_event`
names the incoming channel and payment hash, not the HTLC id).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Optional

# Defaults of the two options (msat): 20,000 sat per client, 2,000,000 sat in all.
DEFAULT_PER_CLIENT_MSAT = 20_000_000
DEFAULT_TOTAL_MSAT = 2_000_000_000

HtlcKey = tuple[str, int]  # (channel id, HTLC id)


@dataclass(frozen=True, slots=True)
class ShortHtlcLimits:
    per_client_msat: int = DEFAULT_PER_CLIENT_MSAT
    total_msat: int = DEFAULT_TOTAL_MSAT

    def __post_init__(self) -> None:
        if self.per_client_msat < 0 or self.total_msat < 0:
            raise ValueError("short-HTLC limits must not be negative")


@dataclass(frozen=True, slots=True)
class PendingHtlc:
    client: str
    key: HtlcKey
    amount_msat: int


class ShortHtlcExposure:
    def __init__(self, limits: ShortHtlcLimits = ShortHtlcLimits()) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._counted: Counter[str] = Counter()  # per client, at the last recount
        self._counted_keys: frozenset[HtlcKey] = frozenset()
        self._count_height = -1
        self._added: dict[HtlcKey, tuple[str, int, int, str]] = {}  # admitted since: key → (client, msat, height, hash)
        self._added_by_client: Counter[str] = Counter()

    def pending_msat(self, client: Optional[str] = None) -> int:
        with self._lock:
            return self._pending(client)

    def _pending(self, client: Optional[str]) -> int:
        if client is None:
            return sum(self._counted.values()) + sum(self._added_by_client.values())
        return self._counted[client] + self._added_by_client[client]

    def admit(self, client: str, key: HtlcKey, amount_msat: int, height: int, payment_hash: str = "") -> Optional[str]:
        """Take the short HTLC `key` of `amount_msat` from `client`'s channel; returns why not if either
        bound would be exceeded (nothing is counted then)."""
        with self._lock:
            if key in self._added or key in self._counted_keys:
                return None  # replayed after a restart of lightningd: counted already
            mine, total = self._pending(client), self._pending(None)
            if mine + amount_msat > self.limits.per_client_msat:
                return (f"short-CLTV HTLCs pending from this client would reach {mine + amount_msat} msat, "
                        f"above superscalar-lsp-short-htlc-max-msat-per-client={self.limits.per_client_msat}")
            if total + amount_msat > self.limits.total_msat:
                return (f"short-CLTV HTLCs pending in all factory channels would reach {total + amount_msat} msat, "
                        f"above superscalar-lsp-short-htlc-max-msat-total={self.limits.total_msat}")
            self._added[key] = (client, amount_msat, height, payment_hash)
            self._added_by_client[client] += amount_msat
            return None

    def resolved(self, channel_id: str, payment_hash: str) -> None:
        """The admitted HTLCs of `payment_hash` from channel `channel_id` were settled or failed."""
        with self._lock:
            for key, (client, amount, _, hash_) in list(self._added.items()):
                if key[0] == channel_id and hash_ == payment_hash:
                    del self._added[key]
                    self._drop(client, amount)

    def _drop(self, client: str, amount: int) -> None:
        self._added_by_client[client] -= amount
        if self._added_by_client[client] <= 0:
            del self._added_by_client[client]

    def recount(self, pending: Iterable[PendingHtlc], height: int) -> None:
        """The short HTLCs lightningd lists as pending at `height` replace the running sums. HTLCs admitted
        at this height and not listed (admitted after the listing) stay added; older ones not listed
        were resolved."""
        pending = list(pending)
        with self._lock:
            self._counted = Counter()
            for p in pending:
                self._counted[p.client] += p.amount_msat
            self._counted_keys = frozenset(p.key for p in pending)
            self._count_height = height
            for key, (client, amount, at, _) in list(self._added.items()):
                if key in self._counted_keys or at < height:
                    del self._added[key]
                    self._drop(client, amount)
