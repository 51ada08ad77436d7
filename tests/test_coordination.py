"""One coordination point for a shared study (search/trials/coordination.py): targets, asks,
sampler streams, stale trials and tie-broken picks, with the races forced by barriers inside the
critical sections (a barrier that no second party reaches breaks after its timeout: the outcome
never depends on timing, only how long a test with the fix takes)."""

from __future__ import annotations

import contextlib
import threading
from contextlib import nullcontext

import optuna
from optuna.trial import TrialState

from fmnist_search.search.results.export import trials_frame
from fmnist_search.search.results.front import front, pick, ranked
from fmnist_search.search.store import internals
from fmnist_search.search.store.internals import trial_id
from fmnist_search.search.store.locks import study_lock
from fmnist_search.search.store.storage import ResilientStorage, make_storage
from fmnist_search.search.study import find_trial
from fmnist_search.search.trials import coordination, pruning
from fmnist_search.search.trials.coordination import (
    TARGET_ATTR,
    BudgetedStudy,
    claim_stream,
    raise_target,
    set_target,
    stream_seed,
)


def _meeting(monkeypatch, module, name, parties=2, timeout=3.0):
    """Make ``module.name`` wait at a barrier for ``parties`` callers (or its timeout) first."""
    original = getattr(module, name)
    barrier = threading.Barrier(parties, timeout=timeout)

    def waiting(*args, **kwargs):
        with contextlib.suppress(threading.BrokenBarrierError):  # the other is held out (by the lock): go on
            barrier.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, waiting)


def _together(*calls):
    """Run ``calls`` in threads at once; their results (an exception is re-raised)."""
    out: list = [None] * len(calls)

    def run(i, call):
        try:
            out[i] = call()
        except BaseException as e:
            out[i] = e

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def _store(tmp_path, name="s"):
    url = f"sqlite:///{tmp_path}/c.db"
    storage = make_storage(url, heartbeat=True, heartbeat_interval=1, grace_period=2)
    optuna.create_study(study_name=name, storage=storage)
    return url, storage


def _budgeted(url, name="s", seed=0):
    storage = make_storage(url, heartbeat=True, heartbeat_interval=1, grace_period=2)
    return BudgetedStudy(
        name, storage, optuna.samplers.RandomSampler(seed), optuna.pruners.NopPruner(), study_lock(url, name)
    )


def test_two_asks_meeting_inside_the_count_make_exactly_the_target(tmp_path, monkeypatch):
    url, storage = _store(tmp_path)
    set_target(optuna.load_study(study_name="s", storage=storage), 1, nullcontext())
    a, b = _budgeted(url), _budgeted(url)
    _meeting(monkeypatch, coordination, "census")
    got = _together(lambda: a.ask(), lambda: b.ask())
    assert sorted(type(g).__name__ for g in got) == ["BudgetExhausted", "Trial"]
    assert len(optuna.load_study(study_name="s", storage=storage).trials) == 1


def test_concurrent_raises_add_up_and_never_lower_the_target(tmp_path, monkeypatch):
    url, storage = _store(tmp_path)
    study = optuna.load_study(study_name="s", storage=storage)
    assert raise_target(study, 40, study_lock(url, "s")) == 40
    assert raise_target(study, 1, study_lock(url, "s")) == 41  # --trials 1 raises by 1, never sets 1
    _meeting(monkeypatch, coordination, "census")
    a, b = (optuna.load_study(study_name="s", storage=make_storage(url)) for _ in range(2))
    _together(lambda: raise_target(a, 2, study_lock(url, "s")), lambda: raise_target(b, 2, study_lock(url, "s")))
    assert study.user_attrs[TARGET_ATTR] == 45  # two raises of 2 add 4


def test_an_absolute_target_is_idempotent(tmp_path):
    url, storage = _store(tmp_path)
    study = optuna.load_study(study_name="s", storage=storage)
    for _ in range(3):  # a restarted `docker compose up`, a retried Job
        assert set_target(study, 7, study_lock(url, "s")) == 7
    assert study.user_attrs[TARGET_ATTR] == 7


def test_processes_started_together_sample_from_their_own_streams(tmp_path, monkeypatch):
    url, _storage = _store(tmp_path)
    _meeting(monkeypatch, coordination, "study_system_attrs")
    studies = [optuna.load_study(study_name="s", storage=make_storage(url)) for _ in range(2)]
    streams = _together(*(lambda s=s: claim_stream(s, study_lock(url, "s")) for s in studies))
    assert sorted(streams) == [0, 1]
    assert claim_stream(studies[0], study_lock(url, "s")) == 2  # a resumed run: a third stream
    assert stream_seed(5, 0) == 5  # the first process of a fresh study: the study's seed, reproducible
    draws = []
    for stream in (0, 1, 2):
        sampler = optuna.samplers.TPESampler(seed=stream_seed(5, stream))
        study = optuna.create_study(sampler=sampler)
        draws.append(study.ask().suggest_float("lr", 0.01, 0.4, log=True))
    assert len(set(draws)) == 3


def _stale_trial(url, storage):
    """A RUNNING trial whose last heartbeat is an hour old (its worker died)."""
    import sqlalchemy

    study = optuna.load_study(study_name="s", storage=storage)
    set_target(study, 1, nullcontext())
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 0.4)})
    storage.record_heartbeat(trial_id(trial))
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')"))
    return trial


