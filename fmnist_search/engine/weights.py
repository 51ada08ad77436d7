"""Weights files: a plain ``torch.save`` of a dict of tensors and strings (model name,
state dict, normalisation), loaded with ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects. Trial artifacts, teachers and ``train --save`` all use it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from ..core.errors import FmnistSearchError
from .models import create_model
from .train import MEAN, STD


def weights_payload(module: nn.Module, model_name: str) -> dict[str, Any]:
    """What a weights file holds: tensors and plain values only (loadable with weights_only=True)."""
    return {
        "model": model_name,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
        "mean": MEAN,
        "std": STD,
    }


def load_weights_file(path: Path) -> tuple[str, nn.Module]:
    """(model name, model with the saved weights, on the CPU, in eval mode)."""
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        model = create_model(payload["model"])
        model.load_state_dict(payload["state_dict"])
    except FileNotFoundError:
        raise FmnistSearchError(f"weights file {path} not found") from None
    except (KeyError, RuntimeError, pickle.UnpicklingError, EOFError, TypeError) as e:
        raise FmnistSearchError(f"{path} is not an fmnist-search weights file ({type(e).__name__})") from None
    return payload["model"], model.eval()
