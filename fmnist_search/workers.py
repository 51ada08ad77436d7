"""Many processes, one study: a shared trial budget, kept exactly, and dead workers recovered.

Every process that works on a study (``run``, ``run --jobs N``, ``worker`` on another
machine) runs the same loop. The study stores its target trial count as a user attr;
``BudgetedStudy.ask`` refuses to create a trial past it, under a lock that spans every
process on this machine (a file lock), or every machine (a PostgreSQL advisory lock or a
MySQL named lock). So N requested trials are N trials, never N + races.

A worker that dies (SIGKILL, OOM, power) leaves its trial RUNNING with a heartbeat that
stops; once it is ``grace_period`` seconds stale, Optuna marks it FAIL and
``RetryHeartbeatStaleTrialCallback`` re-queues it as a WAITING trial with the same
params, which the next free worker runs. A retried FAIL does not count toward the
target; its retry does.
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from .data import cache_root

TARGET_ATTR = "target_trials"  # study user attr: trials the study should reach


@dataclass(frozen=True)
class WorkerPlan:
    """One local worker process: its label, extra environment, and device."""

    label: str
    env: dict[str, str]
    device: str | None  # None: the run's --device


def plan_workers(jobs: int, gpus: list[str] | None, workers_per_gpu: int, cpu_count: int) -> list[WorkerPlan]:
    """``--gpus 0,1 --workers-per-gpu 2`` -> 4 workers, each seeing one GPU as cuda:0.

    CPU workers split the cores between them (OMP_NUM_THREADS) instead of each taking all.
    """
    if gpus:
        return [
            WorkerPlan(f"gpu{g}-{k}", {"CUDA_VISIBLE_DEVICES": g}, "cuda") for g in gpus for k in range(workers_per_gpu)
        ]
    threads = str(max(1, cpu_count // jobs))
    return [WorkerPlan(f"w{i}", {"OMP_NUM_THREADS": threads}, None) for i in range(jobs)]


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

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.fail


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
        self._budget_lock = lock

    @property
    def target(self) -> int:
        return int(self.user_attrs[TARGET_ATTR])

    def ask(self, fixed_distributions: dict | None = None) -> optuna.Trial:
        with self._budget_lock:
            c = census(self)
            if c.waiting == 0 and c.counted >= self.target:
                raise BudgetExhausted
            return super().ask(fixed_distributions)


def worker_seed(seed: int, label: str | None, existing_trials: int) -> int:
    """The sampler seed of one process: the study's seed for a fresh single-process study,
    else mixed with the worker's label and the trials the study already has.

    Samplers with one seed replay the same random draws: two workers would sample the same
    parameters in lockstep, and a resumed study would repeat its first trials.
    """
    if label is None and existing_trials == 0:
        return seed
    mixed = hashlib.sha256(f"{seed}/{label}/{existing_trials}".encode()).hexdigest()
    return int(mixed[:8], 16) % 2**31


def set_target(study: optuna.Study, more: int) -> int:
    """Raise the study's target to what it counts now plus ``more``; return the target."""
    target = census(study).counted + more
    study.set_user_attr(TARGET_ATTR, target)
    return target


def work(
    study: BudgetedStudy,
    objective: Callable[[optuna.Trial], float],
    *,
    timeout: float | None = None,
    catch: tuple[type[Exception], ...] = (),
    callbacks: list[Callable[[optuna.Study, Any], None]] | None = None,
    poll_s: float = 2.0,
    on_wait: Callable[[Census], None] | None = None,
) -> None:
    """Run trials until the study reaches its target (or ``timeout`` seconds pass).

    When the budget is spent but trials are still RUNNING, wait: they finish, or their
    worker died and they come back as WAITING retries, which this worker then runs.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        try:
            study.optimize(objective, n_trials=1, catch=catch, callbacks=callbacks, gc_after_trial=True)
            continue
        except BudgetExhausted:
            pass
        with warnings.catch_warnings():  # experimental in name only: optimize() calls it per trial
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # dead workers' trials -> FAIL + WAITING retry
        c = census(study)
        if c.waiting:
            continue
        if c.running == 0:
            return
        if on_wait is not None:
            on_wait(c)
        time.sleep(poll_s)


# --- locks: one per (storage, study), held for the few milliseconds of a census + ask ---

_LOCKS: dict[str, Callable[[str, str], AbstractContextManager]] = {}


def _register(*dialects: str) -> Callable:
    def deco(fn: Callable[[str, str], AbstractContextManager]) -> Callable:
        for d in dialects:
            _LOCKS[d] = fn
        return fn

    return deco


def _key(url: str, study_name: str) -> str:
    return hashlib.sha256(f"{url}\0{study_name}".encode()).hexdigest()


@_register("postgresql")
@contextmanager
def _pg_advisory_lock(url: str, study_name: str) -> Iterator[None]:
    from sqlalchemy import text

    key = int(_key(url, study_name)[:15], 16)  # fits PostgreSQL's signed 64-bit lock key
    with _engine(url).connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


@_register("mysql", "mariadb")
@contextmanager
def _mysql_named_lock(url: str, study_name: str) -> Iterator[None]:
    from sqlalchemy import text

    name = f"fmnist-search-{_key(url, study_name)[:40]}"  # MySQL caps lock names at 64 chars
    with _engine(url).connect() as conn:
        conn.execute(text("SELECT GET_LOCK(:n, -1)"), {"n": name})
        try:
            yield
        finally:
            conn.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": name})


def _file_lock(url: str, study_name: str) -> AbstractContextManager:
    root = cache_root() / "locks"
    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / f"{_key(url, study_name)[:32]}.lock"))


_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    with _ENGINES_LOCK:
        if url not in _ENGINES:
            _ENGINES[url] = create_engine(url, pool_size=1, max_overflow=0)
        return _ENGINES[url]


def study_lock(url: str, study_name: str) -> AbstractContextManager:
    """A lock shared by every worker of this study that can reach the same lock service."""
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    lock = _LOCKS.get(dialect)
    if lock is None:
        return _file_lock(url, study_name)
    return _ReusableLock(lambda: lock(url, study_name))


class _ReusableLock:
    """Turns a one-shot context-manager factory into a reusable lock object."""

    def __init__(self, factory: Callable[[], AbstractContextManager]) -> None:
        self._factory = factory
        self._held: list[AbstractContextManager] = []

    def __enter__(self) -> None:
        cm = self._factory()
        cm.__enter__()
        self._held.append(cm)

    def __exit__(self, *exc: object) -> None:
        self._held.pop().__exit__(*exc)
