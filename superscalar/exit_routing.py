"""Which signed transactions an exit publishes: for `superscalar-exit`, and when a factory channel
starts closing before its leaf is on chain (its balance can only be paid once the leaf confirms, so
either side publishes the path; both protect their own balance)."""

from __future__ import annotations

from typing import Any, Optional

from .client import Client, channel_in_factory, funding_ok
from .exits import Exits
from .factory.params import FactoryParams
from .lsp import lsp_exit_path
from .node import ClnNode
from .store import Store

# LSP factory stages whose funding output never existed.
UNFUNDED_STAGES = ("completing", "abandoned", "funding-mismatch")


def never_funded(record: dict[str, Any]) -> bool:
    """A factory whose funding output never existed has no path to publish."""
    return record.get("stage") in UNFUNDED_STAGES or (record.get("role") == "client" and not funding_ok(record))


def bump_after(record: dict[str, Any]) -> int:
    """Blocks a published factory transaction may stay unconfirmed before it is bumped by CPFP."""
    return FactoryParams.deserialize(record["params"].encode()).confirm_blocks + 1


def exit_plan(store: Store, client: Client, factory_id: str,
              peer_id: Optional[str]) -> tuple[list[list[Any]], list[str], int]:
    """(transactions, leaf channel outpoints, bump_after) of this node's exit; ValueError if none."""
    rec = store.get(factory_id, "factory")
    if rec is None:
        raise ValueError(f"unknown factory {factory_id}")
    if never_funded(rec):
        raise ValueError(f"factory {factory_id} was never funded: there is no exit path to publish")
    txs, channels = lsp_exit_path(rec, peer_id) if rec["role"] == "lsp" else client.exit_path(factory_id)
    return txs, channels, bump_after(rec)


def exit_for_closing_channel(node: ClnNode, store: Store, client: Client, exits: Exits, channel_id: str) -> None:
    live = next((c for c in node.peer_channels() if c.get("channel_id") == channel_id), None)
    if live is None or live.get("short_channel_id"):
        return  # not ours, or its leaf is on chain already: CLN's close machinery has what it needs
    for fid in store.factory_ids():
        rec = store.get(fid, "factory") or {}
        if not rec or never_funded(rec):
            continue
        if rec.get("role") == "lsp":
            peer = next((c["peer_id"] for c in rec["channels"] if c["channel_id"] == channel_id), None)
            if peer is not None:
                txs, channels = lsp_exit_path(rec, peer)
                exits.start(fid, txs, channels, bump_after(rec))
        elif rec.get("role") == "client":
            ch = next((c for c in node.peer_channels(rec["lsp"]) if c.get("channel_id") == channel_id), None)
            if ch is not None and channel_in_factory(rec, ch):
                txs, channels = client.exit_path(fid)
                exits.start(fid, txs, channels, bump_after(rec))


def exit_late_funded(store: Store, client: Client, exits: Exits, factory_ids: list[str]) -> None:
    """A client's factory whose funding confirmed after the client had given up on it (and closed its
    channel): that channel can only pay out once the leaf is on chain, so its path goes out."""
    for fid in factory_ids:
        txs, channels, bump = exit_plan(store, client, fid, None)
        exits.start(fid, txs, channels, bump)
