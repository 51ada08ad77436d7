"""A study's answer: its Pareto front, and the trial a user picks from it.

A single-objective study's front is its best trial. In a multi-objective study the front is
every completed trial no other one beats on all objectives at once, scored on the study's
current figure for each network (``objectives.rescored``: one figure per network and device,
though a trial may have been told an earlier one); ``pick`` takes the most accurate (on validation) completed trial
within a user's floors and ceilings (``--where throughput>=50000``, ``--where params<=100000``),
which is on the front. Test accuracy is only reported, never used to choose.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from ...core.errors import FmnistSearchError, StorageError
from ..trials.objectives import ACCURACY, CRITERIA, objectives_of, scored_trials, values_of

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_CONDITION = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([^\s]+)\s*$")


@dataclass(frozen=True)
class Condition:
    """A floor (``throughput>=50000``) or a ceiling (``params<=100000``) on one objective."""

    name: str
    op: str
    value: float

    def holds(self, values: dict[str, float]) -> bool:
        return self.name in values and _OPS[self.op](values[self.name], self.value)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def parse_where(items: tuple[str, ...] | list[str], objectives: tuple[str, ...]) -> list[Condition]:
    """``["throughput>=5e4"]`` -> conditions on the study's objectives, or a one-line error."""
    out = []
    for item in items:
        m = _CONDITION.match(item)
        value = _number(m.group(3)) if m else None
        if m is None or value is None:
            raise FmnistSearchError(
                f"--where takes NAME>=VALUE or NAME<=VALUE (NAME one of {', '.join(objectives)}), got {item!r}"
            )
        if m.group(1) not in objectives:
            raise FmnistSearchError(
                f"--where {item}: {m.group(1)!r} is not an objective of this study ({', '.join(objectives)})"
            )
        out.append(Condition(m.group(1), m.group(2), value))
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def rank_key(trial: FrozenTrial, objectives: tuple[str, ...]) -> tuple[float, int, int]:
    """The one order of "best" that every command uses (show, evaluate, train --from-study,
    export, report, retention): higher validation accuracy, then fewer epochs (the same accuracy
    for less training), then the earlier trial. Validation accuracy has four decimals on 10,000
    images, so ties happen; Optuna's own ``best_trial`` breaks them by database order."""
    return (-values_of(trial, objectives)[ACCURACY], len(trial.intermediate_values), trial.number)


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The completed trials on the study's Pareto front, best first (``rank_key``): the first front
    of ``ranked``, on the study's current figures (Optuna's ``best_trials`` reads the values as
    told, which an earlier figure of the same network may have scored)."""
    if len(objectives_of(study)) > 1:
        return ranked(study, fronts=1)
    done = ranked(study)  # one objective: every trial at the best value (ties included), as Optuna's
    return [t for t in done if t.values == done[0].values] if done else []


def ranked(study: optuna.Study, limit: int | None = None, fronts: int | None = None) -> list[FrozenTrial]:
    """The completed trials, best first (the first ``limit`` of them, or of its first ``fronts``
    fronts), on the study's current figures (``scored_trials``): by validation accuracy in a
    single-objective study; in a multi-objective one front by front (non-dominated sorting: the
    Pareto front, then the front of the rest, ...), each front most accurate first."""
    import numpy as np

    objectives = objectives_of(study)
    remaining = scored_trials(study, states=(TrialState.COMPLETE,))
    limit = len(remaining) if limit is None else limit
    by_accuracy = functools.partial(sorted, key=lambda t: rank_key(t, objectives))
    if len(objectives) == 1:
        return by_accuracy(remaining)[:limit]
    signs = np.array([-1.0 if d == optuna.study.StudyDirection.MAXIMIZE else 1.0 for d in study.directions])
    out: list[FrozenTrial] = []
    for _ in range(len(remaining) if fronts is None else fronts):
        if not remaining or len(out) >= limit:
            break
        v = np.array([t.values for t in remaining]) * signs  # all minimised
        # j dominates i: no worse on every objective, better on one
        dominated = ((v[:, None, :] <= v[None, :, :]).all(-1) & (v[:, None, :] < v[None, :, :]).any(-1)).any(0)
        out += by_accuracy([t for t, d in zip(remaining, dominated, strict=True) if not d])
        remaining = [t for t, d in zip(remaining, dominated, strict=True) if d]
    return out[:limit]


def accuracy(trial: FrozenTrial, objectives: tuple[str, ...]) -> float | None:
    """A trial's validation accuracy: its objective value when completed, else its last measured."""
    return values_of(trial, objectives).get(ACCURACY)


def pick(study: optuna.Study, where: tuple[str, ...] | list[str] = ()) -> FrozenTrial:
    """The best completed trial (``rank_key``: validation accuracy first) within ``where``."""
    objectives = objectives_of(study)
    conditions = parse_where(where, objectives)
    done = scored_trials(study, states=(TrialState.COMPLETE,))
    if not done:
        raise StorageError(f"study {study.study_name!r} has no completed trial yet")
    fits = [t for t in done if all(c.holds(values_of(t, objectives)) for c in conditions)]
    if not fits:
        limits = " and ".join(str(c) for c in conditions)
        raise StorageError(f"no completed trial of study {study.study_name!r} has {limits}; loosen --where")
    return min(fits, key=lambda t: rank_key(t, objectives))


def best_or_none(study: optuna.Study) -> FrozenTrial | None:
    """``pick(study)``, or None before a trial completes."""
    try:
        return pick(study)
    except StorageError:
        return None


def describe_objectives(objectives: tuple[str, ...]) -> str:
    """``accuracy (max), throughput (max, samples/s)``."""
    return ", ".join(
        f"{n} ({CRITERIA[n].direction[:3]}" + ("" if n == ACCURACY else f", {CRITERIA[n].unit}") + ")"
        for n in objectives
    )
