"""Shared by the benchmark scripts: write a result dict as JSON (run from any folder)."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any


def write_json(path: Path | None, results: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


def hardware(device: Any, precision: str, **protocol: Any) -> dict:
    """What a result was measured on (device, versions, threads), plus the run's own settings."""
    import torch

    from fmnist_search.engine.devices import device_name

    return {
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": precision,
        "threads": torch.get_num_threads(),
        **protocol,
    }
