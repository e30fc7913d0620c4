#!/usr/bin/env python3
"""Test-only plugin: accept every channel open as zero-conf (what a client's plugin does for a factory
channel), so a plain node can be the fundee of a channel whose funding transaction never goes out."""

from typing import Any

from pyln.client import Plugin

plugin = Plugin()


@plugin.hook("openchannel")
def on_openchannel(openchannel: dict[str, Any], plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
    return {"result": "continue", "mindepth": 0}


plugin.run()
