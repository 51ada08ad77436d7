"""The objectives a study can optimise: each with its direction and unit, and how it is measured.

``accuracy`` (validation accuracy) is what every trial trains toward, reports each epoch and
is pruned on; every study has it. The others describe the network at the trial's recipe and
are measured before it trains (``measure``): once per study, device name and what they depend
on (``key``), shared through the study (``TrialContext.measure``), so all trials of one model on
one kind of device share one figure. More than one objective
makes the study multi-objective: Optuna keeps its Pareto front (``study.best_trials``), and
pruning compares a trial only with trials at least as good on every other objective
(search/trials/pruning.py). ``core.rules.OBJECTIVE_NAMES`` lists these names (tested).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from ...core.config import TrainConfig
from ...engine.models import create_model, num_params
from ...engine.probes import latency_ms, training_throughput
from ..store import internals

ACCURACY = "accuracy"
MEASURED_ATTR = "measured"  # trial user attr: {objective: value} measured before training (TrialRecord.measured)
SHARED_PREFIX = "measured "  # study system attrs: a network's figure on a kind of device, shared by its workers
FIGURES_ATTR = "figures"  # trial user attr: {objective: the study system attr its figure is read from}


def measured_figure_key(name: str, depends_on: Hashable, device: str) -> str:
    """The study system attr holding objective ``name``'s figure for what it depends on, on ``device``."""
    return f"{SHARED_PREFIX}{name} {depends_on!r} on {device}"


@dataclass(frozen=True)
class Probe:
    """What a measurement may look at: the network's name, the trial's recipe, and the worker
    (its device, training images, teacher)."""

    model: str
    cfg: TrainConfig
    worker: Any  # search.trials.context.TrialContext


@dataclass(frozen=True)
class Criterion:
    direction: str  # "maximize" | "minimize"
    unit: str
    metric: str  # the name Optuna and the dashboard show for it
    help: str
    key: Callable[[str, TrainConfig], Hashable] = lambda model, cfg: model  # what the figure depends on
    measure: Callable[[Probe], float] | None = None  # None: accuracy, measured by training

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


def _throughput(p: Probe) -> float:
    return training_throughput(p.model, p.cfg, p.worker.train, p.worker.teacher(p.cfg))


CRITERIA: dict[str, Criterion] = {
    ACCURACY: Criterion("maximize", "fraction", "val_accuracy", "validation accuracy after the trial's last epoch"),
    "throughput": Criterion(
        "maximize",
        "samples/s",
        "train_samples_per_s",
        "training samples/s of the network alone at the trial's batch size, augmentation and precision, on the "
        "worker's device (engine/probes.py)",
        key=lambda model, cfg: (model, cfg.batch_size, cfg.crop, cfg.flip, cfg.erasing, cfg.distill > 0, cfg.precision),
        measure=_throughput,
    ),
    "params": Criterion(
        "minimize",
        "parameters",
        "parameters",
        "trainable parameters of the network",
        measure=lambda p: float(num_params(create_model(p.model))),
    ),
    "latency": Criterion(
        "minimize",
        "ms",
        "latency_ms",
        "milliseconds to classify one image (batch 1, fp32) on the worker's device",
        measure=lambda p: latency_ms(p.model, p.worker.device),
    ),
}


def objectives_of(study: optuna.Study) -> tuple[str, ...]:
    """The study's objectives, in Optuna's order of its values (older studies: accuracy alone)."""
    return tuple(study.user_attrs.get("objectives") or (ACCURACY,))


def study_figures(study: optuna.Study) -> dict[str, float]:
    """The study's current figure of every network and device (its system attrs under
    ``SHARED_PREFIX``: ``{"value", "load"}``, or a bare number from before loads were kept)."""
    attrs = internals.study_system_attrs(study)
    return {k: float(v["value"] if isinstance(v, dict) else v) for k, v in attrs.items() if k.startswith(SHARED_PREFIX)}


