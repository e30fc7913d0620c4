"""Integration tests run real bitcoind (and lightningd) on regtest through pyln-testing.

When a binary is missing, the tests that need it are skipped with one reason naming it, so a fresh
clone still passes; nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# lightningd starts the plugin with `#!/usr/bin/env python3`: make that the interpreter running the
# tests, so the plugin sees the same installed packages (pyln-client).
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
os.environ.setdefault("TEST_NETWORK", "regtest")
os.environ.setdefault("VALGRIND", "0")
os.environ.setdefault("RUST", "0")

from pyln.testing.fixtures import *  # noqa: E402,F401,F403  (bitcoind, node_factory, directory, …)

from tests.pyln_threads import serialize_bitcoind_proxies  # noqa: E402

serialize_bitcoind_proxies()

PLUGIN_PATH = Path(__file__).resolve().parents[2] / "superscalar_plugin.py"


def _missing(*binaries: str) -> list[str]:
    return [b for b in binaries if shutil.which(b) is None]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" not in str(item.fspath):
            continue
        needs = ("bitcoind", "lightningd") if item.get_closest_marker("lightningd") else ("bitcoind",)
        missing = _missing(*needs)
        if missing:
            item.add_marker(pytest.mark.skip(
                reason=f"integration test skipped: {', '.join(missing)} not found on PATH"
            ))


@pytest.fixture
def plugin_path() -> Path:
    return PLUGIN_PATH
