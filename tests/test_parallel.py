"""Many processes on one study: exact trial counts, dead workers recovered, real PostgreSQL."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from fmnist_search.app.processes import plan_workers
from fmnist_search.cli import app
from fmnist_search.search.trials.coordination import census
from tests.conftest import cli_process

TINY = ["--epochs", "1", "--train-size", "1024", "--val-size", "1000", "--batch-size", "128"]
runner = CliRunner()


_cli = cli_process


def assert_consistent(url: str, study: str, target: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``target`` counted trials, all finished, unique numbers, unique params."""
    s = optuna.load_study(study_name=study, storage=url)
    trials = s.get_trials(deepcopy=False)
    c = census(s)
    assert c.running == 0 and c.waiting == 0, c
    assert c.counted == target, c
    assert len({t.number for t in trials}) == len(trials)
    fresh = [t for t in trials if "retry_history" not in t.system_attrs and t.state != TrialState.FAIL]
    assert len({t.params["lr"] for t in fresh}) == len(fresh), "two workers sampled the same lr"
    return trials


def test_plan_one_worker_per_gpu_and_packing():
    plans = plan_workers(1, ["0", "1"], 2, cpu_count=16)
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "0", "1", "1"]
    assert all(p.device == "cuda" for p in plans)
    assert len({p.label for p in plans}) == 4
    # GPU workers share the cores too (host side, torch.compile's builds): 16 cores / 4 workers.
    assert all(p.env["OMP_NUM_THREADS"] == p.env["TORCHINDUCTOR_COMPILE_THREADS"] == "4" for p in plans)
    cpu = plan_workers(4, None, 1, cpu_count=8)
    assert [p.env for p in cpu] == [{"OMP_NUM_THREADS": "2", "TORCHINDUCTOR_COMPILE_THREADS": "2"}] * 4
    assert all(p.device is None for p in cpu)


