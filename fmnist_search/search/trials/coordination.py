"""One coordination point for a shared study: every write that changes what the study will
run passes here, under the study's lock (store/locks.py: one per study inside its store, however
its URL is spelled), so N trials asked for are N trials, never N + races.

- the target: ``raise_target`` (``--trials N``: N more than it already is, never lower) and
  ``set_target`` (``--target N``: the total, idempotent), a study user attr;
- asks: ``BudgetedStudy.ask``/``ask_many``/``ask_more`` create trials only while the target is
  not reached, counting and creating under the lock;
- sampler streams: ``claim_stream`` hands each process its own (a fresh study's first process
  the study's seed), so no two processes, and no resumed run, replay the same draws;
- dead workers: ``fail_stale`` fails trials whose heartbeat is stale and queues one retry each;
- stopped workers: ``release`` fails and re-queues this process's interrupted trials.

``census`` counts a study's trials by the one rule every command uses: a failed trial that was
re-queued counts as retried, and its retry toward the target.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState

from ...core import interrupts
from ..store.heartbeats import Heartbeats
from ..store.internals import set_study_system_attr, storage_of, study_id, study_system_attrs, trial_id
from .requeue import requeue

TARGET_ATTR = "target_trials"  # study user attr: trials the study should reach
STREAMS_ATTR = "sampler_streams"  # study system attr: sampler streams handed out so far
BEAT_ATTR = "heartbeat"  # study system attr: {"interval": s, "grace": s}, one for every worker of the study
T = TypeVar("T")
Shared = Callable[[optuna.Trial], dict[str, Any]]  # a trial -> the params its population shares


@dataclass(frozen=True)
class Census:
    complete: int = 0
    pruned: int = 0
    fail: int = 0  # failed and not retried: diverged trials, crashes
    retried: int = 0  # failed because their worker died, and re-queued
    running: int = 0
    waiting: int = 0

    @property
    def counted(self) -> int:
        """Trials that count toward the target: all but the retried failures."""
        return self.complete + self.pruned + self.fail + self.running + self.waiting


def census(study: optuna.Study) -> Census:
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    counts = dict.fromkeys(("complete", "pruned", "fail", "retried", "running", "waiting"), 0)
    for t in trials:
        if t.state == TrialState.FAIL and t.number in retried:
            counts["retried"] += 1
        else:
            counts[t.state.name.lower()] += 1
    return Census(**counts)


def trials_left(study: optuna.Study) -> int:
    """Trials the study's target still lacks (none are running or waiting for them)."""
    return max(int(study.user_attrs[TARGET_ATTR]) - census(study).counted, 0)


class BudgetExhausted(Exception):
    """The study has (or is running) all the trials it should have."""


