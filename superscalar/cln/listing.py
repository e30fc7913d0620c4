"""What `superscalar-list` shows of one factory, for either role: its channels as lightningd sees
them, this node's exit, and (for a client) what it verified and a plain `state` and `safety` line."""

from __future__ import annotations

from typing import Any, Optional

from ..chain.lifecycle import LIFECYCLE, describe_life
from ..records import MISMATCH, VERIFIED, channel_in_factory, leaf_status
from ..factory.params import FactoryParams
from ..htlc_timing import invoice_final_cltv
from .node import ClnNode, msat
from .store import Store

CLIENT_STATES = {"awaiting": "awaiting_funding", "confirmed": "open", "unfunded": "unfunded"}


def describe(node: ClnNode, store: Store, fid: str, height: Optional[int] = None) -> dict[str, Any]:
    rec = store.get(fid, "factory") or {}
    params = FactoryParams.deserialize(rec["params"].encode())
    progress = store.get(fid, "exit")
    life = describe_life(rec, store.get(fid, LIFECYCLE), progress, node.blockheight() if height is None else height)
    out: dict[str, Any] = {
        "factory_id": fid, "role": rec["role"],
        "state": "exiting" if progress is not None else ("open" if rec.get("stage", "funded") == "funded" else rec["stage"]),
        "funding_outpoint": rec["funding_outpoint"], "n_clients": params.n_clients,
        "expiry_height": params.expiry_height, "dying_height": params.distribution_height,
        "exit_progress": exit_progress(progress),
        **life,  # phase, next phase, expiry/distribution/timeout heights, (client) must_be_online_by_height
    }
    if rec.get("frozen") or rec.get("close"):  # a cooperative close or rollover (chain/close_watch.py)
        close = rec.get("close") or {}
        out["close"] = {"frozen": bool(rec.get("frozen")), "status": close.get("status", "started"),
                        "txid": close.get("txid"), "confirmed_height": close.get("confirmed_height"),
                        "next_factory": close.get("next_factory") or (rec.get("frozen") or {}).get("next_factory")}
    if rec.get("sales"):  # liquidity sales out of the L-stock (superscalar/sales.py)
        out["sales"] = [{k: x.get(k) for k in ("leaf", "txid", "capacity_sat", "rest_sat", "fee_sat", "channel_outpoint",
                                               "status", "peer_id", "channel_id", "mine", "verified") if k in x}
                        for x in rec["sales"]]
    if rec["role"] == "lsp":
        out["epoch"] = rec["state"]  # DW state index of every node of the tree
        out["participants"] = [c["peer_id"] for c in rec["channels"]]
        by_id = {c["channel_id"]: c for c in node.peer_channels()}
        out["channels"] = [{**{k: c[k] for k in ("peer_id", "channel_id", "funding_outpoint", "capacity_msat",
                                                 "early_warning_blocks", "exit")},
                            "invoice_final_cltv": invoice_final_cltv(int(c["early_warning_blocks"]), params.confirm_blocks),
                            "state": by_id.get(c["channel_id"], {}).get("state"),
                            "our_balance_msat": msat(by_id.get(c["channel_id"], {}).get("to_us_msat", 0))}
                           for c in rec["channels"]]
        return out
    channels = [{"peer_id": rec["lsp"], "channel_id": ch.get("channel_id"), "state": ch.get("state"),
                 "funding_outpoint": f"{ch.get('funding_txid')}:{ch.get('funding_outnum')}",
                 "capacity_msat": msat(ch.get("total_msat", rec["capacity_sat"] * 1000)),
                 "our_balance_msat": msat(ch.get("to_us_msat", 0)), "early_warning_blocks": rec["early_warning_blocks"],
                 "invoice_final_cltv": invoice_final_cltv(int(rec["early_warning_blocks"]), params.confirm_blocks)}
                for ch in node.peer_channels(rec["lsp"]) if channel_in_factory(rec, ch)]
    funding = rec.get("funding") or {"status": "confirmed", "confirmed_height": None}  # records before the watch
    if leaf_status(rec) == MISMATCH:
        out["state"] = "leaf_script_mismatch"
    elif progress is None or funding["status"] == "unfunded":
        out["state"] = CLIENT_STATES[funding["status"]]
    out.update({"lsp": rec["lsp"], "participants": [rec["lsp"]], "epoch": rec.get("state_indices", []),
                "channels": channels, "exit": rec["exit"],
                "safety": client_safety(funding, rec.get("verified", {}).get("leaf_script") or {},
                                        node.spendable_wallet_sat() if channels else None),
                "verified": {**rec.get("verified", {}), "funding": funding}})
    return out


def exit_progress(p: dict[str, Any] | None) -> dict[str, Any]:
    if p is None:
        return {"status": "none"}
    return {"status": p["status"], "published": p["published"], "confirmed": p.get("confirmed", []),
            "bumped": p.get("bumped", {}), "transactions": len(p["txs"]), "closed_channels": p["closed"],
            "last_error": p["last_error"], "conflicts": p.get("conflicts", []), "dropped": p.get("stopped", []),
            "resent": p.get("resent", {}), "timeout_height": p.get("timeout_height"),
            "htlc_expiry": p.get("htlc_expiry"),
            "cpfp_children": {n: {k: c[k] for k in ("txid", "fee", "feerate", "height")}
                              for n, c in p.get("children", {}).items()}}


def client_safety(funding: dict[str, Any], leaf: dict[str, Any], wallet_sat: Optional[int] = None) -> str:
    """One line for a client: can its money in this factory be relied on? `wallet_sat`: its spendable
    on-chain coins, while it has a channel in the factory."""
    if leaf.get("status") == MISMATCH:
        return f"not backed: {leaf.get('reason')}; the channel was closed and takes no HTLCs"
    if funding["status"] == "unfunded":
        return f"not backed: {funding.get('reason')}; the channel was closed and takes no HTLCs"
    parts = ["exit path stored",
             "leaf output verified as our channel's 2-of-2" if leaf.get("status") == VERIFIED
             else "leaf script not verified yet (checked before the first incoming HTLC is accepted)"]
    if funding["status"] == "awaiting":
        parts.append(f"funding output not confirmed yet (given up at height {funding.get('deadline_height')}): "
                     "until then the channel is only as good as the LSP")
    else:
        parts.append(f"funding output confirmed as signed at height {funding.get('confirmed_height')}")
    if wallet_sat == 0:
        parts.append("no confirmed coin in this node's wallet: an HTLC could not be claimed on chain "
                     "(anchor channels pay the HTLC transactions' fees from the wallet)")
    return "; ".join(parts)
