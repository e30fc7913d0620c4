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

So `close_channels` closes each channel mutually if it can, concurrently across channels (each
`close` blocks until its negotiation ends), and reports what each one became. It is idempotent: a
channel already closing or already gone is reported, not closed again.

`retire_channels` is what the per-block steps call (chain/close_watch.py, chain/lifecycle.py): it never
blocks the block, and it never turns unilateral (`unilateral_after` 0). A peer that is offline leaves the
channel in CHANNELD_SHUTTING_DOWN, which takes no HTLC and broadcasts nothing; lightningd finishes the
mutual close when the peer reconnects (also after a restart). A unilateral close would only add a
commitment that lightningd rebroadcasts, and re-checks for anchor bumps, on every block.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Protocol

from .exits import CLOSING_STATES

# States in which lightningd has already stopped a channel (it takes no new HTLC): nothing to do.
STOPPED_STATES = CLOSING_STATES | {"CLOSED"}
UNILATERAL_AFTER = 60  # seconds a connected peer has to negotiate a mutual close
MAX_PARALLEL = 8  # closes in flight at once (each holds one RPC connection while it negotiates)


class ChannelNode(Protocol):
    """What retiring needs from lightningd (superscalar.cln.node.ClnNode provides it)."""

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


def close_channels(node: ChannelNode, channel_ids: Iterable[str],
                   unilateral_after: int = UNILATERAL_AFTER) -> list[Retired]:
    """Close every channel in `channel_ids` that is still open (mutually if its peer negotiates within
    `unilateral_after` seconds, else unilaterally); one `Retired` per id, in the order given."""
    ids = list(dict.fromkeys(channel_ids))
    states = {str(c["channel_id"]): str(c["state"]) for c in node.peer_channels() if "channel_id" in c}
    todo = [cid for cid in ids if cid in states and states[cid] not in STOPPED_STATES]
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


def factory_channel_ids(node: ChannelNode, rec: dict[str, Any]) -> list[str]:
    """The leaf channels of a factory record: the LSP's from its record, a client's from lightningd
    (its channel with the LSP whose funding outpoint is its leaf output)."""
    if rec.get("role") == "lsp":  # with the channels on its liquidity sales (superscalar/sales.py)
        return [str(c["channel_id"]) for c in [*rec["channels"], *rec.get("sales", [])] if c.get("channel_id")]
    mine = {rec["leaf_outpoint"], *(str(s["channel_outpoint"]) for s in rec.get("sales", []) if s.get("mine"))}
    return [str(ch["channel_id"]) for ch in node.peer_channels(rec["lsp"])
            if f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}" in mine]


def retire_channels(node: ChannelNode, channel_ids: Iterable[str], log: Callable[[str], None],
                    in_flight: set[str]) -> int:
    """Start retiring every channel of `channel_ids` that is still live, each `close` (mutual only) in a
    thread of its own, skipping those an earlier call is still closing (`in_flight`, the caller's set).
    Returns how many were still live before this call: 0 means nothing is left to do."""
    wanted = set(channel_ids)
    live = [str(ch["channel_id"]) for ch in node.peer_channels()
            if ch.get("channel_id") in wanted and ch.get("state") not in STOPPED_STATES]
    for channel_id in live:
        if channel_id not in in_flight:
            in_flight.add(channel_id)
            threading.Thread(target=_retire, args=(node, channel_id, log, in_flight), daemon=True).start()
    return len(live)


def _retire(node: ChannelNode, channel_id: str, log: Callable[[str], None], in_flight: set[str]) -> None:
    try:
        r = _close(node, channel_id, 0)
        log(f"retired channel {channel_id}: {r.outcome}" + (f" ({r.error}); retried next block" if r.error else ""))
    finally:
        in_flight.discard(channel_id)