class BudgetedStudy(optuna.Study):
    """An Optuna study whose ``ask`` creates a trial only while the target is not reached.

    ``optimize`` calls ``ask`` for each trial, so the check and the creation happen together
    under ``lock``. A WAITING trial (a retry) can always be taken: it adds nothing.
    """

    def __init__(
        self,
        study_name: str,
        storage: optuna.storages.BaseStorage,
        sampler: optuna.samplers.BaseSampler,
        pruner: optuna.pruners.BasePruner,
        lock: AbstractContextManager,
    ) -> None:
        super().__init__(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        self.lock = lock
        self.heartbeats = Heartbeats(storage)  # each trial beats from its ask on (``work`` runs the thread)
        self.asked: list[int] = []  # numbers of the trials this process took, for ``release``
        self.stopped = False  # a sampler asked the study to stop (GridSampler, once its grid is done)

    def stop(self) -> None:
        """What ``Study.stop`` does inside ``optimize``: the worker loop ends after these trials."""
        self.stopped = True

    @property
    def target(self) -> int:
        return int(self.user_attrs[TARGET_ATTR])

    def ask(self, fixed_distributions: dict | None = None) -> optuna.Trial:
        with self.lock:
            c = census(self)
            if c.waiting == 0 and c.counted >= self.target:
                raise BudgetExhausted
            trial = self._ask(fixed_distributions)
            self.asked.append(trial.number)
            return trial

    def _ask(self, fixed_distributions: dict | None = None) -> optuna.Trial:
        """Optuna's ask, and the trial's first heartbeat at once: a worker killed from here on
        leaves a trial that goes stale and is retried (search/store/heartbeats.py)."""
        with warnings.catch_warnings():  # heartbeats are ours to run (search/store/heartbeats.py), not optimize()'s
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = super().ask(fixed_distributions)
        self.heartbeats.hold([trial])
        return trial

    def ask_many(
        self, k: int, prepare: Callable[[optuna.Trial], T], shared: Shared | None = None
    ) -> list[tuple[optuna.Trial, T]]:
        """Up to ``k`` trials at once (retries first), each ``prepare``d (its params sampled)
        before the next is asked, so samplers see the earlier ones as RUNNING (TPE's constant
        liar); all under one hold of the budget lock and one census. ``shared``: the params
        (of the first new trial) that the others take as they are (a population's batch size)."""
        with self.lock:
            c = census(self)
            n = min(k, c.waiting + max(self.target - c.counted, 0))
            if n <= 0:
                raise BudgetExhausted
            out: list[tuple[optuna.Trial, T]] = []
            fixed: dict[str, Any] = {}
            waiting = c.waiting  # Optuna's ask takes these first; a retry keeps its own params
            for _ in range(n):
                interrupts.check()
                out.append(self._ask_prepared(prepare, {} if waiting else fixed))
                if not waiting and shared is not None and not fixed:
                    fixed = shared(out[-1][0])
                waiting = max(waiting - 1, 0)
            return out

    def ask_more(
        self, k: int, prepare: Callable[[optuna.Trial], T], fixed: dict[str, Any]
    ) -> list[tuple[optuna.Trial, T]]:
        """Up to ``k`` new trials (none while a retry waits: the worker's next ask takes it),
        sampled with every result told so far and with ``fixed`` params as they are: a
        population's refills."""
        with self.lock:
            c = census(self)
            if c.waiting:
                return []
            out = []
            for _ in range(min(k, max(self.target - c.counted, 0))):
                interrupts.check()
                out.append(self._ask_prepared(prepare, fixed))
            return out

    def _ask_prepared(self, prepare: Callable[[optuna.Trial], T], fixed: dict[str, Any]) -> tuple[optuna.Trial, T]:
        """One trial asked and prepared, its ``fixed`` params held (Optuna's PartialFixedSampler)."""
        base = self.sampler
        if fixed:
            with warnings.catch_warnings():  # experimental since v2.4 in name only
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.sampler = optuna.samplers.PartialFixedSampler(fixed, base)
        try:
            trial = self._ask()
            self.asked.append(trial.number)
            return trial, prepare(trial)
        finally:
            self.sampler = base


def raise_target(study: optuna.Study, more: int, lock: AbstractContextManager) -> int:
    """Raise the study's target by ``more`` over what it already is (at least the trials it
    counts: a target never falls below them); under the lock, so two raises of N add 2N."""
    with lock:
        counted = census(study).counted
        current = study.user_attrs.get(TARGET_ATTR)
        target = max(int(current), counted) + more if current is not None else counted + more
        study.set_user_attr(TARGET_ATTR, target)
    return target


def set_target(study: optuna.Study, total: int, lock: AbstractContextManager) -> int:
    """Set the study's target to ``total`` trials: idempotent (a restarted `create`, a retried
    Job's, sets the same total again); under the lock, as every target write."""
    with lock:
        study.set_user_attr(TARGET_ATTR, total)
    return total


def claim_stream(study: optuna.Study, lock: AbstractContextManager) -> int:
    """This process's sampler stream: 0 for the first process that works on the study, 1 for
    the next, ... (counted in the store under the lock: two processes started together get two)."""
    with lock:
        n = int(study_system_attrs(study).get(STREAMS_ATTR, 0))
        set_study_system_attr(study, STREAMS_ATTR, n + 1)
    return n


def adopt_heartbeat(study: optuna.Study, storage: Any, lock: AbstractContextManager) -> dict[str, int] | None:
    """The study's heartbeat interval and grace period, which must hold for every worker (one
    worker judges another's trial stale by its own grace period): the first worker stores its
    own, every later one adopts the stored ones (set on ``storage``). Returns the stored values
    when this worker was started with others, else None."""
    mine = {"interval": int(storage.heartbeat_interval), "grace": int(storage.grace_period)}
    with lock:
        stored = study_system_attrs(study).get(BEAT_ATTR)
        if stored is None:
            set_study_system_attr(study, BEAT_ATTR, mine)
            return None
    if stored == mine:
        return None
    storage.heartbeat_interval, storage.grace_period = stored["interval"], stored["grace"]
    return dict(stored)


def stream_seed(seed: int, stream: int) -> int:
    """The sampler seed of stream ``stream``: the study's own seed for the first (a fresh
    single-process study is reproducible), a hash of both for every other. Samplers with one
    seed replay the same draws: two workers would sample the same parameters in lockstep, and a
    resumed study would repeat its first trials."""
    if stream == 0:
        return seed
    return int(hashlib.sha256(f"{seed}/{stream}".encode()).hexdigest()[:8], 16) % 2**31


def fail_stale(study: BudgetedStudy) -> None:
    """Trials whose heartbeat is stale -> FAIL, and one WAITING retry each (the storage's
    stale-trial callback, ``requeue.RequeueStale``): under the lock, so two workers that find
    the same dead trial fail it and queue its retry once."""
    with warnings.catch_warnings(), study.lock:  # experimental in name only: optimize() calls it per trial
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def release(study: BudgetedStudy, why: str) -> list[int]:
    """After a stop (Ctrl-C, SIGTERM, a lost store): no trial this process took stays RUNNING;
    each is marked FAIL and queued again (under the lock), so its retry continues from its last
    checkpoint. Returns the trial numbers re-queued."""
    return requeue_running(study, study.asked, why) if study.asked else []


def requeue_running(study: BudgetedStudy, numbers: list[int], why: str) -> list[int]:
    """Those of trials ``numbers`` still RUNNING: FAIL with ``why``, and one WAITING retry each,
    under the lock (a stale check elsewhere cannot queue a second). Returns the numbers re-queued."""
    storage = storage_of(study)
    mine = set(numbers)
    done = []
    with study.lock:
        # one query for the trials still RUNNING (a long-lived worker has taken many)
        running = storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.RUNNING,))
        for t in sorted((t for t in running if t.number in mine), key=lambda t: t.number):
            tid = trial_id(t)
            storage.set_trial_user_attr(tid, "fail_reason", interrupts.stopped_reason(why))  # TrialRecord field
            storage.set_trial_state_values(tid, TrialState.FAIL)
            requeue(study, storage.get_trial(tid))
            done.append(t.number)
    return done
