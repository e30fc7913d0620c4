"""lightningd's `invoice`, seen through an `rpc_command` hook: a node with factory channels asks its
payers for enough final CLTV (`htlc_timing.py`), so a plain `invoice` with no extra arguments can be
paid through a factory channel whatever the node's `cltv-final` is. The user never needs to know the
early-warning time. Everything else about the invoice (route hints of the unannounced factory
channels included) is lightningd's own."""

from __future__ import annotations

from typing import Any, Optional

from .htlc_index import HtlcIndex
from .htlc_timing import required_final_cltv, with_final_cltv


def rewrite_invoice(index: HtlcIndex, request: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The `invoice` request to run instead of `request`, or None to let it through unchanged. The
    final CLTV asked for is the most any of this node's live, backed factory channels needs."""
    if request.get("method") != "invoice":
        return None
    need = required_final_cltv({(e.early_warning_blocks, e.confirm_blocks) for _, e in index.factory_channels()})
    if need is None:
        return None
    params = with_final_cltv(request.get("params", {}), need)
    return None if params is None else {**request, "params": params}
