"""Population trials: a worker asks K trials at once and trains them as one (engine/population.py).

Each trial stays an ordinary Optuna trial: its own sampled params (K asks before any tell;
TPE's ``constant_liar``, on by default in Optuna 5, spreads them out), intermediate values
every epoch, attrs (``TrialRecord``, with ``population`` = K and the population's
``population_throughput``), weights artifact, heartbeat and retry. What a population must
share (batch size, augmentation) splits it: trials are grouped by ``shared_key`` and each
group trains as one population. Trials share one batch order (``data_seed``: the study's
seed plus the first trial's number, recorded in each trial's ``config``).

Store writes are batched (``ResilientStorage.write_trials``): one transaction for all
trials' reports at an epoch, one for the start records, one per finished trial's record.
A pruned or finished model leaves the population; the population shrinks (it is not
refilled) and the worker asks the next K once all have left.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from ..core import interrupts
from ..core.errors import FmnistSearchError, StorageError
from ..engine.population import Census, Member, fit_population, shared_key
from ..engine.train import TrainConfig, build_model
from .objective import RUN_FIELDS, Objective, release_memory, summarize
from .pruning import population_prunes
from .record import TrialRecord
from .storage import backend, write_trials

Callback = Callable[[optuna.Study, Any], None]


class _Slot:
    """One trial of the population: the Optuna trial, its recipe, its record, whether it was told."""

    def __init__(self, trial: optuna.Trial, cfg: TrainConfig, record: TrialRecord) -> None:
        self.trial, self.cfg, self.record = trial, cfg, record
        self.told = False


def run_population(
    study: Any,
    objective: Objective,
    asked: list[tuple[optuna.Trial, TrainConfig]],
    callbacks: list[Callback] | None = None,
) -> None:
    """Train the ``asked`` trials (RUNNING, with their sampled recipes) as populations grouped
    by what they must share."""
    store = study._storage  # each write_trials call below is one transaction
    trials = [trial for trial, _ in asked]
    data_seed = objective.spec.seed + trials[0].number  # one batch order for the population
    slots = [
        _Slot(t, dataclasses.replace(c, data_seed=data_seed), TrialRecord(**objective.extra_attrs)) for t, c in asked
    ]
    with _heartbeats(study, trials):
        try:
            write_trials(
                store, user_attrs={s.trial._trial_id: s.record.attrs() for s in slots}
            )  # who runs them, at the start
            groups: dict[tuple[Any, ...], list[_Slot]] = {}
            for s in slots:
                groups.setdefault(shared_key(s.cfg), []).append(s)
            for group in groups.values():
                _train_group(study, objective, group, store, callbacks or [])
        except (interrupts.Stop, StorageError) as e:
            for s in slots:
                if not s.told:  # left RUNNING: the worker's release() fails (and on SIGTERM re-queues) them
                    s.record.fail_reason = f"{interrupts.INTERRUPTED}: {e}"
            raise
        except torch.OutOfMemoryError:
            why = f"out of device memory with a population of {len(slots)}; use a smaller --population"
            for s in slots:
                if not s.told:
                    s.record.fail_reason = why
                    write_trials(store, user_attrs={s.trial._trial_id: s.record.attrs(*RUN_FIELDS)})
                    study.tell(s.trial, state=TrialState.FAIL)
                    s.told = True
            raise FmnistSearchError(why) from None
        finally:
            untold = {s.trial._trial_id: s.record.attrs(*RUN_FIELDS) for s in slots if not s.told}
            if untold:
                write_trials(store, user_attrs=untold)
            release_memory(objective.device)


def _train_group(study: Any, objective: Objective, group: list[_Slot], store: Any, callbacks: list[Callback]) -> None:
    spec, device = objective.spec, objective.device
    modules = [build_model(spec.model, s.cfg.seed, device).module for s in group]
    for s, module in zip(group, modules, strict=True):
        s.record = objective.describe(s.record, s.cfg, module, population=len(group))
    members = [Member(s.cfg) for s in group]
    census = Census()  # filled epoch by epoch: pruned trials record it too

    def tell(i: int, state: TrialState, value: float | None = None) -> None:
        s = group[i]
        summarize(members[i].result, s.record)
        s.record.population_throughput = census.throughput
        write_trials(store, user_attrs={s.trial._trial_id: s.record.attrs(*RUN_FIELDS)})
        frozen = study.tell(s.trial, state=state, values=value)
        s.told = True
        for cb in callbacks:
            cb(study, frozen)

    def on_epoch_end(epoch: int, metrics: dict[int, Any]) -> set[int]:
        interrupts.check()  # a signal swallowed mid-epoch stops the population here
        for i, m in enumerate(members):
            if m.status == "diverged" and not group[i].told:
                group[i].record.fail_reason = m.error
                tell(i, TrialState.FAIL)
        write_trials(
            store, intermediate=[(group[i].trial._trial_id, epoch, m.val_accuracy) for i, m in metrics.items()]
        )
        if objective.on_epoch is not None:
            for i, m in metrics.items():
                objective.on_epoch(group[i].trial.number, m)
        values = {group[i].trial.number: _history(members[i]) for i in metrics}
        pruned = population_prunes(study, epoch, values, lambda items: write_trials(store, system_attrs=items))
        stop = {i for i in metrics if group[i].trial.number in pruned}
        for i in sorted(stop):
            tell(i, TrialState.PRUNED)
        interrupts.check()  # one deferred while the reports were written
        return stop

    try:
        fit_population(modules, members, objective.train, objective.val, on_epoch_end, objective.teacher, census)
    finally:  # an interrupt too: every trial keeps what it measured
        for s, m in zip(group, members, strict=True):
            if not s.told:
                summarize(m.result, s.record)
    for i, m in enumerate(members):
        if m.status == "diverged" and not group[i].told:
            group[i].record.fail_reason = m.error
            tell(i, TrialState.FAIL)
        elif m.status == "done":
            assert m.module is not None
            objective.finish(group[i].trial, group[i].record, m.module, m.module, m.cfg)
            tell(i, TrialState.COMPLETE, m.result.history[-1].val_accuracy)
            m.module = None  # its weights are stored; free them


def _history(member: Member) -> dict[int, float]:
    return {m.epoch: m.val_accuracy for m in member.result.history}


@contextmanager
def _heartbeats(study: Any, trials: list[optuna.Trial]) -> Iterator[None]:
    """What Optuna's heartbeat thread does for one trial, for all of them in one transaction per beat:
    a worker killed mid-population leaves trials whose heartbeat goes stale, and they are retried."""
    store = backend(study._storage)
    interval = store.get_heartbeat_interval() if store is not None else None
    if store is None or interval is None:
        yield
        return
    ids = [t._trial_id for t in trials]
    stop = threading.Event()

    def beat() -> None:
        while True:
            store.record_heartbeats(ids)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name="population-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
