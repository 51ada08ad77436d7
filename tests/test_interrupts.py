"""Ctrl-C and SIGTERM at every point of the trial cycle: exit code, one line, nothing RUNNING, resumable.

Each case sends a real signal to this process (``os.kill``) from inside one step of the
cycle, so where it lands does not depend on timing: while a trial's parameters are
sampled, mid-epoch, during validation, inside the storage transactions of Optuna's
bookkeeping, during test evaluation, while the weights are saved, inside ``gc.collect()``
(where a plain KeyboardInterrupt used to be swallowed), between trials, and again while
the stopped run cleans up. Real subprocesses then check the same from outside.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import sys
import weakref

import optuna
import pytest
import sqlalchemy.orm
from optuna.trial import TrialState
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.core import interrupts
from fmnist_search.engine import population
from fmnist_search.search.artifacts import weights as artifacts
from fmnist_search.search.trials import context as objective
from fmnist_search.search.trials import coordination as budget
from fmnist_search.search.trials.coordination import Census, census
from tests.conftest import Lines, cli_process, finish_command

runner = CliRunner()
TINY = ["--epochs", "2", "--train-size", "384", "--val-size", "500", "--batch-size", "96", "--pruner", "none"]


def _kill_on_call(monkeypatch, module, name: str, nth: int = 1, sig: int = signal.SIGINT) -> None:
    """Replace ``module.name`` by a wrapper that signals this process on its ``nth`` call, then goes on."""
    original = getattr(module, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)


def _kill_in_batches(monkeypatch, sig: int) -> None:
    """At the third batch of the first epoch (two steps taken)."""
    original, calls = population.SharedBatches.next_full, {"n": 0}

    def next_full(self):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), sig)
        return original(self)

    monkeypatch.setattr(population.SharedBatches, "next_full", next_full)


def _kill_in_commit(method: str, nth: int = 1):
    def install(monkeypatch, sig: int) -> None:
        """Inside the ``nth`` storage transaction of ``method`` (Optuna's bookkeeping), main thread."""
        import threading

        original = sqlalchemy.orm.Session.commit
        calls = {"n": 0}

        def commit(self):
            if threading.current_thread() is threading.main_thread() and _in_call(method):
                calls["n"] += 1
                if calls["n"] == nth:
                    os.kill(os.getpid(), sig)
            return original(self)

        monkeypatch.setattr(sqlalchemy.orm.Session, "commit", commit)

    return install


def _in_call(name: str) -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


def _kill_in_finalizer(monkeypatch, sig: int) -> None:
    """Inside a finalizer run by Optuna's gc.collect() after a trial: Python swallows an
    exception raised there ("Exception ignored in ..."), the bug this module fixes."""
    import gc

    original = gc.collect

    class Garbage:
        pass

    def collect(*args):
        junk = Garbage()
        weakref.finalize(junk, os.kill, os.getpid(), sig)
        del junk  # the finalizer runs here; the handler's exception is swallowed by Python
        return original(*args)

    monkeypatch.setattr(gc, "collect", collect)


def _kill_twice(monkeypatch, sig: int) -> None:
    """A second signal while the stopped run cleans up."""
    from fmnist_search.app import studies

    original = studies.release

    def release(*args, **kwargs):
        os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    monkeypatch.setattr(studies, "release", release)
    _kill_on_call(monkeypatch, population._stack, "evaluate_all", 1, sig)


def _kill_twice_while_unwinding(monkeypatch, sig: int) -> None:
    """A second signal while the first one's Stop unwinds, before the run's cleanup begins (two
    Ctrl-C 20 ms apart): as the worker looks at what stopped it, before it releases its trials."""
    from fmnist_search.app import studies

    original = studies.causes

    def causes(e):
        if interrupts.received() is not None and not interrupts.cleaning_up():
            os.kill(os.getpid(), sig)
        return original(e)

    monkeypatch.setattr(studies, "causes", causes)
    _kill_on_call(monkeypatch, population._stack, "evaluate_all", 1, sig)


POINTS = {
    "study creation (storage)": _kill_in_commit("set_study_user_attr", 3),
    "trial creation (storage)": _kill_in_commit("_create_new_trial"),
    "sampling": lambda mp, sig: _kill_on_call(mp, objective, "suggest", 1, sig),
    "mid-epoch": _kill_in_batches,
    "validation": lambda mp, sig: _kill_on_call(mp, population._stack, "evaluate_all", 1, sig),
    "epoch report (storage)": _kill_in_commit("write_trials", 2),  # 1: the start record, 2: epoch 1
    "test evaluation": lambda mp, sig: _kill_on_call(mp, objective, "evaluate", 1, sig),
    "weights saving": lambda mp, sig: _kill_on_call(mp, artifacts, "upload_artifact", 1, sig),
    "trial attrs (storage)": _kill_in_commit("tell"),  # the record written as the trial is told (lifecycle.tell)
    "trial state (storage)": _kill_in_commit("set_trial_state_values"),
    "gc finalizer after a trial": _kill_in_finalizer,
    # census: 1st call sets the target, 2nd is trial 0's budget check, 3rd trial 1's
    "between trials (budget check)": lambda mp, sig: _kill_on_call(mp, budget, "census", 3, sig),
    "second signal during cleanup": _kill_twice,
    "second signal while the first unwinds": _kill_twice_while_unwinding,
}


def _counts(url: str) -> tuple[list[TrialState], Census]:
    study = optuna.load_study(study_name="lenet", storage=url)
    return [t.state for t in study.get_trials(deepcopy=False)], census(study)


def _invoke(*args: str):
    return runner.invoke(app, list(args))


# Ctrl-C at every point; SIGTERM (the same path, plus re-queueing) at three points inside a trial.
CASES = [(p, signal.SIGINT) for p in POINTS] + [
    (p, signal.SIGTERM) for p in ("mid-epoch", "validation", "weights saving")
]


@pytest.mark.parametrize(("point", "sig"), CASES, ids=[f"{p}-{signal.Signals(s).name}" for p, s in CASES])
def test_signal_at_any_point_stops_cleanly(point, sig, tmp_path, monkeypatch, real_data):
    url = f"sqlite:///{tmp_path}/i.db"
    with monkeypatch.context() as mp:
        POINTS[point](mp, sig)
        result = _invoke("run", "--model", "lenet", "--trials", "2", "--storage", url, *TINY)
    name = signal.Signals(sig).name
    assert result.exit_code == interrupts.EXIT_CODES[sig], result.output
    assert "Traceback" not in result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith(f"error: interrupted by {name}"), result.output
    states, c = _counts(url)
    assert TrialState.RUNNING not in states, states
    if c.retried:  # a trial was interrupted (not a stop between trials): re-queued, Ctrl-C or SIGTERM
        assert "re-queued" in last and c.waiting == 1 and c.retried == 1, (states, c)
    if point != "study creation (storage)":  # the study exists: the line names the command that finishes it
        assert f"finish the study's 2 trials with: fmnist-search worker --study lenet --storage {url}" in last
    # Resumable: the same store takes more trials (--trials raises the target by 1 over the 2 it
    # has), and the re-queued one is run first.
    target = optuna.load_study(study_name="lenet", storage=url).user_attrs.get("target_trials")
    if target is not None:
        assert target == 2
    result = _invoke("run", "--study", "lenet", "--trials", "1", "--storage", url)
    assert result.exit_code == 0, result.output
    after_states, after = _counts(url)
    assert after.running == 0 and after.waiting == 0
    assert after.counted == (target or c.counted) + 1, (states, after_states)


def test_signal_handlers_are_restored_after_a_command(tmp_path, real_data):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = _invoke("run", "--model", "lenet", "--trials", "1", "--storage", f"sqlite:///{tmp_path}/h.db", *TINY)
    assert result.exit_code == 0, result.output
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert interrupts.received() is None


def test_shielded_defers_and_check_raises_the_recorded_signal():
    with interrupts.handled():
        with interrupts.shielded():
            os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised, inside a storage call
            still_here = True
        assert still_here and interrupts.received() == signal.SIGTERM
        with pytest.raises(interrupts.Stop) as stop:
            interrupts.check()
        assert stop.value.exit_code == 143
        with interrupts.cleaning():
            os.kill(os.getpid(), signal.SIGINT)  # during cleanup: recorded only
            interrupts.check()
    assert interrupts.received() is None  # the handlers and state were restored


def test_stop_is_found_behind_optunas_own_error():
    wrapped = UnboundLocalError("updated_state")  # what Optuna raises in _run_trial's finally
    wrapped.__context__ = interrupts.Stop(signal.SIGTERM)
    assert interrupts.stop_in(wrapped).signum == signal.SIGTERM
    assert interrupts.stop_in(ValueError("x")) is None


# --- from outside: real processes, real signals ---


_cli = functools.partial(cli_process, merge_output=False)


@pytest.mark.slow
@pytest.mark.parametrize(("jobs", "sig"), [("1", signal.SIGTERM), ("2", signal.SIGINT)], ids=["1-SIGTERM", "2-SIGINT"])
def test_a_real_process_stops_on_a_signal(sig, jobs, tmp_path, real_data):
    """`run` after its first trial: one process, or a parent that relays the signal to 2 workers;
    then the command its last line names finishes exactly the trials asked for."""
    url = f"sqlite:///{tmp_path}/p.db"
    proc = _cli("run", "--model", "lenet", "--trials", "8", "--storage", url, "--jobs", jobs, *TINY)
    lines = Lines(proc, "stderr")
    lines.until("trial 0 ")
    proc.send_signal(sig)
    stderr = lines.finish(timeout=120)
    proc.stdout.close()
    assert proc.returncode == interrupts.EXIT_CODES[sig], stderr
    assert f"interrupted by {signal.Signals(sig).name}" in stderr and "Traceback" not in stderr
    # one error line, the run's: its workers say what they re-queued in plain lines
    (error,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert error == stderr.strip().splitlines()[-1] and "--artifacts" not in error  # (the store's own folder)
    if jobs == "2":
        assert re.search(rf"^\[w[01]\] stopped by {signal.Signals(sig).name}", stderr, re.M), stderr
    states, c = _counts(url)
    assert TrialState.RUNNING not in states and c.complete >= 1
    result = _invoke(*finish_command(stderr))
    assert result.exit_code == 0, result.output
    _, after = _counts(url)
    assert after.waiting == after.running == after.fail == 0 and after.counted == 8, after
    assert after.retried == c.retried  # the interrupted trials ran again; none was lost or added
