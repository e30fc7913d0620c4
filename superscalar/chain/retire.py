"""Retiring the channels of a factory that was closed cooperatively (or rolled over): their leaves will
never reach the chain, so they must leave lightningd's live set and never carry a payment again.

This is the one place that does it (`retire_channels`). Today it asks lightningd for a mutual `close`
that never turns unilateral (`unilateraltimeout` 0: a unilateral close would make the plugin publish
the factory's exit path, whose funding output the close already spent). The signed closing transaction
spends a leaf output that does not exist: lightningd keeps it (CLOSINGD_COMPLETE) and tries to
broadcast it. Which way of retiring leaves least behind is measured separately; change it here.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..node import ClnNode
from .exits import CLOSING_STATES


def retire_channels(node: ClnNode, channel_ids: list[str], log: Callable[[str], None], in_flight: set[str]) -> int:
    """Start retiring every channel of `channel_ids` that is still live (not closing, not being retired
    by an earlier call: `in_flight`, the caller's set). Returns how many were still live before this call
    (0: nothing left to do). Each `close` runs in its own thread: it returns once the peer has agreed."""
    wanted = set(channel_ids)
    live = [str(ch["channel_id"]) for ch in node.peer_channels()
            if ch.get("channel_id") in wanted and ch.get("state") not in CLOSING_STATES]
    for channel_id in live:
        if channel_id in in_flight:
            continue
        in_flight.add(channel_id)
        threading.Thread(target=_retire, args=(node, channel_id, log, in_flight), daemon=True).start()
    return len(live)


def _retire(node: ClnNode, channel_id: str, log: Callable[[str], None], in_flight: set[str]) -> None:
    try:
        res = node.close(channel_id, unilateral_after=0)
        log(f"retired channel {channel_id} of a closed factory: {res.get('type')}")
    except Exception as e:  # the next block retries
        log(f"retiring channel {channel_id}: {e}")
    finally:
        in_flight.discard(channel_id)
