"""Search spaces: which training hyperparameters a trial samples, and their ranges.

A space is a list of parameter names from ``PARAMS``; every parameter not sampled with_option_groups
its value from the study's ``fixed`` settings, else from ``TrainConfig``'s default (and
``momentum``/``epochs``/``batch_size`` from the study itself). Every sampled value is an
Optuna trial param, so the dashboard, exports and samplers see all of them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import optuna

from ...core.rules import SCHEDULE_NAMES

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

SPACES: dict[str, tuple[str, ...]] = {  # keys: core.rules.SPACE_NAMES
    "lr": ("lr",),  # the report's question: which learning rate?
    "full": tuple(PARAMS),
}


MODEL_PARAM = "model"  # a comparison study's categorical parameter: which network the trial trains


def suggest(trial: optuna.Trial, spec: Any) -> dict[str, Any]:
    """This trial's training hyperparameters: sampled from the space, else fixed, else the study's.

    In a study that compares models, the model is sampled first; then that model's recipe
    (``spec.recipes``: its lr range, momentum, fixed values) sits between the study's values
    and the study's own fixed ones, and each sampled parameter is the model's own
    (``lr_lenet``, ``lr_airbench``: conditional parameters, so the sampler models each
    network's lr apart).
    """
    if len(spec.models) == 1:
        values: dict[str, Any] = {"momentum": spec.momentum, "epochs": spec.epochs, "batch_size": spec.batch_size}
        values.update(spec.fixed)
        for name in SPACES[spec.space]:
            if name not in spec.fixed:
                values[name] = PARAMS[name](trial, spec)
        return values
    model = trial.suggest_categorical(MODEL_PARAM, list(spec.models))
    recipe = spec.recipes.get(model, {})
    fixed = {**recipe.get("fixed", {}), **spec.fixed}
    values = {"momentum": recipe.get("momentum", spec.momentum), "epochs": spec.epochs, "batch_size": spec.batch_size}
    values.update(fixed)
    ranges = SimpleNamespace(
        lr_min=recipe.get("lr_min", spec.lr_min), lr_max=recipe.get("lr_max", spec.lr_max), epochs=spec.epochs
    )
    own = _OwnParams(trial, model)
    for name in SPACES[spec.space]:
        if name not in fixed:
            values[name] = PARAMS[name](own, ranges)
    return values


# Sampled params that every member of a population must share (their batches are one), so a
# population samples them once: its other members and refills take the first one's values.
SHARED_PARAMS = ("batch_size",)


def shared_params(trial: optuna.Trial) -> dict[str, Any]:
    """The params of ``trial`` that the rest of its population takes as they are (a comparison's
    per-model names too: ``batch_size_lenet``)."""
    return {n: v for n, v in trial.params.items() if n in SHARED_PARAMS or n.rsplit("_", 1)[0] in SHARED_PARAMS}


def model_of(params: dict[str, Any], spec: Any) -> str:
    """The network a trial trains: its sampled ``model`` in a comparison study, else the study's."""
    return str(params.get(MODEL_PARAM, spec.model)) if len(spec.models) > 1 else spec.model


class _OwnParams:
    """A trial whose parameters are one model's own: ``suggest_float("lr", ...)`` asks for ``lr_MODEL``."""

    def __init__(self, trial: optuna.Trial, model: str) -> None:
        self._trial, self._suffix = trial, f"_{model}"

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        return self._trial.suggest_float(name + self._suffix, *args, **kwargs)

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> int:
        return self._trial.suggest_int(name + self._suffix, *args, **kwargs)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._trial.suggest_categorical(name + self._suffix, choices)
