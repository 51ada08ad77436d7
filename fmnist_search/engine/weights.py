"""Weights files: a plain ``torch.save`` of a dict of tensors and strings (model name,
state dict, normalisation), loaded with ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects. Trial artifacts, teachers and ``train --save`` all use it.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn as nn

from ..core.errors import FmnistSearchError
from .models import create_model
from .train import MEAN, STD


def weights_payload(module: nn.Module, model_name: str, tta_flip: bool = False) -> dict[str, Any]:
    """What a weights file holds: tensors and plain values only (loadable with weights_only=True),
    with how its accuracy was measured (``tta_flip``), so `evaluate --weights` measures it alike."""
    return {
        "model": model_name,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
        "mean": MEAN,
        "std": STD,
        "tta_flip": tta_flip,
    }


class Weights(NamedTuple):
    model_name: str
    module: nn.Module  # on the CPU, in eval mode
    tta_flip: bool  # evaluated with flip TTA when trained (files written before it was recorded: False)


def load_weights_file(path: Path) -> Weights:
    """The model with the saved weights, and its evaluation settings."""
    try:
        payload: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
        model = create_model(payload["model"])
        model.load_state_dict(payload["state_dict"])
    except FileNotFoundError:
        raise FmnistSearchError(f"weights file {path} not found") from None
    except (KeyError, RuntimeError, pickle.UnpicklingError, EOFError, TypeError) as e:
        raise FmnistSearchError(f"{path} is not an fmnist-search weights file ({type(e).__name__})") from None
    return Weights(payload["model"], model.eval(), bool(payload.get("tta_flip", False)))
