#!/usr/bin/env python3
"""Test-only plugin: a node that refuses to forward any HTLC (temporary_node_failure) and counts the
ones it refused in its log; payments to the node itself go on. Started on an LSP, it plays an LSP
that will not carry a client's own circular payment (the JIT channel migration, client/migration.py)."""

from typing import Any

from pyln.client import Plugin

plugin = Plugin()


@plugin.hook("htlc_accepted")
def on_htlc_accepted(onion: dict[str, Any], htlc: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    if onion.get("short_channel_id"):
        plugin.log(f"refusing to forward {htlc.get('amount_msat')} to {onion['short_channel_id']}")
        return {"result": "fail", "failure_message": "2002"}
    return {"result": "continue"}


plugin.run()
