"""The HTLC policy of factory channels, for lightningd's `htlc_accepted` hook.

An HTLC into or out of a factory channel must leave that channel's early-warning time of CLTV
headroom (the tree must be able to unwind before the HTLC expires). A client takes nothing into a
channel that nothing backs: a zero-conf channel from its LSP that is not its leaf, or a channel of a
factory found unfunded or whose leaf pays another script; and it takes the first HTLC into a factory
channel only once its leaf output is verified as the channel's 2-of-2 (`leaf_script.py`). Nothing
is forwarded into an unbacked channel either. Neither side takes an HTLC on a channel of a factory being
closed cooperatively or rolled over (its record is `frozen`), nor on the next factory's channels until
the close that funds them has confirmed. An LSP takes HTLCs with less headroom from its clients'
channels within the bounds of `htlc_exposure.py` (a plain payee's invoice never gives the tree's headroom).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol

from .htlc_index import LSP, HtlcIndex, Lookup
from .htlc_exposure import ShortHtlcExposure
from .node import ClnNode, msat

# BOLT-4 "Failure Messages": temporary_node_failure = NODE|2; incorrect_or_unknown_payment_details =
# PERM|15 with htlc_msat (u64) and height (u32).
TEMPORARY_NODE_FAILURE = 0x2002
INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS = 0x400F


class LeafVerifier(Protocol):
    """The client role as the guard sees it (client/membership.py `Client.verify_leaf`)."""

    def verify_leaf(self, fid: str, routine: bool = False, outpoint: Optional[str] = None) -> Optional[bool]: ...


class HtlcGuard:
    """The hook's check: a constant number of index lookups per HTLC (`htlc_index.py`); lightningd is
    asked only when an HTLC names a short channel id the index does not know, and then only for that
    channel (`listpeerchannels short_channel_id`), at most once per such id per block."""

    def __init__(self, node: ClnNode, index: HtlcIndex, client: LeafVerifier, exposure: ShortHtlcExposure) -> None:
        self.node, self.index, self.client, self.exposure = node, index, client, exposure

    def lookup(self, name: str, height: int) -> Optional[Lookup]:
        found = self.index.lookup(name)
        if found is None and self.index.should_refresh(name, height):
            self.index.add_channels(self.node.channel_named(name))
            found = self.index.lookup(name)
        return found

    def failure(self, onion: dict[str, Any], htlc: dict[str, Any]) -> Optional[tuple[str, str]]:
        """(BOLT-4 failure_message hex, reason) if the HTLC must be failed, else None."""
        relative = int(htlc["cltv_expiry_relative"])
        height = int(htlc["cltv_expiry"]) - relative
        unknown = f"{INCORRECT_OR_UNKNOWN_PAYMENT_DETAILS:04x}{msat(htlc['amount_msat']):016x}{height:08x}"
        temporary = f"{TEMPORARY_NODE_FAILURE:04x}"
        outgoing_id = str(onion["short_channel_id"]) if onion.get("short_channel_id") else None
        incoming = self.lookup(str(htlc.get("short_channel_id")), height)
        outgoing = self.lookup(outgoing_id, height) if outgoing_id is not None else None
        if incoming is not None and incoming.unbacked:
            return unknown, "incoming channel is not backed by a funded factory leaf"
        if incoming is not None and incoming.factory is not None and incoming.factory.frozen:
            return unknown, "incoming channel is frozen: its factory is being closed or rolled over"
        if outgoing is not None and outgoing.factory is not None and outgoing.factory.frozen:
            return temporary, "outgoing channel is frozen: its factory is being closed or rolled over"
        if incoming is not None and incoming.factory is not None and incoming.factory.leaf_unverified:
            verdict = self.client.verify_leaf(incoming.factory.factory_id, outpoint=incoming.channel.outpoint)
            if verdict is False:
                return unknown, "incoming channel: its leaf does not pay our channel's 2-of-2"
            if verdict is None:
                return unknown, ("incoming channel: its leaf script cannot be verified yet "
                                 "(no commitment signed by our channeld in the log)")
        if outgoing is not None and outgoing.unbacked:
            return temporary, "outgoing channel is not backed by a funded factory leaf"
        if outgoing is not None and outgoing.factory is not None:
            need = outgoing.factory.early_warning_blocks
            if int(onion.get("outgoing_cltv_value", 0)) - height < need:
                return temporary, f"outgoing factory channel needs {need} blocks of CLTV headroom"
        if incoming is not None and incoming.factory is not None and relative < incoming.factory.early_warning_blocks:
            fail = temporary if outgoing_id is not None else unknown
            if incoming.factory.role == LSP:  # a client's payment: the LSP carries it within its bounds
                why = self.exposure.admit(incoming.factory.peer_id, (incoming.channel.channel_id, int(htlc.get("id", -1))),
                                          msat(htlc["amount_msat"]), height, str(htlc.get("payment_hash", "")))
                return None if why is None else (fail, why)
            need = incoming.factory.early_warning_blocks
            return fail, f"incoming factory channel needs {need} blocks of CLTV headroom, HTLC has {relative}"
        return None
