"""`superscalar-leave`: a client asks its LSP to pay it on chain at the factory's next cooperative close or
rollover, instead of carrying it into the next factory (lsp/leaving.py is the LSP's side)."""

from __future__ import annotations

import secrets
from typing import Any

from ..cln.node import ClnNode
from ..protocol.wire import Leave
from ..cln.store import Store
from ..cln.transport import Transport


def request_leave(node: ClnNode, store: Store, transport: Transport, factory_id: str) -> dict[str, Any]:
    """Send the request (again, if asked again) and note it in this client's `leave-request` record.
    Raises ValueError if this node is no client of that factory."""
    rec = store.get(factory_id, "factory")
    if rec is None or rec.get("role") != "client":
        raise ValueError(f"no factory {factory_id} in which this node is a client")
    transport.send(rec["lsp"], Leave(bytes.fromhex(factory_id), secrets.token_bytes(32)))
    height = node.blockheight()
    store.put(factory_id, "leave-request", {"height": height})
    return {"factory_id": factory_id, "lsp": rec["lsp"], "requested_at_height": height}
