"""Integration test names stay short enough for pyln-testing on PostgreSQL (contrib/test_postgres.sh).

There each node's database is named `<test function>_<node number>_<8 random characters>`, and
PostgreSQL cuts identifiers to 63 bytes: from 62 characters on, a test's name leaves neither the node
number nor the random part, so its second node stops at "database already exists". A name under 55
characters keeps the node number (up to 99) and 5 random characters. SQLite never shows it, hence
this check.
"""

from __future__ import annotations

import ast
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
MAX_NAME = 54  # 63 (PostgreSQL's NAMEDATALEN - 1) - len("_99_") - 5 random characters


def test_integration_test_names_fit_postgres_database_names() -> None:
    names = [node.name for path in sorted(INTEGRATION.glob("test_*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    assert len(names) >= 90  # the scan found the tests
    too_long = [f"{n} ({len(n)})" for n in names if len(n) > MAX_NAME]
    assert too_long == [], f"integration test names over {MAX_NAME} characters: {too_long}"
