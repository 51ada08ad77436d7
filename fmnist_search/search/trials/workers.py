"""The worker loop: many processes, one study, dead workers recovered.

Every process that works on a study (``run``, ``run --jobs N``, ``worker`` on another
machine) runs the same loop (``work``): ask trials within the study's budget
(``coordination``: every write that changes what a shared study runs), train them through the
trial lifecycle, and once the budget is handed out, wait for the running ones (whose retries
it may still run).

A worker that dies (SIGKILL, OOM, power) leaves its trial RUNNING with a heartbeat that
stops; once it is ``grace_period`` seconds stale, Optuna marks it FAIL and
``requeue.RequeueStale`` queues it again as a WAITING trial with the same params, which the
next free worker runs (from its last checkpoint). A retried FAIL does not count toward the
target; its retry does. A worker that is stopped (Ctrl-C, SIGTERM, a lost store) does the
same for its own trials at once (``coordination.release``): FAIL them and re-queue them.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna

from ...core import interrupts
from ...core.errors import StorageError
from ..store.storage import NO_STORE
from .coordination import TARGET_ATTR, BudgetedStudy, BudgetExhausted, Census, census, fail_stale
from .space import shared_params

T = TypeVar("T")


def wait_for_study(
    storage: optuna.storages.BaseStorage, name: str, patience: float, say: Callable[[str], None], poll_s: float = 2.0
) -> optuna.Study:
    """The study ``name`` once it exists with a trial target (``create``/``run`` set one),
    waiting up to ``patience`` seconds: workers may start before the job that creates it."""
    from ..study import study_names

    def ready() -> tuple[optuna.Study | None, str]:
        if name not in study_names(storage):
            return None, f"no study named {name!r} in this storage; create it with `fmnist-search create` or `run`"
        study = optuna.load_study(study_name=name, storage=storage)
        if TARGET_ATTR not in study.user_attrs:
            return None, f"study {name!r} has no trial target; create it with `fmnist-search create` or `run`"
        return study, ""

    return _waited(ready, f"study {name!r} to be created", patience, say, poll_s)


def wait_for_store(path: Path, patience: float, say: Callable[[str], None], poll_s: float = 2.0) -> None:
    """A SQLite store file that is not there yet, waited for up to ``patience`` seconds and never
    created here: a worker joins a study, so the file comes from the `create` or `run` that makes it."""

    def ready() -> tuple[bool | None, str]:
        return (True, "") if path.is_file() else (None, f"no study store at {path.absolute()}: {NO_STORE}")

    _waited(ready, f"{path} to be created", patience, say, poll_s)


def _waited(
    ready: Callable[[], tuple[T | None, str]], what: str, patience: float, say: Callable[[str], None], poll_s: float
) -> T:
    """``ready()``'s value once it has one, polling every ``poll_s`` seconds for up to ``patience``;
    its reason as a StorageError after that."""
    start = time.monotonic()
    said = False
    while True:
        value, missing = ready()
        if value is not None:
            return value
        waited = time.monotonic() - start
        if waited >= patience:
            raise StorageError(missing + (f" (waited {waited:.0f} s)" if patience else ""))
        if not said:
            say(f"waiting up to {patience:g} s for {what}")
            said = True
        time.sleep(min(poll_s, max(patience - waited, 0.05)))


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
    time or ``population`` at a time (trained as one, its freed rows refilled with new trials
    until the budget is handed out), each through ``lifecycle.run_trials``.

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

    def more(n: int, fixed: dict[str, Any]) -> list[tuple[optuna.Trial, Any]]:
        """A population's refills: new trials while the budget, the time and the sampler allow."""
        if (deadline is not None and time.monotonic() >= deadline) or study.stopped:
            return []
        return study.ask_more(n, objective.config, fixed)

    while deadline is None or time.monotonic() < deadline:
        interrupts.check()  # a signal whose exception was swallowed (gc, finalizers) stops us here
        fail_stale(study)  # as Optuna's optimize() does before each trial: dead workers' trials come back
        try:
            asked = study.ask_many(population, objective.config, shared_params)
            run_trials(study, objective, asked, callbacks, more if population > 1 else None)
            gc.collect()  # as optimize(gc_after_trial=True)
            if getattr(study, "stopped", False):
                return
            continue
        except BudgetExhausted:
            pass
        fail_stale(study)
        c = census(study)
        if c.waiting:
            continue
        if c.running == 0:
            return
        if on_wait is not None:
            on_wait(c)
        time.sleep(poll_s)
