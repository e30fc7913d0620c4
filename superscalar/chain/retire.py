"""Retiring channels whose funding (leaf) transaction will never reach the chain.

After a factory is closed cooperatively (a plain close or a rollover), its leaf channels spend tree
outputs that will never exist. They must stop carrying payments at once (value on them is backed by
nothing) and leave lightningd's live set without losing anything and without developer-only
commands. What stock Core Lightning v26.06.6 allows (measured in tests/integration/
test_retired_channels.py, written up in docs/retiring-channels.md):

- A channel whose funding is not withheld (superscalar's leaf channels) is never forgotten: every
  `close` leaves it listed in `listpeerchannels`, and its closing or commitment transaction is sent
  to bitcoind once per block and once per 30-60 s timer round, for ever (lightningd/peer_control.c
  `drop_to_chain`, lightningd/chaintopology.c `rebroadcast_txs`). `dev-forget-channel` is the only
  way out and is developer-only.
- Of those closes, a mutual one (peer connected) is the cheapest to keep: one closing transaction
  per channel on each side, paying wallet addresses, with no anchor outputs for lightningd to
  consider bumping from the wallet on every attempt, and no unilateral state that would make the
  plugin's exit routing publish the (nonexistent) leaf's path. A unilateral close is the fallback for
  a peer that does not answer within `unilateral_after` seconds.

So `retire_channels` closes each channel mutually if it can, concurrently across channels (each
`close` blocks until its negotiation ends), and reports what each one became. It is idempotent: a
channel already closing or already gone is reported, not closed again.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Protocol

# States in which lightningd has already stopped a channel (it takes no new HTLC): nothing to do.
CLOSING_STATES = frozenset({"CHANNELD_SHUTTING_DOWN", "CLOSINGD_SIGEXCHANGE", "CLOSINGD_COMPLETE",
                            "AWAITING_UNILATERAL", "FUNDING_SPEND_SEEN", "ONCHAIN", "CLOSED"})
UNILATERAL_AFTER = 60  # seconds a connected peer has to negotiate a mutual close
MAX_PARALLEL = 8  # closes in flight at once (each holds one RPC connection while it negotiates)


class ChannelNode(Protocol):
    """What retiring needs from lightningd (superscalar.node.ClnNode provides it)."""

    def peer_channels(self, peer: Optional[str] = None) -> list[dict[str, Any]]: ...

    def close(self, channel_id: str, unilateral_after: int = 1) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Retired:
    """One channel's retirement: `outcome` is "mutual" or "unilateral" (closed now, its transaction
    kept by lightningd), "deleted" (a withheld channel: closed with no transaction, now only in
    `listclosedchannels`), "already" (it was closing before this call), "gone" (lightningd no longer
    lists it) or "failed" (`error` says why; the caller retries, e.g. on the next block)."""

    channel_id: str
    outcome: str
    txid: Optional[str] = None
    error: Optional[str] = None


def retire_channels(node: ChannelNode, channel_ids: Iterable[str],
                    unilateral_after: int = UNILATERAL_AFTER) -> list[Retired]:
    """Close every channel in `channel_ids` that is still open (mutually if its peer negotiates within
    `unilateral_after` seconds, else unilaterally); one `Retired` per id, in the order given."""
    ids = list(dict.fromkeys(channel_ids))
    states = {str(c["channel_id"]): str(c["state"]) for c in node.peer_channels() if "channel_id" in c}
    todo = [cid for cid in ids if cid in states and states[cid] not in CLOSING_STATES]
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(todo)))) as pool:
        closed = dict(zip(todo, pool.map(lambda cid: _close(node, cid, unilateral_after), todo)))
    return [closed.get(cid) or Retired(cid, "already" if cid in states else "gone") for cid in ids]


def _close(node: ChannelNode, channel_id: str, unilateral_after: int) -> Retired:
    try:
        res = node.close(channel_id, unilateral_after)
    except Exception as e:  # an RPC error names the channel's problem; the caller decides to retry
        return Retired(channel_id, "failed", error=str(e))
    txids = [str(t) for t in res.get("txids") or ([res["txid"]] if res.get("txid") else [])]
    if not txids:
        return Retired(channel_id, "deleted")
    return Retired(channel_id, str(res.get("type", "unknown")), txid=txids[0])
