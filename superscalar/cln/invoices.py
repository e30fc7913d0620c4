"""lightningd's `invoice`, seen through an `rpc_command` hook, on a node with factory channels.

Final CLTV: such a node asks its payers for enough final CLTV (`htlc_timing.py`), so a plain `invoice`
with no extra arguments can be paid through a factory channel whatever the node's `cltv-final` is. The
user never needs to know the early-warning time.

Route hints: a client's factory channels are unannounced, so a payer reaches it only through a route
hint via its LSP. lightningd leaves out a hint through a peer it cannot place in the graph from gossip
(`listincoming` gives such a peer no capacity: a "dead end"), and one over a channel whose peer's
`channel_update` has not arrived yet; a client that has just joined knows neither yet: its first
invoices carried no hint, and nobody could pay them. So on a
node with client factories the hook makes the invoice itself, in a thread (the hook is asynchronous):
it asks lightningd for it (the caller's request, the final CLTV raised, and a preimage of its own if the
caller gave none; the hook lets that call through), and if lightningd put a route hint in, that invoice
is the answer, unchanged. If not, it deletes it and has lightningd sign the same invoice with a hint
through the LSP (`createinvoice`): over the factory channel that can receive the most (for an amount no
channel can take alone, as many as it takes), named by the alias the LSP gave it, with the LSP's fees and
CLTV delta from its channel_update, or, before that has arrived, from another channel with that LSP, or
`DEFAULT_LSP_POLICY`. A caller that names the channels to expose (or forbids it), a description-hash
invoice (`createinvoice` needs the description) and one with an on-chain fallback (lightningd tracks
those only for its own invoices) get lightningd's invoice as before.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from pyln.client import RpcError

from .htlc_index import CLIENT, HtlcIndex
from ..htlc_timing import required_final_cltv, with_final_cltv
from .node import ClnNode, msat
from ..protocol.bolt11 import TAG_F, TAG_R, RouteHop, amount_msat, has_field, with_routes
from ..protocol.lsps0 import format_scid, parse_scid

# lightningd's `invoice` parameters, in positional order (doc/schemas/invoice.json).
INVOICE_PARAMS = ("amount_msat", "label", "description", "expiry", "fallbacks", "preimage",
                  "exposeprivatechannels", "cltv", "deschashonly")
# Channel states that take HTLCs.
HTLC_STATES = ("CHANNELD_NORMAL", "CHANNELD_AWAITING_SPLICE")
# lightningd's warnings about hints it left out, which the hint added answers.
HINT_WARNINGS = ("warning_deadends", "warning_private_unused", "warning_mpp")
CONTINUE = {"result": "continue"}

Log = Callable[..., None]


@dataclass(frozen=True, slots=True)
class FeePolicy:
    """What a node asks to forward over a channel (BOLT-7 `channel_update`)."""

    fee_base_msat: int
    fee_proportional_millionths: int
    cltv_expiry_delta: int

    @classmethod
    def from_update(cls, update: dict[str, Any]) -> "FeePolicy":
        """From a listpeerchannels `updates.local` or `updates.remote`."""
        return cls(msat(update["fee_base_msat"]), int(update["fee_proportional_millionths"]),
                   int(update["cltv_expiry_delta"]))


# The LSP's policy in a hint made before its channel_update arrived: at or above the defaults of CLN
# (1,000 msat + 10 ppm, delta 34), LND (1,000 msat + 1 ppm, 80), LDK (1,000 msat + 0 ppm, 72) and
# Eclair (1,000 msat + 200 ppm, 144). Less than the LSP asks and it refuses the forward; what the payer
# pays above that is the LSP's (1 sat + 0.1 % at most, for a few seconds after a channel opens).
DEFAULT_LSP_POLICY = FeePolicy(1000, 1000, 144)


def named_params(params: Any) -> Optional[dict[str, Any]]:
    """`invoice` parameters as an object (a positional array named; None: neither)."""
    if isinstance(params, dict):
        return dict(params)
    if isinstance(params, list) and len(params) <= len(INVOICE_PARAMS):
        return {name: value for name, value in zip(INVOICE_PARAMS, params) if value is not None}
    return None


def hints_wanted(params: dict[str, Any]) -> bool:
    """May the hook add a hint? Not if the caller chose the channels to expose (or none), asked for a
    description hash (`createinvoice` needs the description) or dev-routes."""
    return (params.get("exposeprivatechannels") in (None, True, "true")
            and params.get("deschashonly") not in (True, "true") and "dev-routes" not in params)


def hint_scid(channel: dict[str, Any]) -> Optional[str]:
    """The short channel id the LSP knows `channel` by: the alias it gave us, else the real one (BOLT-2:
    an `option_scid_alias` channel is never named by its real one in an `r` field)."""
    alias = (channel.get("alias") or {}).get("remote")
    return str(alias) if alias else (str(channel["short_channel_id"]) if channel.get("short_channel_id") else None)


def lsp_policy(channel: dict[str, Any], listing: Iterable[dict[str, Any]]) -> FeePolicy:
    """The LSP's policy for forwarding to us over `channel`: its channel_update; before that has
    arrived, the highest of its updates for our other channels with it; else `DEFAULT_LSP_POLICY`."""
    update = (channel.get("updates") or {}).get("remote")
    if update:
        return FeePolicy.from_update(update)
    known = [FeePolicy.from_update(c["updates"]["remote"]) for c in listing
             if c.get("peer_id") == channel.get("peer_id") and (c.get("updates") or {}).get("remote")]
    if not known:
        return DEFAULT_LSP_POLICY
    return FeePolicy(max(p.fee_base_msat for p in known), max(p.fee_proportional_millionths for p in known),
                     max(p.cltv_expiry_delta for p in known))


def lsp_hints(listing: list[dict[str, Any]], factory_channels: set[str], amount: Optional[int]) -> list[RouteHop]:
    """One-hop hints through the LSP for an invoice of `amount` msat (None: any), over the channels of
    `listing` (listpeerchannels entries) whose ids are in `factory_channels`: the one that can receive
    the most; for an amount it cannot take alone, the next ones too until together they can (if they
    ever do). Only channels that take HTLCs and have a short channel id for the LSP."""
    usable = sorted((c for c in listing if c.get("channel_id") in factory_channels and c.get("state") in HTLC_STATES
                     and hint_scid(c)), key=lambda c: msat(c.get("receivable_msat", 0)), reverse=True)
    chosen, gathered = [], 0
    for c in usable:
        chosen.append(c)
        gathered += msat(c.get("receivable_msat", 0))
        if amount is None or gathered >= amount:
            break
    hops = []
    for c in chosen:
        policy = lsp_policy(c, listing)
        hops.append(RouteHop(bytes.fromhex(str(c["peer_id"])), parse_scid(str(hint_scid(c))), policy.fee_base_msat,
                             policy.fee_proportional_millionths, policy.cltv_expiry_delta))
    return hops


def final_cltv_params(index: HtlcIndex, params: Any) -> Optional[Any]:
    """`params` (object or array) asking for the final CLTV the node's factory channels need, or None
    when they already do (or it has none): the most any of its live, backed factory channels needs."""
    need = required_final_cltv({(e.early_warning_blocks, e.confirm_blocks) for _, e in index.factory_channels()})
    return None if need is None else with_final_cltv(params, need)


class Invoices:
    """The hook's answers: `at_once` on the hook's thread (no RPC), `made` in a thread of its own."""

    def __init__(self, node: ClnNode, index: HtlcIndex, log: Log) -> None:
        self.node, self.index, self.log = node, index, log
        self._lock = threading.Lock()
        self._own: set[str] = set()  # labels of the invoices `made` is asking lightningd for

    def at_once(self, request: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The hook's answer, or None: `made` answers (a node with client factories, hints allowed)."""
        params = named_params(request.get("params"))
        if request.get("method") != "invoice" or params is None:
            return CONTINUE
        with self._lock:
            if str(params.get("label")) in self._own:  # `made`'s own call
                return CONTINUE
        if self.index.lsps() and hints_wanted(params):
            return None
        return self.lightningds(request)

    def lightningds(self, request: dict[str, Any]) -> dict[str, Any]:
        """lightningd makes the invoice, with the final CLTV raised (also the safe answer if `made` fails)."""
        params = final_cltv_params(self.index, request.get("params", {}))
        return CONTINUE if params is None else {"replace": {**request, "params": params}}

    def made(self, request: dict[str, Any]) -> dict[str, Any]:
        """Blocking: the invoice lightningd makes, with a hint through the LSP if it has none. Raises
        only while lightningd has made nothing (the caller then answers `lightningds`)."""
        params = named_params(request.get("params"))
        assert params is not None
        listing = [c for lsp in self.index.lsps() for c in self.node.peer_channels(lsp)]
        self.index.add_channels(listing)  # a factory made a moment ago may not be in the index yet
        mine = {ch.channel_id for ch, f in self.index.factory_channels() if f.role == CLIENT and not f.frozen}
        params = final_cltv_params(self.index, params) or params
        if not lsp_hints(listing, mine, None):
            return {"replace": {**request, "params": params}}
        preimage = str(params.get("preimage") or secrets.token_hex(32))
        label = str(params["label"])
        with self._lock:
            self._own.add(label)
        try:
            made = dict(self.node.rpc.call("invoice", {**params, "preimage": preimage}))
        except RpcError as e:  # the caller's error (a duplicate label, a bad parameter): lightningd's words
            return {"return": {"error": e.error}}
        finally:
            with self._lock:
                self._own.discard(label)
        text = str(made["bolt11"])
        if has_field(text, TAG_R) or has_field(text, TAG_F):
            return {"return": {"result": made}}
        try:
            return {"return": {"result": self._hinted(made, label, preimage,
                                                      lsp_hints(listing, mine, amount_msat(text)))}}
        except Exception as e:
            self.log(f"invoice {label}: no route hint added ({e!r})", level="broken")
            if self.node.rpc.call("listinvoices", {"label": label})["invoices"]:
                return {"return": {"result": made}}
            raise

    def _hinted(self, made: dict[str, Any], label: str, preimage: str, hops: list[RouteHop]) -> dict[str, Any]:
        """lightningd's invoice `made`, replaced by the same with `hops` as its route hints."""
        text = str(made["bolt11"])
        hinted = with_routes(text, [[hop] for hop in hops])
        self.node.rpc.call("delinvoice", {"label": label, "status": "unpaid"})
        try:
            signed = self.node.rpc.call("createinvoice", {"invstring": hinted, "label": label, "preimage": preimage})
        except Exception:
            self.node.rpc.call("createinvoice", {"invstring": text, "label": label, "preimage": preimage})
            raise
        self.log(f"invoice {label}: lightningd gave it no route hint; hint through the LSP over "
                 + ", ".join(f"{format_scid(h.short_channel_id)} ({h.fee_base_msat} msat + {h.fee_proportional_millionths}"
                             f" ppm, delta {h.cltv_expiry_delta})" for h in hops))
        out = {k: v for k, v in made.items() if k not in HINT_WARNINGS}
        if len(hops) > 1:
            out["warning_mpp"] = "The invoice is only payable by MPP-capable payers."
        return {**out, "bolt11": signed["bolt11"], "created_index": signed["created_index"]}
