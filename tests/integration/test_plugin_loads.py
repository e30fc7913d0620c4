"""The plugin loads into a real lightningd and answers `superscalar-getinfo`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import superscalar

pytestmark = pytest.mark.lightningd


def test_plugin_starts_and_reports_version(node_factory: Any, plugin_path: Path) -> None:
    node = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-client-min-active-blocks": "3000"})
    info = node.rpc.call("superscalar-getinfo")
    params = info.pop("parameters")
    policy = info.pop("client_policy")
    assert info == {"version": superscalar.__version__, "network": "regtest", "lsp": False, "join": [],
                    "profile": "mainnet", "factories": 0, "developer": True,
                    "forget_retired": False, "channels_forgotten": 0, "factories_archived": 0,
                    "helper": None, "watchtowers": None}  # neither a helper nor a client of one
    # The mainnet client policy, with the one bound given as an option.
    assert policy["min_active_blocks"] == 3000 and policy["max_start_drift_blocks"] == 6
    assert policy["funding_timeout_blocks"] == 144
    assert params["step_blocks"] == 144 and params["states_per_layer"] == 4 and params["feerate_per_kvb"] == 2000
    plugins = [p["name"] for p in node.rpc.plugin_list()["plugins"]]
    assert str(plugin_path) in plugins
    # The command shows up in lightningd's help, with its docstring as usage text.
    helps = node.rpc.help("superscalar-getinfo")["help"]
    assert helps and helps[0]["command"].startswith("superscalar-getinfo")
    # A node that is not an LSP refuses to create factories, with a clear error.
    with pytest.raises(Exception, match="does not offer factories"):
        node.rpc.call("superscalar-create", {"clients": [{"id": "02" + "11" * 32, "inbound_sat": 100_000}]})


def test_test_hooks_need_developer_mode(node_factory: Any, plugin_path: Path) -> None:
    node = node_factory.get_node(options={"plugin": str(plugin_path), "superscalar-lsp": "true",
                                          "superscalar-dev-fail-at": "lsp-never-broadcast"},
                                 start=False)
    # pyln-testing starts every node with --developer and some dev- options: a production node has neither.
    node.daemon.early_opts = [o for o in node.daemon.early_opts if o != "--developer"]
    for name in [k for k in node.daemon.opts if k.startswith("dev-")]:
        del node.daemon.opts[name]
    node.start()
    assert node.rpc.call("superscalar-getinfo")["developer"] is False
    assert node.daemon.is_in_log("superscalar-dev-fail-at is ignored")
