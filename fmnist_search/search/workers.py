"""Many processes, one study: a shared trial budget, kept exactly, and dead workers recovered.

Every process that works on a study (``run``, ``run --jobs N``, ``worker`` on another
machine) runs the same loop. The study stores its target trial count as a user attr;
``BudgetedStudy.ask`` refuses to create a trial past it, under a lock that spans every
process on this machine (a file lock), or every machine (a PostgreSQL advisory lock or a
MySQL named lock). So N requested trials are N trials, never N + races.

A worker that dies (SIGKILL, OOM, power) leaves its trial RUNNING with a heartbeat that
stops; once it is ``grace_period`` seconds stale, Optuna marks it FAIL and
``requeue.RequeueStale`` queues it again as a WAITING trial with the same params, which the
next free worker runs (from its last checkpoint). A retried FAIL does not count toward the
target; its retry does. A worker that is stopped (Ctrl-C, SIGTERM, a lost store) does the
same for its own trials at once (``release``): FAIL them and re-queue them.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from ..core import interrupts
from ..core.config import cache_root
from ..core.errors import StorageError
from .heartbeats import Heartbeats
from .internals import storage_of, study_id, trial_id
from .record import TrialRecord
from .requeue import requeue
from .retry import Retrier
from .urls import dialect, sqlite_path, store_identity

TARGET_ATTR = "target_trials"  # study user attr: trials the study should reach
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerPlan:
    """One local worker process: its label, extra environment, and device."""

    label: str
    env: dict[str, str]
    device: str | None  # None: the run's --device


def plan_workers(jobs: int, gpus: list[str] | None, workers_per_gpu: int, cpu_count: int) -> list[WorkerPlan]:
    """``--gpus 0,1 --workers-per-gpu 2`` -> 4 workers, each seeing one GPU as cuda:0.

    Workers split the cores between them (OMP_NUM_THREADS, and inductor's compile threads)
    instead of each taking all: GPU workers use them for the host side and torch.compile.
    """
    if gpus:
        plans = [(f"gpu{g}-{k}", {"CUDA_VISIBLE_DEVICES": g}, "cuda") for g in gpus for k in range(workers_per_gpu)]
    else:
        plans = [(f"w{i}", {}, None) for i in range(jobs)]
    threads = str(max(1, cpu_count // len(plans)))
    return [
        WorkerPlan(label, {**env, "OMP_NUM_THREADS": threads, "TORCHINDUCTOR_COMPILE_THREADS": threads}, device)
        for label, env, device in plans
    ]


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
        with self._budget_lock:
            c = census(self)
            if c.waiting == 0 and c.counted >= self.target:
                raise BudgetExhausted
            trial = self._ask(fixed_distributions)
            self.asked.append(trial.number)
            return trial

    def _ask(self, fixed_distributions: dict | None = None) -> optuna.Trial:
        """Optuna's ask, and the trial's first heartbeat at once: a worker killed from here on
        leaves a trial that goes stale and is retried (search/heartbeats.py)."""
        with warnings.catch_warnings():  # heartbeats are ours to run (search/heartbeats.py), not optimize()'s
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = super().ask(fixed_distributions)
        self.heartbeats.hold([trial])
        return trial

    def ask_many(self, k: int, prepare: Callable[[optuna.Trial], T]) -> list[tuple[optuna.Trial, T]]:
        """Up to ``k`` trials at once (retries first), each ``prepare``d (its params sampled)
        before the next is asked, so samplers see the earlier ones as RUNNING (TPE's constant
        liar); all under one hold of the budget lock and one census."""
        with self._budget_lock:
            c = census(self)
            n = min(k, c.waiting + max(self.target - c.counted, 0))
            if n <= 0:
                raise BudgetExhausted
            out = []
            for _ in range(n):
                interrupts.check()
                trial = self._ask()
                self.asked.append(trial.number)
                out.append((trial, prepare(trial)))
            return out


def wait_for_study(
    storage: optuna.storages.BaseStorage, name: str, patience: float, say: Callable[[str], None], poll_s: float = 2.0
) -> optuna.Study:
    """The study ``name`` once it exists with a trial target (``create``/``run`` set one),
    waiting up to ``patience`` seconds: workers may start before the job that creates it."""
    from .study import study_names

    start = time.monotonic()
    said = False
    while True:
        if name in study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            if TARGET_ATTR in study.user_attrs:
                return study
            missing = f"study {name!r} has no trial target; create it with `fmnist-search create` or `run`"
        else:
            missing = f"no study named {name!r} in this storage; create it with `fmnist-search create` or `run`"
        waited = time.monotonic() - start
        if waited >= patience:
            raise StorageError(missing + (f" (waited {waited:.0f} s)" if patience else ""))
        if not said:
            say(f"waiting up to {patience:g} s for study {name!r} to be created")
            said = True
        time.sleep(min(poll_s, max(patience - waited, 0.05)))


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
    objective: Any,
    *,
    timeout: float | None = None,
    callbacks: list[Callable[[optuna.Study, Any], None]] | None = None,
    poll_s: float = 2.0,
    on_wait: Callable[[Census], None] | None = None,
    population: int = 1,
) -> None:
    """Run trials until the study reaches its target (or ``timeout`` seconds pass), one at a
    time or ``population`` at a time (trained as one), each through ``lifecycle.run_trials``.

    When the budget is spent but trials are still RUNNING, wait: they finish, or their
    worker died and they come back as WAITING retries, which this worker then runs.
    """
    with study.heartbeats:
        _work(study, objective, timeout, callbacks, poll_s, on_wait, population)


def _work(
    study: BudgetedStudy,
    objective: Any,
    timeout: float | None,
    callbacks: list[Callable[[optuna.Study, Any], None]] | None,
    poll_s: float,
    on_wait: Callable[[Census], None] | None,
    population: int,
) -> None:
    from .lifecycle import run_trials

    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        interrupts.check()  # a signal whose exception was swallowed (gc, finalizers) stops us here
        _fail_stale(study)  # as Optuna's optimize() does before each trial: dead workers' trials come back
        try:
            run_trials(study, objective, study.ask_many(population, objective.config), callbacks)
            gc.collect()  # as optimize(gc_after_trial=True)
            if getattr(study, "stopped", False):
                return
            continue
        except BudgetExhausted:
            pass
        _fail_stale(study)
        c = census(study)
        if c.waiting:
            continue
        if c.running == 0:
            return
        if on_wait is not None:
            on_wait(c)
        time.sleep(poll_s)


def _fail_stale(study: optuna.Study) -> None:
    """Trials whose heartbeat is stale -> FAIL, and a WAITING retry each (the study's callback)."""
    with warnings.catch_warnings():  # experimental in name only: optimize() calls it per trial
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def release(study: BudgetedStudy, why: str) -> list[str]:
    """After a stop (Ctrl-C, SIGTERM, a lost store): no trial this process took stays RUNNING;
    each is marked FAIL and queued again, so its retry continues from its last checkpoint.
    Returns what it did, one phrase each.

    The interrupted trials are the RUNNING ones this process took, plus the last one taken if
    it is FAIL with the objective's "interrupted: ..." ``fail_reason`` (told before the stop).
    """
    if not study.asked:
        return []
    storage = storage_of(study)
    # One query for the trials still RUNNING (a long-lived worker has taken many), plus the last one.
    running = storage.get_all_trials(study_id(study), deepcopy=False, states=(TrialState.RUNNING,))
    mine = set(study.asked)
    candidates = {trial_id(t): t for t in running if t.number in mine}
    last_id = storage.get_trial_id_from_study_id_trial_number(study_id(study), study.asked[-1])
    last = candidates.get(last_id) or storage.get_trial(last_id)
    if last.state == TrialState.FAIL and (TrialRecord.of(last).fail_reason or "").startswith(interrupts.INTERRUPTED):
        candidates[last_id] = last
    done = []
    for tid, t in sorted(candidates.items(), key=lambda item: item[1].number):
        if t.state == TrialState.RUNNING:
            storage.set_trial_user_attr(tid, "fail_reason", f"{interrupts.INTERRUPTED}: {why}")  # TrialRecord field
            storage.set_trial_state_values(tid, TrialState.FAIL)
        requeue(study, storage.get_trial(tid))
        done.append(t.number)
    return [f"trial {n} is re-queued" for n in done]


# --- locks: one per (store, study) on a server, one per SQLite file; held for the few
# milliseconds of a census + ask ---

_LOCKS: dict[str, Callable[[str, str, Retrier], AbstractContextManager]] = {}


def _register(*dialects: str) -> Callable:
    def deco(fn: Callable[[str, str, Retrier], AbstractContextManager]) -> Callable:
        for d in dialects:
            _LOCKS[d] = fn
        return fn

    return deco


def _key(url: str, study_name: str) -> str:
    """One key per store and study, however the store's URL is spelled (urls.store_identity)."""
    return hashlib.sha256(f"{store_identity(url)}\0{study_name}".encode()).hexdigest()


# A database lock lives as long as the connection that took it: taken on a fresh pooled
# connection (pre-pinged, so one killed by a database restart is replaced), retried like
# any storage call while the database is away; released on the same connection, where a
# connection that died meanwhile has released it already.
# pg_advisory_lock waits as long as it takes (and returns nothing). GET_LOCK waits at most
# its timeout and says 1 (taken), 0 (timed out) or NULL (error); MariaDB reads a negative
# timeout as an error, so "-1 = forever" took no lock there at all: ask again, 5 s at a time.
_SQL = {
    "postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
    "mysql": ("SELECT GET_LOCK(:k, 5)", "SELECT RELEASE_LOCK(:k)"),
}


def _lock_key(url: str, study_name: str) -> int | str:
    if dialect(url) == "postgresql":
        return int(_key(url, study_name)[:15], 16)  # fits PostgreSQL's signed 64-bit lock key
    return f"fmnist-search-{_key(url, study_name)[:40]}"  # MySQL caps lock names at 64 chars


@_register("postgresql", "mysql", "mariadb")
@contextmanager
def _database_lock(url: str, study_name: str, retry: Retrier) -> Iterator[None]:
    from sqlalchemy import exc, text

    take, give = _SQL["postgresql" if dialect(url) == "postgresql" else "mysql"]
    params = {"k": _lock_key(url, study_name)}

    def acquire() -> Any:
        conn = _engine(url).connect()
        try:
            while (got := conn.execute(text(take), params).scalar()) == 0:  # GET_LOCK timed out: again
                interrupts.check()
            if got is None and take.startswith("SELECT GET_LOCK"):
                raise StorageError(f"cannot take the study's budget lock: {take} returned NULL")
            conn.commit()
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return conn

    conn = retry(acquire, "budget lock")
    try:
        yield
    finally:
        try:
            with interrupts.shielded():
                conn.execute(text(give), params)
                conn.commit()
        except exc.DBAPIError:
            conn.invalidate()  # the connection died, and its lock with it
        finally:
            conn.close()


def _file_lock(url: str, study_name: str) -> AbstractContextManager:
    """Beside the SQLite file, where every process and user that opens it can take it (a per-user
    cache folder would give two users two locks); in the cache for an in-memory store."""
    path = sqlite_path(url)
    if path is None:
        root = cache_root() / "locks"
        root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(root / f"{_key(url, study_name)[:32]}.lock"))
    return FileLock(str(path.resolve().with_name(f"{path.name}-budget.lock")), mode=0o666)


_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    with _ENGINES_LOCK:
        if url not in _ENGINES:
            _ENGINES[url] = create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        return _ENGINES[url]


def study_lock(url: str, study_name: str, retry: Retrier | None = None) -> AbstractContextManager:
    """A lock shared by every worker of this study that can reach the same lock service."""
    lock = _LOCKS.get(dialect(url))
    if lock is None:
        return _file_lock(url, study_name)
    retry = retry or Retrier(url)
    return _ReusableLock(lambda: lock(url, study_name, retry))


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
