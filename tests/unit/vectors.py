"""Where the official test vectors live: `shared/vectors` beside the repository (never copied in)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = REPO_ROOT.parent / "shared" / "vectors"


def vector_path(relpath: str) -> Path:
    """The path of an official vector file; skips the calling test, loudly, if it is missing."""
    path = VECTORS_DIR / relpath
    if not path.is_file():
        pytest.skip(f"official test vectors not found: {path} (expected ../shared/vectors beside the repo)")
    return path


def load_json(relpath: str) -> Any:
    with vector_path(relpath).open() as f:
        return json.load(f)
