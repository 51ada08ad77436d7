"""What `fmnist-search --version` says: this package, the libraries it runs on, the device it would use."""

from __future__ import annotations

import platform

import optuna
import optuna_dashboard
import torch
import torchvision

from .. import __version__
from ..engine.devices import device_name, resolve_device


def versions() -> str:
    device = resolve_device("auto")
    return (
        f"fmnist-search {__version__} (Python {platform.python_version()}; torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, optuna {optuna.__version__}, "
        f"optuna-dashboard {optuna_dashboard.__version__}; device {device}: {device_name(device)})"
    )
