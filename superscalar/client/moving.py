"""`superscalar-move`: a client in factories of two LSPs chooses where its next factory is. It takes a
place in the other LSP's next factory first (nothing changes if that LSP refuses), then asks the old
factory's LSP to pay it on chain at that factory's rollover instead of carrying it over."""

from __future__ import annotations

from typing import Any, Optional

from ..lsps.client import LspsClient
from ..cln.node import ClnNode
from ..cln.store import Store
from ..cln.transport import Transport
from .leaving import request_leave
from .onboarding import ask_join


def move(node: ClnNode, store: Store, transport: Transport, lsps: LspsClient, allowed: Optional[set[str]],
         factory_id: str, to_lsp: str, inbound_sat: int) -> dict[str, Any]:
    rec = store.get(factory_id, "factory")
    if rec is None or rec.get("role") != "client":
        raise ValueError(f"no factory {factory_id} in which this node is a client")
    if rec["lsp"] == to_lsp:
        raise ValueError("that is this factory's own LSP: its rollover carries us over already")
    if allowed is not None and to_lsp not in allowed:
        raise ValueError(f"{to_lsp} is not in superscalar-join: we would refuse its invitation")
    joined = ask_join(lsps, to_lsp, inbound_sat)
    return {"join": joined, "leave": request_leave(node, store, transport, factory_id)}
