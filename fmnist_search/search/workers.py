"""The worker loop: many processes, one study, dead workers recovered.

Every process that works on a study (``run``, ``run --jobs N``, ``worker`` on another
machine) runs the same loop (``work``): ask trials within the study's budget
(search/budget.py), train them through the trial lifecycle, and once the budget is handed
out, wait for the running ones (whose retries it may still run).

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
import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState

from ..core import interrupts
from ..core.errors import StorageError
from .budget import TARGET_ATTR, BudgetedStudy, BudgetExhausted, Census, census
from .internals import storage_of, study_id, trial_id
from .record import TrialRecord
from .requeue import requeue
from .space import shared_params


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
        _fail_stale(study)  # as Optuna's optimize() does before each trial: dead workers' trials come back
        try:
            asked = study.ask_many(population, objective.config, shared_params)
            run_trials(study, objective, asked, callbacks, more if population > 1 else None)
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
            storage.set_trial_user_attr(tid, "fail_reason", interrupts.stopped_reason(why))  # TrialRecord field
            storage.set_trial_state_values(tid, TrialState.FAIL)
        requeue(study, storage.get_trial(tid))
        done.append(t.number)
    return [f"trial {n} is re-queued" for n in done]
