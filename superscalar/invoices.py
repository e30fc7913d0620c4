"""lightningd's `invoice`, seen through an `rpc_command` hook: a node with factory channels asks its
payers for enough final CLTV (`htlc_timing.py`), so a plain `invoice` with no extra arguments can be
paid through a factory channel whatever the node's `cltv-final` is. The user never needs to know the
early-warning time. Everything else about the invoice (route hints of the unannounced factory
channels included) is lightningd's own."""

from __future__ import annotations

from typing import Any, Optional

from .client import funding_ok
from .exit_routing import never_funded
from .factory.params import FactoryParams
from .htlc_timing import required_final_cltv, with_final_cltv
from .store import Store


def factory_channel_timings(store: Store) -> list[tuple[int, int]]:
    """(early-warning blocks, confirm blocks) of every factory channel this node can be paid through."""
    out = []
    for fid in store.factory_ids():
        rec = store.get(fid, "factory")
        if rec is None or never_funded(rec):
            continue
        confirm = FactoryParams.deserialize(rec["params"].encode()).confirm_blocks
        if rec.get("role") == "client" and funding_ok(rec):
            out.append((int(rec["early_warning_blocks"]), confirm))
        elif rec.get("role") == "lsp":
            out += [(int(c["early_warning_blocks"]), confirm) for c in rec["channels"] if c.get("channel_id")]
    return out


def rewrite_invoice(store: Store, request: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The `invoice` request to run instead of `request`, or None to let it through unchanged."""
    if request.get("method") != "invoice":
        return None
    need = required_final_cltv(factory_channel_timings(store))
    if need is None:
        return None
    params = with_final_cltv(request.get("params", {}), need)
    return None if params is None else {**request, "params": params}
