"""The package layers of ARCHITECTURE.md, checked on every import in the tree: each package imports only
those below it (roles → chain follower → records → Core Lightning shell → pure core)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "superscalar"

PURE = {"bitcoin", "crypto", "factory", "protocol"}
# what each part of the tree may import from superscalar (besides itself)
ALLOWED: dict[str, set[str]] = {
    "bitcoin": {"crypto"},
    "crypto": {"bitcoin"},
    "factory": {"bitcoin", "crypto"},
    "protocol": {"bitcoin", "crypto", "factory", "sales", "leaf_script"},
    "sales": {"bitcoin", "crypto", "factory"},
    "leaf_script": {"bitcoin", "crypto", "factory"},
    "htlc_timing": {"bitcoin", "crypto", "factory", "protocol"},
    "records": {"bitcoin", "crypto", "factory", "sales"},
    "cln": PURE | {"records", "sales", "leaf_script", "htlc_timing", "chain", "lsp", "client", "lsps", "helper"},
    "chain": PURE | {"records", "sales", "leaf_script", "htlc_timing", "cln"},
    "lsps": PURE | {"cln"},
    "lsp": PURE | {"records", "sales", "leaf_script", "htlc_timing", "cln", "chain", "lsps", "client"},
    "client": PURE | {"records", "sales", "leaf_script", "htlc_timing", "cln", "chain", "lsps"},
    "helper": PURE | {"cln", "chain"},
}
# the shell's plugin.py wires every role, and listing.py is superscalar-list's view over every layer;
# the rest of cln/ sits below the roles and the chain follower
SHELL_TOP = {"cln/plugin.py", "cln/listing.py"}


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    rel = path.relative_to(PACKAGE)
    here = list(rel.parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)] if node.level > 1 else here
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # "from .. import x": x is a top-level module
                    target = [node.names[0].name]
            elif node.module and node.module.startswith("superscalar."):
                target = node.module.split(".")[1:]
            else:
                continue
            found.add(target[0])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("superscalar."):
                    found.add(a.name.split(".")[1])
    return found


def test_every_module_imports_only_layers_below_it() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = part_of(path)
        if part == "__init__":
            continue
        rel = str(path.relative_to(PACKAGE))
        allowed = ALLOWED[part] | {part}
        if part == "cln" and rel not in SHELL_TOP:
            allowed = (allowed - {"lsp", "client", "lsps", "chain"})
        bad = imported_parts(path) - allowed
        if bad:
            wrong.append(f"{rel} imports {sorted(bad)}")
    assert wrong == []


def test_the_chain_follower_imports_no_role() -> None:
    for path in (PACKAGE / "chain").glob("*.py"):
        assert not imported_parts(path) & {"lsp", "client", "lsps"}, path.name
