"""The CLN shell: registers methods, options and hooks with pyln and translates them into calls.

Handlers stay short: check parameters, call into the core, return JSON. No logic lives here.
"""

from __future__ import annotations

from typing import Any

from pyln.client import Plugin

from superscalar import __version__


def build_plugin() -> Plugin:
    """A pyln Plugin with every superscalar method registered; `.run()` starts it."""
    plugin = Plugin(dynamic=False)
    state: dict[str, Any] = {}

    @plugin.init()
    def init(options: dict[str, Any], configuration: dict[str, Any], plugin: Plugin, **kwargs: Any) -> None:
        state["network"] = configuration.get("network")
        state["lightning_dir"] = configuration.get("lightning-dir")
        plugin.log(f"superscalar {__version__} started on {state['network']}")

    @plugin.method("superscalar-getinfo")
    def getinfo(plugin: Plugin, **kwargs: Any) -> dict[str, Any]:
        """Show the superscalar plugin's version and the network it runs on."""
        return {"version": __version__, "network": state.get("network")}

    return plugin
