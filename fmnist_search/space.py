"""Search spaces: which training hyperparameters a trial samples, and their ranges.

A space is a list of parameter names from ``PARAMS``; every parameter not sampled takes
its value from the study's ``fixed`` settings, else from ``TrainConfig``'s default (and
``momentum``/``epochs``/``batch_size`` from the study itself). Every sampled value is an
Optuna trial param, so the dashboard, exports and samplers see all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import optuna

from .errors import ConfigError

Suggest = Callable[[optuna.Trial, Any], Any]  # (trial, spec) -> value

PARAMS: dict[str, Suggest] = {
    "lr": lambda t, s: t.suggest_float("lr", s.lr_min, s.lr_max, log=True),
    "momentum": lambda t, s: t.suggest_float("momentum", 0.0, 0.99),
    "nesterov": lambda t, s: t.suggest_categorical("nesterov", [False, True]),
    "weight_decay": lambda t, s: t.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
    "label_smoothing": lambda t, s: t.suggest_float("label_smoothing", 0.0, 0.2),
    "schedule": lambda t, s: t.suggest_categorical("schedule", ["constant", "cosine", "onecycle"]),
    "warmup_frac": lambda t, s: t.suggest_float("warmup_frac", 0.0, 0.3),  # of all steps
    "batch_size": lambda t, s: t.suggest_categorical("batch_size", [64, 128, 256, 512]),
    # A third of the study's epochs up to all of them; pruners compare trials epoch by epoch.
    "epochs": lambda t, s: t.suggest_int("epochs", max(1, math.ceil(s.epochs / 3)), s.epochs),
    "crop": lambda t, s: t.suggest_categorical("crop", [0, 2, 4]),  # random-crop padding, pixels
    "flip": lambda t, s: t.suggest_categorical("flip", [False, True]),
    "erasing": lambda t, s: t.suggest_float("erasing", 0.0, 0.5),  # random-erasing probability
}

SPACES: dict[str, tuple[str, ...]] = {
    "lr": ("lr",),  # the report's question: which learning rate?
    "full": tuple(PARAMS),
}


def check_fixed(fixed: dict[str, Any]) -> None:
    from .train import TrainConfig

    known = {f.name for f in fields(TrainConfig)} - {"seed", "precision", "eval_batch_size"}
    unknown = set(fixed) - known
    if unknown:
        raise ConfigError(f"unknown fixed parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    check_distill(fixed)


def check_distill(values: dict[str, Any]) -> None:
    """``teacher`` and ``distill`` come together (neither is sampled, so a study's fixed values hold both)."""
    teacher, distill = values.get("teacher", ""), values.get("distill", 0.0)
    temp = values.get("distill_temp", 4.0)
    if not isinstance(distill, int | float) or not 0.0 <= distill <= 1.0:
        raise ConfigError(f"distill must be a number in [0, 1] (the teacher's share of the loss), got {distill!r}")
    if not isinstance(temp, int | float) or temp <= 0:
        raise ConfigError(f"distill_temp must be a positive number, got {temp!r}")
    if distill > 0 and not teacher:
        raise ConfigError(f"distill={distill} needs a teacher: add teacher=PRESET, e.g. teacher=airbench-tuned")
    if teacher:
        if not isinstance(teacher, str):
            raise ConfigError(f"teacher must be a preset name, got {teacher!r}")
        if distill == 0:
            raise ConfigError(f"teacher {teacher!r} is unused with distill=0; set distill, e.g. distill=0.9")
        from .teachers import check_teacher

        check_teacher(teacher)


def suggest(trial: optuna.Trial, spec: Any) -> dict[str, Any]:
    """This trial's training hyperparameters: sampled from the space, else fixed, else the study's."""
    values: dict[str, Any] = {"momentum": spec.momentum, "epochs": spec.epochs, "batch_size": spec.batch_size}
    values.update(spec.fixed)
    for name in SPACES[spec.space]:
        if name not in spec.fixed:
            values[name] = PARAMS[name](trial, spec)
    return values
