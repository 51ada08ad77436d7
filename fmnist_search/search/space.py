"""Search spaces: which training hyperparameters a trial samples, and their ranges.

A space is a list of parameter names from ``PARAMS``; every parameter not sampled takes
its value from the study's ``fixed`` settings, else from ``TrainConfig``'s default (and
``momentum``/``epochs``/``batch_size`` from the study itself). Every sampled value is an
Optuna trial param, so the dashboard, exports and samplers see all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna

from ..core.config import SCHEDULE_NAMES

Suggest = Callable[[optuna.Trial, Any], Any]  # (trial, spec) -> value

PARAMS: dict[str, Suggest] = {
    "lr": lambda t, s: t.suggest_float("lr", s.lr_min, s.lr_max, log=True),
    "momentum": lambda t, s: t.suggest_float("momentum", 0.0, 0.99),
    "nesterov": lambda t, s: t.suggest_categorical("nesterov", [False, True]),
    "weight_decay": lambda t, s: t.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    "label_smoothing": lambda t, s: t.suggest_float("label_smoothing", 0.0, 0.2),
    "schedule": lambda t, s: t.suggest_categorical("schedule", list(SCHEDULE_NAMES)),
    "warmup_frac": lambda t, s: t.suggest_float("warmup_frac", 0.0, 0.3),  # of all steps
    "batch_size": lambda t, s: t.suggest_categorical("batch_size", [64, 128, 256, 512]),
    # A third of the study's epochs up to all of them; pruners compare trials epoch by epoch.
    "epochs": lambda t, s: t.suggest_int("epochs", max(1, math.ceil(s.epochs / 3)), s.epochs),
    "crop": lambda t, s: t.suggest_categorical("crop", [0, 2, 4]),  # random-crop padding, pixels
    "flip": lambda t, s: t.suggest_categorical("flip", [False, True]),
    "erasing": lambda t, s: t.suggest_float("erasing", 0.0, 0.5),  # random-erasing probability
}

SPACES: dict[str, tuple[str, ...]] = {  # keys: config.SPACE_NAMES
    "lr": ("lr",),  # the report's question: which learning rate?
    "full": tuple(PARAMS),
}


def suggest(trial: optuna.Trial, spec: Any) -> dict[str, Any]:
    """This trial's training hyperparameters: sampled from the space, else fixed, else the study's."""
    values: dict[str, Any] = {"momentum": spec.momentum, "epochs": spec.epochs, "batch_size": spec.batch_size}
    values.update(spec.fixed)
    for name in SPACES[spec.space]:
        if name not in spec.fixed:
            values[name] = PARAMS[name](trial, spec)
    return values