def measured_now(trial: optuna.trial.FrozenTrial, figures: dict[str, float]) -> dict[str, float]:
    """What ``trial`` measured before training, each figure the study's current one (``rescored``)."""
    measured = dict(trial.user_attrs.get(MEASURED_ATTR) or {})
    keys = trial.user_attrs.get(FIGURES_ATTR) or {}
    return {**measured, **{n: figures[k] for n, k in keys.items() if k in figures and n in measured}}


def rescored(
    trial: optuna.trial.FrozenTrial, objectives: tuple[str, ...], figures: dict[str, float]
) -> optuna.trial.FrozenTrial:
    """``trial`` as every reader scores it: each measured objective at the study's current figure
    for its network and device. A figure taken under load is replaced when a better one arrives
    (search/trials/context.py); trials told before that keep the old value in the store (Optuna
    does not rewrite a finished trial), so the front, ``--where``, export, report, plots and
    pruning read them through here and one network has one figure. A trial from before figures
    were named (no ``FIGURES_ATTR``) keeps its own."""
    measured = trial.user_attrs.get(MEASURED_ATTR) or {}
    now = measured_now(trial, figures)
    if now == measured:
        return trial
    out = copy.copy(trial)
    out.user_attrs = {**trial.user_attrs, MEASURED_ATTR: now}
    if trial.values is not None and len(trial.values) == len(objectives):
        out.values = [now.get(n, v) if n != ACCURACY else v for n, v in zip(objectives, trial.values, strict=True)]
    return out


def scored_trials(
    study: optuna.Study, states: tuple[optuna.trial.TrialState, ...] | None = None
) -> list[optuna.trial.FrozenTrial]:
    """The study's trials (those in ``states``), each ``rescored`` on the study's current figures."""
    trials = study.get_trials(deepcopy=False, states=states)
    objectives = objectives_of(study)
    if len(objectives) == 1:
        return trials
    figures = study_figures(study)
    return [rescored(t, objectives, figures) for t in trials]


def directions(objectives: tuple[str, ...]) -> list[str]:
    return [CRITERIA[name].direction for name in objectives]


def metric_names(objectives: tuple[str, ...]) -> list[str]:
    return [CRITERIA[name].metric for name in objectives]


def values_of(trial: optuna.trial.FrozenTrial, objectives: tuple[str, ...]) -> dict[str, float]:
    """A trial's objective values by name: a completed trial's own, else what it measured (its
    last validation accuracy, the figures measured before training); missing ones left out."""
    if trial.values is not None and len(trial.values) == len(objectives):
        return dict(zip(objectives, trial.values, strict=True))
    out = dict(trial.user_attrs.get(MEASURED_ATTR) or {})
    if trial.user_attrs.get("val_accuracy") is not None:
        out[ACCURACY] = trial.user_attrs["val_accuracy"]
    return {k: v for k, v in out.items() if k in objectives}


def at_least_as_good(b: dict[str, float], a: dict[str, float], names: tuple[str, ...]) -> bool:
    """Whether figures ``b`` are as good as ``a``'s or better on each of ``names`` (both measured)."""
    for name in names:
        if name not in a or name not in b:
            return False
        if (b[name] < a[name]) if CRITERIA[name].maximize else (b[name] > a[name]):
            return False
    return True


def hypervolume(points: list[dict[str, float]], objectives: tuple[str, ...], reference: dict[str, float]) -> float:
    """The front's hypervolume: the region of objective space ``points`` dominate, bounded by
    ``reference`` (its units: the product of the objectives'; a point not better than the
    reference on every objective adds nothing)."""
    sign = np.array([-1.0 if CRITERIA[n].maximize else 1.0 for n in objectives])  # Optuna's: all minimised
    ref = sign * np.array([reference[n] for n in objectives])
    losses = np.array([[p[n] for n in objectives] for p in points], dtype=float).reshape(-1, len(objectives)) * sign
    inside = losses[(losses < ref).all(axis=1)]
    return internals.hypervolume(inside, ref) if len(inside) else 0.0
