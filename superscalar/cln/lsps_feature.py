"""The plugin that sets bLIP-50's feature bit 729 on an LSP's node (see `superscalar_lsps_feature.py`)."""

from __future__ import annotations

from typing import Any

from pyln.client import Plugin

from ..protocol.lsps0 import LSPS_FEATURE_BIT


def build_feature_plugin() -> Plugin:
    bit = 1 << LSPS_FEATURE_BIT
    # init (sent to peers on connection) and node (node_announcement), as bLIP-50 allows;
    # not dynamic: lightningd accepts feature bits only from plugins started with it
    plugin = Plugin(dynamic=False, init_features=bit, node_features=bit)

    @plugin.init()
    def init(options: dict[str, Any], configuration: dict[str, Any], plugin: Plugin, **_: Any) -> Any:
        try:
            entry = plugin.rpc.call("listconfigs", {"config": "superscalar-lsp"})["configs"]["superscalar-lsp"]
            value = entry.get("value_bool", entry.get("value_str", ""))
            is_lsp = value is True or str(value).lower() in ("true", "1", "yes")
        except Exception as e:  # the main plugin is not loaded: no LSP here
            return {"disable": f"superscalar-lsp is not configured ({e}): not an LSP, feature bit 729 not set"}
        if not is_lsp:
            # lightningd gave connectd and gossipd its features before any plugin's init, so disabling
            # does not take the bit back from them: say so, loudly
            plugin.log("this node is not an LSP (superscalar-lsp=false) but loads superscalar_lsps_feature.py: "
                       "bLIP-50 forbids a client feature bit 729, and lightningd already gave it to connectd; "
                       "remove this plugin from the configuration", level="unusual")
            return {"disable": "this node is not an LSP (superscalar-lsp=false): remove this plugin"}
        plugin.log(f"LSP: feature bit {LSPS_FEATURE_BIT} (option_supports_lsps) set in init and node_announcement")
        return None

    return plugin
