"""The machine's CPU, named without importing torch (``--version`` answers in well under a second)."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_name() -> str:
    """``AMD EPYC (2 cores)``: the CPU model and the cores this process may use."""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine() or "cpu"
    return f"{model} ({os.cpu_count()} cores)"


def maybe_accelerated() -> bool:
    """Whether torch could find a GPU here: a Linux machine without an NVIDIA or AMD GPU driver
    loaded cannot; elsewhere (macOS: MPS) only torch can say."""
    if not sys.platform.startswith("linux"):
        return True
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/kfd").exists()