def test_two_stale_checks_on_one_dead_trial_queue_one_retry(tmp_path, monkeypatch):
    url, storage = _store(tmp_path)
    dead = _stale_trial(url, storage)
    _meeting(monkeypatch, ResilientStorage, internals.STALE_TRIALS)
    a, b = _budgeted(url), _budgeted(url)
    _together(lambda: coordination.fail_stale(a), lambda: coordination.fail_stale(b))
    trials = optuna.load_study(study_name="s", storage=storage).trials
    assert trials[dead.number].state == TrialState.FAIL
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert len(retries) == 1 and retries[0].system_attrs["retry_history"] == [dead.number]


def _tied_study():
    """Two completed trials with the same validation accuracy: trial 0 after 3 epochs, trial 1 after 2."""
    study = optuna.create_study(direction="maximize")
    for epochs in (3, 2):
        t = study.ask()
        for e in range(1, epochs + 1):
            t.report(0.9, e)
        study.tell(t, 0.9)
    return study


def test_one_ranking_with_an_explicit_tie_break():
    study = _tied_study()
    assert study.best_trial.number == 0  # Optuna's own: database order
    assert pick(study).number == 1  # fewer epochs for the same accuracy
    assert find_trial(study).number == 1
    assert [t.number for t in ranked(study)] == [1, 0]
    assert [t.number for t in front(study)] == [1, 0]
    assert list(trials_frame(study)["trial"]) == [1, 0]


def test_a_resumed_trial_keeps_its_rungs_and_its_original_leaves_the_pool():
    """Successive halving (rungs at epochs 1, 3, 9): a retry that resumed at epoch 4 gets rung 0
    and 1 records rebuilt from its resumed curve (not its epoch-4 value at rung 0), and its
    failed original's values no longer compete."""
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.SuccessiveHalvingPruner(1, 3, 0))
    original = optuna.trial.create_trial(
        state=TrialState.FAIL, system_attrs={"completed_rung_0": 0.5, "completed_rung_1": 0.6}
    )
    study.add_trial(original)
    retry = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"retry_history": [0]})
    study.add_trial(retry)
    trial = study.ask()
    written = []
    curve = {1: 0.5, 2: 0.55, 3: 0.6, 4: 0.7}  # epochs 1-3 resumed from the original's checkpoint
    pruned = pruning.population_prunes(study, 4, {trial.number: curve}, written.extend, ("accuracy",))
    assert pruned == set()
    assert [(k, v) for _, k, v in written] == [("completed_rung_0", 0.5), ("completed_rung_1", 0.6)]
    assert pruning._retried({t.number: t for t in study.get_trials()}) == {0}


def _dropping_after_commit(monkeypatch, name):
    """``RDBStorage.name`` commits, then its connection "drops" once (a transient error): the
    Retrier replays the call, as after a database failover right after a commit."""
    from sqlalchemy.exc import OperationalError

    original = getattr(optuna.storages.RDBStorage, name)
    dropped = []

    def call(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        if not dropped:
            dropped.append(name)
            raise OperationalError("COMMIT", {}, ConnectionResetError("server closed the connection"))
        return result

    monkeypatch.setattr(optuna.storages.RDBStorage, name, call)
    monkeypatch.setattr("fmnist_search.search.store.retry.BACKOFF_S", (0.0, 0.0))
    return dropped


def test_storage_writes_replayed_after_their_commit_happen_once(tmp_path, monkeypatch):
    url, storage = _store(tmp_path)
    study = optuna.load_study(study_name="s", storage=storage)
    trial = study.ask()
    dropped = _dropping_after_commit(monkeypatch, "set_trial_state_values")
    study.tell(trial, 0.5)  # replayed: finds it told, no UpdateFinishedTrialError
    assert dropped and study.trials[0].state == TrialState.COMPLETE and study.trials[0].value == 0.5

    from fmnist_search.search.trials.requeue import requeue

    monkeypatch.undo()
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    dropped = _dropping_after_commit(monkeypatch, "_create_new_trial")  # what Optuna's cache calls
    requeue(study, study.trials[-1])
    assert dropped and [t.system_attrs.get("failed_trial") for t in study.trials if t.state == TrialState.WAITING] == [
        failed.number
    ]  # one retry, not two

    monkeypatch.undo()
    dropped = _dropping_after_commit(monkeypatch, "create_new_study")
    made = optuna.create_study(study_name="t", storage=make_storage(url))
    assert dropped and made.study_name == "t"


def test_every_worker_of_a_study_keeps_its_heartbeat_settings(tmp_path):
    url, _ = _store(tmp_path)
    first = make_storage(url, heartbeat=True, heartbeat_interval=1, grace_period=2)
    later = make_storage(url, heartbeat=True, heartbeat_interval=10, grace_period=60)
    study = optuna.load_study(study_name="s", storage=first)
    assert coordination.adopt_heartbeat(study, first, study_lock(url, "s")) is None  # the first stores its own
    assert coordination.adopt_heartbeat(study, later, study_lock(url, "s")) == {"interval": 1, "grace": 2}
    assert (later.get_heartbeat_interval(), later.grace_period) == (1, 2)  # adopted: one grace period per study
