"""What `fmnist-search --version` says: this package, the libraries it runs on, the device it would use.

Versions come from the installed packages' metadata and, on a machine with no GPU driver, the
device from /proc: no library is imported, so the answer takes well under a second (importing
torch, optuna and optuna-dashboard took seconds). Where a GPU may be, torch is asked.
"""

from __future__ import annotations

import importlib.util
import platform
import re
from importlib.metadata import version
from pathlib import Path

from .. import __version__
from ..core.hardware import cpu_name, maybe_accelerated


def versions() -> str:
    libraries = ", ".join(f"{name} {_version(name)}" for name in ("torch", "torchvision", "optuna", "optuna-dashboard"))
    return f"fmnist-search {__version__} (Python {platform.python_version()}; {libraries}; device {_device()})"


def _version(name: str) -> str:
    """The installed version; torch's and torchvision's with their build tag (``2.14.1+cu130``),
    which their wheels' metadata leaves out and their own ``version.py`` keeps."""
    spec = importlib.util.find_spec(name.replace("-", "_"))
    if spec is not None and spec.submodule_search_locations:
        file = Path(next(iter(spec.submodule_search_locations))) / "version.py"
        found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", file.read_text(), re.M) if file.is_file() else None
        if found:
            return found.group(1)
    return version(name)


def _device() -> str:
    if not maybe_accelerated():
        return f"cpu: {cpu_name()}"
    from ..engine.devices import device_name, resolve_device

    device = resolve_device("auto")
    return f"{device}: {device_name(device)}"
