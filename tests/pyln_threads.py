"""A work-around for CPython 3.11.7 under pyln-testing: `NodeFactory.get_nodes` starts nodes in threads,
and each node's `BitcoinD.get_proxy` builds a Flask app whose routing compiles with `ast.parse`. Two
`ast.parse` calls at once can fail with "SystemError: AST constructor recursion depth mismatch" (a
CPython bug in the parser's per-thread recursion counter, fixed in later 3.11 and 3.12 releases); it
failed one CI run here (tests/integration/test_factory_lifecycle.py, in `start_network`). Building the
proxies one at a time avoids it; nothing else of the nodes' start is serialised."""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()


def serialize_bitcoind_proxies() -> None:
    from pyln.testing.utils import BitcoinD

    original = BitcoinD.get_proxy
    if getattr(original, "_serialized", False):
        return

    def get_proxy(self: Any) -> Any:
        with _lock:
            return original(self)

    get_proxy._serialized = True  # type: ignore[attr-defined]
    BitcoinD.get_proxy = get_proxy  # type: ignore[method-assign]
