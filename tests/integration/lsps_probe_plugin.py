#!/usr/bin/env python3
"""Test-only plugin: a raw LSPS0 peer. `probe-send` sends any payload on message 37913; every 37913
message received is kept, decoded if it is JSON, for `probe-inbox`. On an LSP node it also answers
`lsps5.*` requests, as another LSPS plugin sharing the message type would."""

import json
import threading
from typing import Any

from pyln.client import Plugin

plugin = Plugin()
inbox: list[Any] = []
lock = threading.Lock()
TYPE = (37913).to_bytes(2, "big")


@plugin.hook("custommsg")
def on_custommsg(peer_id: str, payload: str, plugin: Plugin, **kwargs: Any) -> dict[str, str]:
    raw = bytes.fromhex(payload)
    if raw[:2] == TYPE:
        try:
            body = json.loads(raw[2:])
        except ValueError:
            body = {"undecodable": raw[2:].hex()}
        with lock:
            inbox.append({"peer": peer_id, "body": body})
        if isinstance(body, dict) and str(body.get("method", "")).startswith("lsps5."):
            answer = {"jsonrpc": "2.0", "id": body.get("id"), "result": {"answered_by": "probe"}}
            plugin.rpc.call("sendcustommsg", {"node_id": peer_id, "msg": (TYPE + json.dumps(answer).encode()).hex()})
    return {"result": "continue"}


@plugin.method("probe-send")
def probe_send(peer: str, text: str, plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    """Send `text` (UTF-8, or hex when it starts with 'hex:') to `peer` on message 37913."""
    body = bytes.fromhex(text[4:]) if text.startswith("hex:") else text.encode()
    plugin.rpc.call("sendcustommsg", {"node_id": peer, "msg": (TYPE + body).hex()})
    return {}


@plugin.method("probe-inbox")
def probe_inbox(plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    with lock:
        return {"messages": list(inbox)}


plugin.run()
