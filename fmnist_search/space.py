"""The search space: what each trial samples. Every sampled value is a trial param."""

from __future__ import annotations

from typing import Any

import optuna

from .config import StudySpec


def suggest(trial: optuna.Trial, spec: StudySpec) -> dict[str, Any]:
    """Sample this trial's hyperparameters (today: the learning rate, log-uniform)."""
    return {"lr": trial.suggest_float("lr", spec.lr_min, spec.lr_max, log=True)}
