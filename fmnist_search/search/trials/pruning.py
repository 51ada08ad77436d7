"""Pruning for trials that train in lockstep (a population): every decision at an epoch is
taken against one snapshot, after all of them have reported, so it cannot depend on the
order in which they are checked.

Optuna's pruners decide one trial at a time, which goes wrong for K trials at the same epoch:

- ``MedianPruner`` compares with COMPLETE trials only, so the first K trials of a study
  (all RUNNING together) can never be pruned. Here a trial is compared with the COMPLETE
  trials' values at this epoch *and its population peers'* (both count toward
  ``n_startup_trials``); pruned if its best value is below that median.
- ``SuccessiveHalvingPruner`` records a trial's rung value inside ``prune()``, so the first
  trial checked at a rung competes with fewer values than the last (with none, it always
  passes). Here all peers' rung values are recorded first (the same ``completed_rung_N``
  system attrs Optuna writes, so single-trial workers on the same study see them), then each
  is promoted or pruned against all of them, with Optuna's own promotion rule.
- ``HyperbandPruner``: the same, per bracket (Optuna's bracket of each trial).

A population of one decides exactly as Optuna does (tested).

**Several objectives** (a Pareto front; Optuna's pruners and ``Trial.report`` refuse them): a
trial competes only with the trials that are at least as good as it on every objective but
accuracy (throughput, parameters, latency: measured before training, search/trials/objectives.py).
The same rule, median or halving, then decides on validation accuracy within that set. A
trial that ends below them on accuracy is dominated by one of them, so it is not on the front;
a trial no other one matches on those objectives (the fastest model, the smallest) competes
with none and is never stopped. When the other objectives depend on the model alone, this is
the pruner run per model (plus faster and smaller models); when they vary within a model (a
searched batch size) it still compares only trials that could dominate. With one objective
every trial competes with every other: exactly the rules above.

**MOASHA** (``ParetoHalvingPruner``, ``--pruner moasha``): the multi-objective anchor
(Schmucker et al. 2021, Syne Tune's ``MOASHA``), the same rungs and records as successive
halving, but every trial at a rung competes with every other on all objectives at once: ranked
by non-dominated sorting, a front's ties broken by an epsilon-net, it goes on when its rank is in
the best 1/eta of the rung (``pareto_ranks``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
from optuna.pruners import HyperbandPruner, NopPruner, PercentilePruner, SuccessiveHalvingPruner
from optuna.trial import FrozenTrial, TrialState

from ..store.internals import halving_settings, hyperband_bracket, nondomination_ranks, percentile_settings, trial_id
from .objectives import ACCURACY, CRITERIA, at_least_as_good, measured_now, objectives_of, study_figures

Values = dict[int, dict[int, float]]  # trial number -> {epoch: validation accuracy}
Write = Callable[[list[tuple[int, str, Any]]], None]  # (trial_id, system attr key, value) in one transaction
Competes = Callable[[FrozenTrial, FrozenTrial], bool]  # (other, trial): whether other counts against trial


class ParetoHalvingPruner(SuccessiveHalvingPruner):
    """MOASHA: asynchronous successive halving ranking each rung on every objective (module
    docstring). Rungs at ``min_resource * reduction_factor**k`` epochs, as Optuna's halving; the
    first trial at a rung always goes on. Decided by ``population_prunes`` (Optuna's ``prune``
    would rank accuracy alone)."""

    def __init__(self, min_resource: int = 1, reduction_factor: int = 3) -> None:
        super().__init__(min_resource=min_resource, reduction_factor=reduction_factor)


def population_prunes(
    study: optuna.Study,
    step: int,
    values: Values,
    write: Write,
    objectives: tuple[str, ...] | None = None,
    competes: Competes | None = None,
) -> set[int]:
    """The trial numbers of ``values`` (all reported at ``step``) that the study's pruner stops
    (``objectives``: the study's, when the caller knows them; else read from the study;
    ``competes``: who counts against whom, the objectives' rule unless a caller, such as the
    Pareto benchmark trying other rules, gives its own)."""
    pruner = study.pruner
    objectives = objectives_of(study) if objectives is None else objectives
    figures = study_figures(study) if len(objectives) > 1 else {}  # one figure per network (objectives.rescored)
    if competes is None:
        competes = competitors(objectives, figures)
    for kind, decide in _RULES:
        if isinstance(pruner, kind):
            return decide(pruner, study, step, values, write, competes, objectives, figures)
    # one trial of a single-objective study: any other pruner decides as Optuna asks it, on the stored trial
    if len(values) == 1 and len(study.directions) == 1:
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        return {n for n in values if pruner.prune(study, trials[n])}
    raise ValueError(f"no population rule for {type(pruner).__name__}; use --population 1")


def competitors(objectives: tuple[str, ...], figures: dict[str, float] | None = None) -> Competes:
    """Whether a trial counts against another: always with one objective; with several, when it
    is at least as good on every objective but accuracy (module docstring), on the study's
    current ``figures`` (``study_figures``)."""
    others = tuple(n for n in objectives if n != ACCURACY)
    if not others:
        return lambda other, trial: True

    def competes(other: FrozenTrial, trial: FrozenTrial) -> bool:
        return at_least_as_good(measured_now(other, figures or {}), measured_now(trial, figures or {}), others)

    return competes


def _maximize(study: optuna.Study) -> bool:
    """Whether higher reported values are better: validation accuracy is, in a study of several objectives."""
    return len(study.directions) > 1 or study.direction == optuna.study.StudyDirection.MAXIMIZE


def _none(pruner: Any, study: Any, step: int, values: Values, write: Write, *_: Any) -> set[int]:
    return set()


def _percentile(
    pruner: PercentilePruner, study: Any, step: int, values: Values, write: Write, competes: Competes, *_: Any
) -> set[int]:
    p = percentile_settings(pruner)
    warmup, interval = p["warmup"], p["interval"]
    if step < warmup or (step - warmup) % interval:
        return set()
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    completed = [t for t in trials.values() if t.state == TrialState.COMPLETE]
    maximize = _maximize(study)
    pruned = set()
    for number, own in values.items():
        me = trials[number]
        rivals = [t for t in completed if competes(t, me)]
        finished = [t.intermediate_values[step] for t in rivals if step in t.intermediate_values]
        peers = [
            v[step] for other, v in values.items() if other != number and step in v and competes(trials[other], me)
        ]
        if len(rivals) + len(peers) < max(p["startup"], 1):
            continue
        pool = finished + peers
        if len(pool) < p["min_trials"]:
            continue
        best = np.nanmax(list(own.values())) if maximize else np.nanmin(list(own.values()))
        if math.isnan(best):
            pruned.add(number)
            continue
        q = float(np.nanpercentile(np.array(pool, dtype=float), 100 - p["percentile"] if maximize else p["percentile"]))
        if not math.isnan(q) and (best < q if maximize else best > q):
            pruned.add(number)
    return pruned


def _rung_key(rung: int) -> str:
    return f"completed_rung_{rung}"  # Optuna's SuccessiveHalvingPruner's system attr


def promotable(value: float, competing: list[float], eta: int, maximize: bool) -> bool:
    """Optuna's rule: in the top 1/eta of the rung (the best one while fewer than eta competed)."""
    index = max(len(competing) // eta - 1, 0)
    ranked = sorted(competing)
    return value >= ranked[-(index + 1)] if maximize else value <= ranked[index]


def _reach_rungs(
    p: dict[str, Any], trials: dict[int, FrozenTrial], step: int, values: Values, write: Write
) -> tuple[set[int], dict[int, tuple[str, float]]]:
    """Successive halving's records (Optuna's rungs and ``completed_rung_N`` attrs): the trials of
    ``values`` that reach their next rung at ``step``, with its key and their value, written for
    every worker to see first; and those whose value there is nan (stopped)."""
    stopped, reached, rebuilt = set(), {}, []
    for number, own in values.items():
        t = trials[number]
        rung = next(r for r in range(len(t.system_attrs) + 1) if _rung_key(r) not in t.system_attrs)
        # A retry that resumed from its original's checkpoint passed the rungs before it there: their
        # records are rebuilt from the resumed curve (the same values), not taken at this step.
        while (at := _rung_step(p, rung)) < step and at in own:
            rebuilt.append((trial_id(t), _rung_key(rung), own[at]))
            rung += 1
        if step < _rung_step(p, rung):
            continue
        if math.isnan(own[step]):
            stopped.add(number)
        else:
            reached[number] = (_rung_key(rung), own[step])
    write(rebuilt + [(trial_id(trials[n]), key, value) for n, (key, value) in reached.items()])
    return stopped, reached


def _rung_step(p: dict[str, Any], rung: int) -> int:
    """The epoch at which successive halving's rung ``rung`` is reached."""
    return int(p["min_resource"] * p["reduction_factor"] ** (p["min_early_stopping_rate"] + rung))


def _retried(trials: dict[int, FrozenTrial]) -> set[int]:
    """Trials that failed and were queued again: their retry carries their rungs (``_reach_rungs``)."""
    return {n for t in trials.values() for n in t.system_attrs.get("retry_history", ())}


def _halving(
    pruner: SuccessiveHalvingPruner, study: Any, step: int, values: Values, write: Write, competes: Competes, *_: Any
) -> set[int]:
    p = halving_settings(pruner)
    if p["min_resource"] is None:  # "auto": Optuna estimates it from finished trials; ours set it
        raise ValueError("population pruning needs a SuccessiveHalvingPruner with a min_resource")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    maximize = _maximize(study)
    pruned, reached = _reach_rungs(p, trials, step, values, write)
    retried = _retried(trials)
    for number, (key, value) in reached.items():
        me = trials[number]
        others = [
            t.system_attrs[key]
            for n, t in trials.items()
            if n not in reached and n not in retried and key in t.system_attrs and competes(t, me)
        ]
        competing = others + [
            v for n, (k, v) in reached.items() if k == key and (n == number or competes(trials[n], me))
        ]
        if len(competing) <= p["bootstrap_count"] or not promotable(value, competing, p["reduction_factor"], maximize):
            pruned.add(number)
    return pruned


def _hyperband(
    pruner: HyperbandPruner, study: Any, step: int, values: Values, write: Write, competes: Competes, *_: Any
) -> set[int]:
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    brackets: dict[int, tuple[Any, Any, Values]] = {}
    for number, own in values.items():
        bracket, sha, bracket_study = hyperband_bracket(pruner, study, trials[number])
        brackets.setdefault(bracket, (sha, bracket_study, {}))[2][number] = own
    pruned = set()
    for sha, bracket_study, members in brackets.values():
        pruned |= _halving(sha, bracket_study, step, members, write, competes)
    return pruned


def pareto_ranks(costs: np.ndarray) -> np.ndarray:
    """MOASHA's rank of each row of ``costs`` (one column per objective, each minimised; 0: the
    best): the rows of the first non-dominated front first, then the second front's, and so on;
    within a front, an epsilon-net order: the row best on the first column (accuracy), then
    always the row farthest from those already taken (Clarkson's farthest-first traversal, as
    Syne Tune's ``compute_epsilon_net``). Distances are taken with each column scaled to its
    range (else samples/s alone would decide). The rank of a row is its position in that order
    (Syne Tune's ``NonDominatedPriority`` hands the order itself to code that reads it as ranks)."""
    n = len(costs)
    low, span = costs.min(axis=0), np.ptp(costs, axis=0)
    scaled = (costs - low) / np.where(span > 0, span, 1.0)
    fronts = nondomination_ranks(costs)
    order: list[int] = []
    for front in range(int(fronts.max()) + 1 if n else 0):
        rows = np.flatnonzero(fronts == front)
        points = scaled[rows]
        first = int(np.argmin(points[:, 0]))
        taken, distance = [first], np.linalg.norm(points - points[first], axis=1)
        while len(taken) < len(rows):
            distance[taken] = -1.0  # (ties: the lowest row)
            nxt = int(np.argmax(distance))
            taken.append(nxt)
            distance = np.minimum(distance, np.linalg.norm(points - points[nxt], axis=1))
        order += [int(rows[i]) for i in taken]
    ranks = np.empty(n, dtype=int)
    ranks[order] = np.arange(n)
    return ranks


def _costs(accuracy: float, trial: FrozenTrial, objectives: tuple[str, ...], figures: dict[str, float]) -> list[float]:
    """A trial's point at a rung, each objective as a cost (minimised): its accuracy at the rung and
    what it measured, at the study's current figures (nan when not measured: filled with the rung's worst)."""
    measured = {**measured_now(trial, figures), ACCURACY: accuracy}
    return [(-1.0 if CRITERIA[name].maximize else 1.0) * float(measured.get(name, math.nan)) for name in objectives]


def _pareto_halving(
    pruner: ParetoHalvingPruner,
    study: Any,
    step: int,
    values: Values,
    write: Write,
    competes: Competes,  # (unused: every trial at a rung is ranked against every other, on every objective)
    objectives: tuple[str, ...],
    figures: dict[str, float],
) -> set[int]:
    p = halving_settings(pruner)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    pruned, reached = _reach_rungs(p, trials, step, values, write)
    retried = _retried(trials)
    for number, (key, value) in reached.items():
        # the rung as MOASHA sees it when this trial arrives: the trials recorded there, and its peers
        at_rung = [n for n, t in trials.items() if n not in reached and n not in retried and key in t.system_attrs]
        at_rung += [n for n, (k, _) in reached.items() if k == key and n != number]
        rung_values = {n: trials[n].system_attrs[key] for n in at_rung if n not in reached}
        rung_values |= {n: reached[n][1] for n in at_rung if n in reached}
        rung_values[number] = value
        ranked = sorted(rung_values)  # by trial number: ties go to the earlier trial, whoever is checked
        costs = np.array([_costs(rung_values[n], trials[n], objectives, figures) for n in ranked], dtype=float)
        costs = np.where(np.isnan(costs), np.nanmax(costs, axis=0, initial=0.0), costs)
        if pareto_ranks(costs)[ranked.index(number)] / len(costs) > 1 / p["reduction_factor"]:
            pruned.add(number)
    return pruned


_RULES: list[tuple[type, Callable[..., set[int]]]] = [
    (NopPruner, _none),
    (ParetoHalvingPruner, _pareto_halving),  # (before its base class)
    (HyperbandPruner, _hyperband),
    (SuccessiveHalvingPruner, _halving),
    (PercentilePruner, _percentile),  # MedianPruner is its 50th percentile
]
