"""Which signed transactions an exit publishes: for `superscalar-exit`, and when a factory channel
starts closing before its leaf is on chain (its balance can only be paid once the leaf confirms, so
either side publishes the path; both protect their own balance)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..bitcoin.tx import Tx
from ..factory.params import FactoryParams
from ..cln.node import ClnNode
from ..records import ExitPaths, channel_in_factory, funding_ok, lsp_exit_path
from ..cln.store import Store
from .close_watch import close_pending
from .conflicts import DISTRIBUTION
from .exits import Exits

# LSP factory stages whose funding output never existed (a rollover's next factory: not yet).
UNFUNDED_STAGES = ("completing", "abandoned", "funding-mismatch", "rollover-completing", "rolling")


def never_funded(record: dict[str, Any]) -> bool:
    """A factory whose funding output never existed, or was spent by its cooperative close, has no path
    to publish."""
    return (record.get("stage") in UNFUNDED_STAGES or (record.get("role") == "client" and not funding_ok(record))
            or (record.get("close") or {}).get("status") == "confirmed")


def bump_after(record: dict[str, Any]) -> int:
    """Blocks a published factory transaction may stay unconfirmed before it is bumped by CPFP."""
    return FactoryParams.deserialize(record["params"].encode()).confirm_blocks + 1


@dataclass(frozen=True)
class ExitPlan:
    """What `Exits.start` needs to publish one path (or the LSP's paths) of a factory."""

    txs: list[list[Any]]
    channels: list[str]
    bump_after: int
    timeout_height: int  # the factory timeout of the leaves' depth: the path must be on chain by then
    known: dict[str, str] = field(default_factory=dict)  # txid of the distribution -> "distribution"
    dw_step: Optional[int] = None  # an older state of a node becomes valid this many blocks after a newer one
    lstock_csv: Optional[int] = None  # the LSP alone may take an L-stock this long after it confirmed

    def start(self, exits: Exits, factory_id: str, htlc_expiry: Optional[int] = None,
              reason: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        return exits.start(factory_id, self.txs, self.channels, self.bump_after, self.timeout_height, htlc_expiry,
                           self.known, self.dw_step, reason, lstock_csv=self.lstock_csv)


def plan_for(rec: dict[str, Any], txs: list[list[Any]], channels: list[str]) -> ExitPlan:
    params = FactoryParams.deserialize(rec["params"].encode())
    known = {Tx.from_hex(h).txid: DISTRIBUTION
             for h in ([rec["distribution"]] if rec.get("distribution") else []) + rec.get("distribution_variants", [])}
    return ExitPlan(txs, channels, bump_after(rec), params.timeout(params.height), known, params.step_blocks,
                    params.lstock_csv_blocks)


def exit_plan(store: Store, client: ExitPaths, factory_id: str, peer_id: Optional[str]) -> ExitPlan:
    """This node's exit from `factory_id` (the LSP's: `peer_id`'s path, or every path); ValueError if none."""
    rec = store.get(factory_id, "factory")
    if rec is None:
        raise ValueError(f"unknown factory {factory_id}")
    if never_funded(rec):
        raise ValueError(f"factory {factory_id} was never funded: there is no exit path to publish")
    txs, channels = lsp_exit_path(rec, peer_id) if rec["role"] == "lsp" else client.exit_path(factory_id)
    return plan_for(rec, txs, channels)


def htlc_expiry(channel: dict[str, Any]) -> Optional[int]:
    """The earliest expiry of a channel's pending HTLCs (listpeerchannels), if it has any."""
    expiries = [int(h["expiry"]) for h in channel.get("htlcs", []) if h.get("expiry") is not None]
    return min(expiries) if expiries else None


def exit_for_closing_channel(node: ClnNode, store: Store, client: ExitPaths, exits: Exits, channel_id: str) -> None:
    """A factory channel closing unilaterally before its leaf is on chain: publish the leaf's path,
    due before its HTLCs expire when it has any."""
    live = next((c for c in node.peer_channels() if c.get("channel_id") == channel_id), None)
    if live is None or live.get("short_channel_id"):
        return  # not ours, or its leaf is on chain already: CLN's close machinery has what it needs
    expiry = htlc_expiry(live)
    for fid in store.factory_ids():
        rec = store.get(fid, "factory") or {}
        if not rec or never_funded(rec) or close_pending(rec):
            continue  # a signed cooperative close pays this channel's balance: the tree stays off chain
        if rec.get("role") == "lsp":
            peer = next((c["peer_id"] for c in [*rec["channels"], *rec.get("sales", [])]
                         if c.get("channel_id") == channel_id), None)
            if peer is not None:
                plan_for(rec, *lsp_exit_path(rec, peer)).start(exits, fid, expiry)
        elif rec.get("role") == "client":
            ch = next((c for c in node.peer_channels(rec["lsp"]) if c.get("channel_id") == channel_id), None)
            if ch is not None and channel_in_factory(rec, ch):
                plan_for(rec, *client.exit_path(fid)).start(exits, fid, expiry)


def exit_late_funded(store: Store, client: ExitPaths, exits: Exits, factory_ids: list[str]) -> None:
    """A client's factory whose funding confirmed after the client had given up on it (and closed its
    channel): that channel can only pay out once the leaf is on chain, so its path goes out."""
    for fid in factory_ids:
        exit_plan(store, client, fid, None).start(exits, fid)
