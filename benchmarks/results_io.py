"""Shared by the benchmark scripts: write a result dict as JSON (run from any folder)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(path: Path | None, results: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