@pytest.mark.slow
def test_jobs_on_the_default_sqlite_store(tmp_path, monkeypatch, real_data):
    """`run --jobs 2` on the default SQLite file: exactly the trials asked for, no lock errors."""
    monkeypatch.chdir(tmp_path)
    proc = _cli("run", "--model", "lenet", "--trials", "6", "--jobs", "2", *TINY, cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "database is locked" not in out and "Traceback" not in out
    trials = assert_consistent("sqlite:///studies/fmnist.db", "lenet", 6)
    assert "[w0] study 'lenet'" in out and "[w1] study 'lenet'" in out  # both workers joined
    assert {t.user_attrs["worker"] for t in trials} <= {"w0", "w1"}  # who ran how many is up to timing
    # A second run adds exactly its trials again.
    proc = _cli("run", "--study", "lenet", "--trials", "4", "--jobs", "2", cwd=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert_consistent("sqlite:///studies/fmnist.db", "lenet", 10)


@pytest.mark.slow
def test_gpus_assign_one_visible_device_per_worker(tmp_path, real_data):
    """--gpus sets CUDA_VISIBLE_DEVICES per worker (checked on the CPU: --device cpu wins)."""
    url = f"sqlite:///{tmp_path}/g.db"
    args = ["--trials", "4", "--gpus", "0,1", "--device", "cpu", "--storage", url]
    proc = _cli("run", "--model", "lenet", *args, *TINY)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    trials = assert_consistent(url, "lenet", 4)
    assert {(t.user_attrs["worker"], t.user_attrs["gpu"]) for t in trials} <= {("gpu0-0", "0"), ("gpu1-0", "1")}
    for gpu in ("0", "1"):  # each worker saw only its GPU
        assert re.search(rf"\[gpu{gpu}-0\] study 'lenet'.*CUDA_VISIBLE_DEVICES={gpu}\)", out), out


def test_gpu_flag_errors():
    assert "not both" in runner.invoke(app, ["run", "--model", "lenet", "--jobs", "2", "--gpus", "0"]).output
    assert "needs --gpus" in runner.invoke(app, ["run", "--model", "lenet", "--workers-per-gpu", "2"]).output
    result = runner.invoke(app, ["run", "--model", "lenet", "--gpus", "a,b"])
    assert result.exit_code == 2 and "comma-separated GPU numbers" in result.output


@pytest.mark.slow
def test_sigkilled_worker_trial_is_failed_and_retried(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/k.db"
    beat = ["--heartbeat-interval", "1", "--grace-period", "3"]
    result = runner.invoke(
        app,
        [
            "create",
            "--model",
            "lenet",
            "--trials",
            "6",
            "--storage",
            url,
            "--pruner",
            "none",
            "--epochs",
            "3",
            "--train-size",
            "4096",
            "--val-size",
            "1000",
        ],
    )
    assert result.exit_code == 0, result.output
    victim = _cli("worker", "--study", "lenet", "--storage", url, "--label", "victim", "--no-bars", *beat)
    study = optuna.load_study(study_name="lenet", storage=url)

    def victims_running() -> list:  # with a checkpoint: the retry must continue from it
        return [
            t
            for t in study.get_trials(states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker") == "victim" and t.user_attrs.get("checkpoint")
        ]

    # Killed mid-trial by construction, however fast the machine: the victim is frozen (SIGSTOP)
    # once it runs a trial past its first epoch, and killed only if that trial is still RUNNING
    # while it is frozen.
    deadline = time.monotonic() + 120
    running = []
    while not running and time.monotonic() < deadline and victim.poll() is None:
        if victims_running():
            victim.send_signal(signal.SIGSTOP)
            running = victims_running()  # frozen now: this trial cannot finish any more
            if not running:
                victim.send_signal(signal.SIGCONT)  # it finished in between: catch the next one
        time.sleep(0.05)  # a poll interval under a deadline
    assert running, "the victim was never caught mid-trial"
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    survivor = _cli("worker", "--study", "lenet", "--storage", url, "--label", "survivor", "--no-bars", *beat)
    out, _ = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, out
    trials = assert_consistent(url, "lenet", 6)
    killed = next(t for t in trials if t.number == running[0].number)
    assert killed.state == TrialState.FAIL
    retry = next(t for t in trials if killed.number in t.system_attrs.get("retry_history", ()))
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params
    assert retry.user_attrs["worker"] == "survivor"
    # It continued from the killed trial's last checkpoint, found through the heartbeat retry.
    epoch = killed.user_attrs["checkpoint"]["epoch"]
    assert retry.user_attrs["resumed_from"] == {"trial": killed.number, "epoch": epoch}
    assert sorted(retry.intermediate_values) == [1, 2, 3]


# --- a real PostgreSQL server (conftest.postgres_url) ---


def test_four_workers_on_a_database_server(database_url, real_data):
    """PostgreSQL, then MariaDB: 4 worker processes, exactly the trials asked for."""
    result = runner.invoke(app, ["create", "--model", "lenet", "--trials", "12", "--storage", database_url, *TINY])
    assert result.exit_code == 0, result.output
    assert "s3cret-pw" not in result.output
    workers = [
        _cli("worker", "--study", "lenet", "--label", f"w{i}", "--no-bars", env={"FMNIST_STORAGE": database_url})
        for i in range(4)
    ]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    for w, out in zip(workers, outs, strict=True):
        assert w.returncode == 0, out
        assert "s3cret-pw" not in out
    assert "127.0.0.1" in outs[0] and "fmnist:***@" in outs[0]  # the masked URL is what they print
    trials = assert_consistent(database_url, "lenet", 12)
    assert len(trials) == 12
    assert {t.user_attrs["worker"] for t in trials} <= {"w0", "w1", "w2", "w3"}  # who ran how many is up to timing


def test_passwords_are_masked_in_every_message(postgres_url):
    bad = postgres_url.rsplit("/", 1)[0] + "/no_such_db"
    for args in (["studies", "--storage", bad], ["export", "--study", "x", "--storage", bad]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and "s3cret-pw" not in result.output
        assert "fmnist:***@127.0.0.1" in result.output
    result = runner.invoke(app, ["studies", "--storage", postgres_url])  # no study there yet: nothing created
    assert result.exit_code == 2 and "s3cret-pw" not in result.output and "fmnist:***@127.0.0.1" in result.output
    assert "(its database has no Optuna tables)" in result.output
    assert (
        runner.invoke(app, ["create", "--model", "lenet", "--study", "masked", "--storage", postgres_url]).exit_code
        == 0
    )
    result = runner.invoke(app, ["studies", "--storage", postgres_url])
    assert result.exit_code == 0 and "s3cret-pw" not in result.output and "masked" in result.output


def test_the_study_lock_is_really_held_on_the_database_server(database_url):
    """While one worker holds a study's lock, the server says it is taken; after, free.
    (MariaDB reads GET_LOCK's "-1 = forever" as an error: no lock was taken at all.)"""
    from sqlalchemy import create_engine, text

    from fmnist_search.search.store.locks import _server_key, study_lock

    postgres = database_url.startswith("postgresql")
    probe = "SELECT pg_try_advisory_lock(:k)" if postgres else "SELECT IS_FREE_LOCK(:k)"
    other = create_engine(database_url).connect()
    key = {"k": _server_key(other, "postgresql" if postgres else "mysql", "s")}
    try:
        with study_lock(database_url, "s"):
            assert other.execute(text(probe), key).scalar() in (False, 0)  # taken by the worker
        assert other.execute(text(probe), key).scalar() in (True, 1)  # released
        if postgres:
            other.execute(text("SELECT pg_advisory_unlock(:k)"), key)
    finally:
        other.close()


def test_one_study_lock_however_the_server_is_spelled_and_a_bounded_wait(postgres_url):
    """`localhost` and `127.0.0.1` name one PostgreSQL server: one lock, not two. A worker that
    cannot take it gives up after its patience with one line (a frozen holder stalls no one)."""
    from fmnist_search.core.errors import StorageError
    from fmnist_search.search.store.locks import study_lock

    assert "127.0.0.1" in postgres_url or "localhost" in postgres_url
    other = (
        postgres_url.replace("127.0.0.1", "localhost")
        if "127.0.0.1" in postgres_url
        else postgres_url.replace("localhost", "127.0.0.1")
    )
    with (
        study_lock(postgres_url, "s"),
        pytest.raises(StorageError, match="locked by another worker"),
        study_lock(other, "s", patience=0),
    ):
        pass
    with study_lock(other, "s", patience=0):  # free again
        pass


# --- no trial without a heartbeat: a worker frozen (SIGSTOP) and killed right after its ask ---

_FROZEN = """
import os, signal, sys
from fmnist_search.search.store import heartbeats
from fmnist_search.search.trials import coordination as budget
if sys.argv[1] == "after-ask":  # its trial asked and its first heartbeat recorded, nothing loaded yet
    ask_many = budget.BudgetedStudy.ask_many
    def frozen(self, *args, **kwargs):
        asked = ask_many(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGSTOP)
        return asked
    budget.BudgetedStudy.ask_many = frozen
else:  # its trial created, its first heartbeat not yet recorded
    heartbeats.Heartbeats.hold = lambda self, trials: os.kill(os.getpid(), signal.SIGSTOP)
from fmnist_search.cli import app
app(sys.argv[2:], prog_name="fmnist-search")
"""


def _wait_until_stopped(proc, timeout: float = 120) -> None:
    """Until the kernel says ``proc`` is stopped (state T), under a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return
        time.sleep(0.05)
    raise AssertionError(f"the worker never froze (exit {proc.poll()})")


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-ask", "before-first-beat"])
def test_a_worker_killed_right_after_its_ask_leaves_a_trial_that_is_retried(tmp_path, real_data, point):
    url = f"sqlite:///{tmp_path}/f.db"
    beat = ["--heartbeat-interval", "1", "--grace-period", "2"]
    result = runner.invoke(app, ["create", "--model", "lenet", "--trials", "2", "--storage", url, *TINY])
    assert result.exit_code == 0, result.output
    victim = subprocess.Popen(
        [sys.executable, "-c", _FROZEN, point, "worker", "--study", "lenet", "--storage", url, "--no-bars", *beat],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    _wait_until_stopped(victim)
    victim.kill()
    victim.communicate(timeout=30)
    study = optuna.load_study(study_name="lenet", storage=url)
    assert [t.state for t in study.trials] == [TrialState.RUNNING]  # asked, never trained

    result = runner.invoke(app, ["worker", "--study", "lenet", "--storage", url, "--no-bars", *beat])
    assert result.exit_code == 0, result.output
    trials = assert_consistent(url, "lenet", 2)
    assert trials[0].state == TrialState.FAIL
    retry = next(t for t in trials if 0 in t.system_attrs.get("retry_history", ()))
    assert retry.state == TrialState.COMPLETE
    # killed after its params were sampled: the retry runs them; before: it samples its own
    assert retry.params == trials[0].params if point == "after-ask" else not trials[0].params


def test_one_study_lock_per_sqlite_file_however_it_is_spelled(tmp_path, monkeypatch):
    from fmnist_search.search.store.locks import _file_lock

    monkeypatch.chdir(tmp_path)
    relative, absolute = "sqlite:///studies/s.db", f"sqlite:///{tmp_path}/studies/./s.db"
    assert (
        _file_lock(relative, "x").lock_file
        == _file_lock(absolute, "x").lock_file
        == str(tmp_path / "studies" / "s.db-budget.lock")
    )  # beside the file: every user of the store takes the same lock


@pytest.mark.slow
def test_workers_naming_one_sqlite_file_relatively_and_absolutely_make_exactly_n_trials(tmp_path, real_data):
    absolute = f"sqlite:///{tmp_path}/one.db"
    result = runner.invoke(app, ["create", "--model", "lenet", "--trials", "6", "--storage", absolute, *TINY])
    assert result.exit_code == 0, result.output
    (tmp_path / "elsewhere").mkdir()
    spellings = [
        (absolute, tmp_path / "elsewhere"),
        ("sqlite:///one.db", tmp_path),
        ("sqlite:///../one.db", tmp_path / "elsewhere"),
    ]
    procs = [
        _cli("worker", "--study", "lenet", "--storage", url, "--no-bars", "--artifacts", str(tmp_path / "art"), cwd=cwd)
        for url, cwd in spellings
    ]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    assert_consistent(absolute, "lenet", 6)


# --- one coordination point: processes started together, a frozen lock holder, a paused worker ---


@pytest.mark.slow
def test_two_unlabelled_runs_started_together_add_up_and_sample_their_own_values(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/two.db"
    procs = [_cli("run", "--model", "lenet", "--trials", "1", "--storage", url, "--no-bars", *TINY) for _ in range(2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0 and "Traceback" not in out, out
    study = optuna.load_study(study_name="lenet", storage=url)
    assert study.user_attrs["target_trials"] == 2  # two raises of 1, not one target of 1 twice
    trials = assert_consistent(url, "lenet", 2)  # and two different lrs: each process its own stream
    assert len({t.params["lr"] for t in trials}) == 2


@pytest.mark.slow
def test_a_worker_waiting_on_a_frozen_lock_holder_stops_at_sigterm(postgres_url, real_data):
    """The study's lock held by a process that froze: a worker waiting for it answers SIGTERM
    (exit 143, one line) instead of waiting for ever inside a shielded call."""
    from sqlalchemy import create_engine, text

    from fmnist_search.search.store.locks import _server_key

    study = "frozen"
    created = runner.invoke(app, ["create", "--model", "lenet", "--study", study, "--storage", postgres_url, *TINY])
    assert created.exit_code == 0, created.output
    engine = create_engine(postgres_url)
    holder, probe = engine.connect(), engine.connect()
    # the frozen holder: the study's lock on a session the server never ends for idling (however
    # long the worker takes to start), so the outcome does not depend on timing
    holder.execute(text("SET idle_session_timeout = 0"))
    key = {"k": _server_key(holder, "postgresql", study)}
    assert holder.execute(text("SELECT pg_try_advisory_lock(:k)"), key).scalar()
    holder.commit()
    mine = holder.execute(text("SELECT pg_backend_pid()")).scalar()
    worker = _cli("worker", "--study", study, "--storage", postgres_url, "--no-bars")
    try:
        deadline = time.monotonic() + 600
        while True:  # until the worker's session has tried the lock (its query text says so)
            tried = probe.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE query LIKE 'SELECT pg_try_advisory_lock%' AND pid <> :p"
                ),
                {"p": mine},
            ).scalar()
            probe.rollback()
            if tried:
                break
            if worker.poll() is not None or time.monotonic() > deadline:
                worker.kill()
                pytest.fail(f"the worker never waited for the lock: {worker.communicate()[0]}")
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
        holder.close()
        probe.close()
    assert worker.returncode == 143, out
    assert "Traceback" not in out and out.strip().splitlines()[-1].startswith("error: interrupted by SIGTERM"), out


_PAUSED = """
import os, signal, sys
from fmnist_search.search.trials import lifecycle
prunes = lifecycle.population_prunes
def paused(*args, **kwargs):  # after its first epoch's reports: the worker is paused (a VM migrated...)
    if not getattr(paused, "done", False):
        paused.done = True
        os.kill(os.getpid(), signal.SIGSTOP)
    return prunes(*args, **kwargs)
lifecycle.population_prunes = paused
from fmnist_search.cli import app
app(sys.argv[1:], prog_name="fmnist-search")
"""


@pytest.mark.slow
def test_a_paused_worker_whose_trial_was_taken_over_drops_it_and_goes_on(tmp_path, real_data):
    from fmnist_search.search.store.storage import make_storage
    from fmnist_search.search.trials.coordination import BudgetedStudy, fail_stale

    url = f"sqlite:///{tmp_path}/p.db"
    beat = ["--heartbeat-interval", "1", "--grace-period", "2"]
    tiny = ["--epochs", "2", *TINY[2:]]
    assert runner.invoke(app, ["create", "--model", "lenet", "--trials", "1", "--storage", url, *tiny]).exit_code == 0
    paused = subprocess.Popen(
        [sys.executable, "-c", _PAUSED, "worker", "--study", "lenet", "--storage", url, "--no-bars", *beat],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_until_stopped(paused)
    other = BudgetedStudy(
        "lenet",
        make_storage(url, heartbeat=True, heartbeat_interval=1, grace_period=2),
        optuna.samplers.RandomSampler(),
        optuna.pruners.NopPruner(),
        __import__("contextlib").nullcontext(),
    )
    deadline = time.monotonic() + 120
    while other.trials[0].state == TrialState.RUNNING:  # another worker finds it stale (after the grace period)
        assert time.monotonic() < deadline
        fail_stale(other)
        time.sleep(0.5)
    paused.send_signal(signal.SIGCONT)
    out, _ = paused.communicate(timeout=300)
    assert paused.returncode == 0 and "Traceback" not in out, out
    assert "trial 0 was taken over by another worker" in out, out
    trials = assert_consistent(url, "lenet", 1)  # its retry ran (here, by the same worker) and counts
    assert trials[0].state == TrialState.FAIL and trials[1].state == TrialState.COMPLETE


@pytest.mark.slow
def test_a_study_deleted_under_a_running_run_stops_it_in_one_line(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/d.db"
    tiny = ["--epochs", "2", *TINY[2:]]
    paused = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _PAUSED,
            "run",
            "--model",
            "lenet",
            "--trials",
            "2",
            "--storage",
            url,
            "--no-bars",
            *tiny,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_until_stopped(paused)  # after its first epoch's reports: training
    deleted = runner.invoke(app, ["delete", "--study", "lenet", "--storage", url, "--yes", "--force"])
    assert deleted.exit_code == 0, deleted.output
    paused.send_signal(signal.SIGCONT)
    out, _ = paused.communicate(timeout=300)
    assert paused.returncode == 1 and "Traceback" not in out, out
    assert (
        out.strip().splitlines()[-1] == "error: study 'lenet' was deleted while this run trained it; nothing was kept"
    )
