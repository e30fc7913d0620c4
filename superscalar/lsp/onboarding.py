"""What a prospective client asks the LSP before it joins: the `superscalar.*` methods beside LSPS
(bLIP-50 transport, method names outside the `lspsN.` families), and which peers speak SuperScalar.

`superscalar.get_info` publishes the terms every factory of this LSP is made with, so a client can
compare LSPs before it joins; `superscalar.join` queues the asking peer for the next laddered factory
with the inbound it wants (within the LSP's free-join limit; more is bought with LSPS1). A client that
runs SuperScalar asks `superscalar.get_info` as it connects: the LSP invites no peer that has not, so a
peer without the plugin fails a creation at once instead of after the ceremony's whole timeout.

Errors of these methods use a range bLIP-50 ("Custom Errors") leaves to applications: -31999..-1."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from ..factory.lifecycle import dying_warning_interval
from ..factory.params import MAX_CLIENTS, FactoryParams
from ..protocol.lsps0 import LspsError, amount, check_params, parse_amount

TERMS_VERSION = 1
JOIN_NOT_OFFERED = -31001  # this LSP has no ladder: it forms no factory by itself
INBOUND_OUT_OF_RANGE = -31002  # wanted inbound outside [min, max] of the terms
QUEUE_FULL = -31003  # as many clients wait for the next factory as the LSP takes free joins for
HELLO_WAIT_SECONDS = 5.0  # how long a creation waits for a just-connected client's first request


@dataclass(frozen=True)
class JoinLimits:
    min_inbound_sat: int
    max_inbound_sat: int  # the most inbound the LSP gives a client free in its next factory
    max_waiting: int = 100  # free joins wait at most this many at once: what strangers can lock up is bounded


def terms(params_for: Callable[[int, int], FactoryParams], limits: JoinLimits, ladder_interval: Optional[int],
          network: str) -> dict[str, Any]:
    """The terms of this LSP's factories (`superscalar.get_info`): every height is relative to a
    factory's start; amounts are LSPS0 strings."""
    p = params_for(2, 0)
    return {
        "version": TERMS_VERSION,
        "network": network,
        "factory": {
            "active_blocks": p.active_blocks,  # updates and rollover are possible until start + this
            "dying_blocks": p.dying_blocks,  # then the LSP rolls clients over; the client must be online
            "lifetime_blocks": p.active_blocks + p.dying_blocks,  # the distribution pays whoever was absent
            "client_online_by_blocks": p.distribution_height - 1 - p.start_height,  # liveness duty
            "dying_warning_interval_blocks": dying_warning_interval(p),
            "leaf_arity": p.leaf_arity, "arity": p.arity, "dw_layers": p.dw_layers,
            "states_per_layer": p.states_per_layer, "step_blocks": p.step_blocks,
            "max_clients": MAX_CLIENTS,
            "lstock_per_leaf_sat": amount(p.lstock_sat),
            # the early-warning time: the longest a client's exit takes, by factory size
            "early_warning_blocks": {str(n): params_for(n, 0).longest_exit_blocks for n in (2, 16, 128, 1024)},
        },
        "fees": {
            "feerate_per_kvb": p.feerate_per_kvb,  # pre-agreed rate of every factory transaction
            "anchor_sat": amount(p.anchor_sat),  # each tree transaction's P2A anchor, paid by its parent
            "join_fee_sat": amount(0),  # a free join; inbound beyond max_inbound_sat is sold (LSPS1)
        },
        "join": {
            "offered": ladder_interval is not None,
            "interval_blocks": ladder_interval,  # a new factory at most this often
            "min_inbound_sat": amount(limits.min_inbound_sat),
            "max_inbound_sat": amount(limits.max_inbound_sat),
            "max_waiting": limits.max_waiting,
        },
    }


class Speakers:
    """Peers that spoke SuperScalar on their current connection (forgotten when they disconnect, so
    the set is bounded by lightningd's connections)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._peers: dict[str, float] = {}
        self._clock = clock

    def heard(self, peer: str) -> None:
        with self._cond:
            self._peers[peer] = self._clock()
            self._cond.notify_all()

    def forget(self, peer: str) -> None:
        with self._cond:
            self._peers.pop(peer, None)

    def silent(self, peers: list[str], wait: float = HELLO_WAIT_SECONDS) -> list[str]:
        """The peers of `peers` that have not spoken SuperScalar, after waiting up to `wait` seconds
        for the ones that just connected."""
        with self._cond:
            self._cond.wait_for(lambda: all(p in self._peers for p in peers), timeout=wait)
            return [p for p in peers if p not in self._peers]


class Onboarding:
    """The LSP's `superscalar.get_info` and `superscalar.join` handlers."""

    def __init__(self, terms_of: Callable[[], dict[str, Any]], limits: JoinLimits,
                 enqueue: Optional[Callable[[str, int], dict[str, Any]]], speakers: Speakers,
                 waiting: Callable[[], list[str]] = lambda: []) -> None:
        self._terms_of = terms_of
        self.limits = limits
        self._enqueue = enqueue  # the ladder's queue, None when the ladder is off
        self._waiting = waiting  # node ids queued for the next factory
        self.speakers = speakers

    def get_info(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        check_params(params, ())
        self.speakers.heard(peer)
        return self._terms_of()

    def join(self, peer: str, params: dict[str, Any]) -> dict[str, Any]:
        """Queue `peer` for the next factory with `inbound_sat` (one entry per peer: a second join
        replaces the first)."""
        check_params(params, ("inbound_sat",))
        inbound = parse_amount(params["inbound_sat"], "inbound_sat")
        self.speakers.heard(peer)
        if self._enqueue is None:
            raise LspsError(JOIN_NOT_OFFERED, "This LSP forms no factory by itself")
        if not self.limits.min_inbound_sat <= inbound <= self.limits.max_inbound_sat:
            raise LspsError(INBOUND_OUT_OF_RANGE, "inbound_sat outside the terms' join limits",
                            {"min_inbound_sat": amount(self.limits.min_inbound_sat),
                             "max_inbound_sat": amount(self.limits.max_inbound_sat)})
        queued = self._waiting()
        if peer not in queued and len(queued) >= self.limits.max_waiting:
            raise LspsError(QUEUE_FULL, "The next factory is full; ask again after it starts")
        state = self._enqueue(peer, inbound)
        waiting = [w for w in state.get("waiting", []) if w.get("node_id") == peer]
        return {"inbound_sat": amount(inbound), "queued_at_height": waiting[0]["since_height"] if waiting else None,
                "next_factory_height": state.get("next_start_height")}

