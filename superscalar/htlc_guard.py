"""The HTLC policy of factory channels, for lightningd's `htlc_accepted` hook.

An HTLC into or out of a factory channel must leave that channel's early-warning time of CLTV
headroom (the tree must be able to unwind before the HTLC expires). A client takes nothing into a
channel that nothing backs: a zero-conf channel from its LSP that is not its leaf, or a channel of a
factory found unfunded or whose leaf pays another script; and it takes the first HTLC into a factory
channel only once its leaf output is verified as the channel's 2-of-2 (`leaf_script.py`). Nothing
is forwarded into an unbacked channel either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .client import UNVERIFIED, Client, funding_ok, leaf_status
from .node import ClnNode, msat
from .store import Store

# BOLT-4 "Failure Messages": temporary_node_failure = NODE|2; incorrect_or_unknown_payment_details =
# PERM|15 with htlc_msat (u64) and height (u32).
TEMPORARY_NODE_FAILURE = 0x2002
INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = 0x400F

# LSP factory stages whose channels nothing funds.
DEAD_STAGES = ("abandoned", "funding-mismatch")


@dataclass(frozen=True)
class FactoryViews:
    """One look at the records and at lightningd's channels, keyed by every short channel id and
    alias: each factory channel's early-warning blocks, the channels nothing backs, and our client
    channels whose leaf script is not verified yet (→ factory id)."""

    headroom: dict[str, int]
    unbacked: set[str]
    unverified: dict[str, str]


class HtlcGuard:
    def __init__(self, node: ClnNode, store: Store, client: Client) -> None:
        self.node, self.store, self.client = node, store, client

    def views(self) -> FactoryViews:
        wanted: dict[str, int] = {}  # channel_id or funding outpoint → early warning
        lsps: set[str] = set()
        dead: set[str] = set()  # channel ids or leaf outpoints of factories that nothing funds
        checking: dict[str, str] = {}  # leaf outpoint → factory id, while its leaf script is unverified
        for fid in self.store.factory_ids():
            rec = self.store.get(fid, "factory")
            if rec is None:
                continue
            if rec.get("role") == "lsp":
                warnings = {c["channel_id"]: int(c["early_warning_blocks"]) for c in rec["channels"] if c["channel_id"]}
                if rec.get("stage") in DEAD_STAGES:
                    dead.update(warnings)
                else:
                    wanted.update(warnings)
            elif rec.get("role") == "client":
                lsps.add(rec["lsp"])
                if not funding_ok(rec):
                    dead.add(rec["leaf_outpoint"])
                    continue
                wanted[rec["leaf_outpoint"]] = int(rec["early_warning_blocks"])
                if leaf_status(rec) == UNVERIFIED:
                    checking[rec["leaf_outpoint"]] = fid
        views = FactoryViews({}, set(), {})
        for ch in self.node.peer_channels():
            outpoint = f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}"
            ids = [x for x in (ch.get("short_channel_id"), *(ch.get("alias") or {}).values()) if x]
            ew = wanted.get(ch.get("channel_id", "")) or wanted.get(outpoint)
            if ch.get("channel_id") in dead or outpoint in dead:
                views.unbacked.update(ids)
            elif ew is not None:
                views.headroom.update({x: ew for x in ids})
                if outpoint in checking:
                    views.unverified.update({x: checking[outpoint] for x in ids})
            elif ch.get("peer_id") in lsps and not ch.get("short_channel_id"):
                views.unbacked.update(ids)
        return views

    def failure(self, onion: dict[str, Any], htlc: dict[str, Any]) -> Optional[tuple[str, str]]:
        """(BOLT-4 failure_message hex, reason) if the HTLC must be failed, else None."""
        relative = int(htlc["cltv_expiry_relative"])
        height = int(htlc["cltv_expiry"]) - relative
        unknown = f"{INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:04x}{msat(htlc['amount_msat']):016x}{height:08x}"
        temporary = f"{TEMPORARY_NODE_FAILURE:04x}"
        views = self.views()
        incoming_id = str(htlc.get("short_channel_id"))
        outgoing_id = str(onion["short_channel_id"]) if onion.get("short_channel_id") else None
        if incoming_id in views.unbacked:
            return unknown, "incoming channel is not backed by a funded factory leaf"
        checking = views.unverified.get(incoming_id)
        if checking is not None:
            verdict = self.client.verify_leaf(checking)
            if verdict is False:
                return unknown, "incoming channel: its leaf does not pay our channel's 2-of-2"
            if verdict is None:
                return unknown, ("incoming channel: its leaf script cannot be verified yet "
                                 "(no commitment signed by our channeld in the log)")
        if outgoing_id is not None and outgoing_id in views.unbacked:
            return temporary, "outgoing channel is not backed by a funded factory leaf"
        incoming = views.headroom.get(incoming_id)
        outgoing = views.headroom.get(outgoing_id) if outgoing_id is not None else None
        if outgoing is not None and int(onion.get("outgoing_cltv_value", 0)) - height < outgoing:
            return temporary, f"outgoing factory channel needs {outgoing} blocks of CLTV headroom"
        if incoming is not None and relative < incoming:
            reason = f"incoming factory channel needs {incoming} blocks of CLTV headroom, HTLC has {relative}"
            return (temporary if outgoing_id is not None else unknown), reason
        return None
