"""The store goes away: a PostgreSQL or MariaDB restart is survived, a longer outage or a full disk ends in one line.

Every wait here is for an event (a line printed, a process ending), never for a duration
that must be long enough: the worker is stopped while the database is down until it says
so, and the database comes back only then.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from fmnist_search.search.trials.coordination import census
from tests.conftest import Lines, cli_process

TINY = ["--epochs", "2", "--train-size", "512", "--val-size", "500", "--batch-size", "128", "--pruner", "none"]
BEAT = ["--heartbeat-interval", "1", "--grace-period", "3"]


_cli = cli_process


def _states(url: str) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name="lenet", storage=url).get_trials(deepcopy=False)]


def test_a_database_outage_mid_study_is_survived(database_server, real_data):
    url = database_server.url
    proc = _cli("run", "--model", "lenet", "--trials", "5", "--storage", url, *TINY, *BEAT)
    lines = Lines(proc)
    lines.until("trial 1 ")  # two trials stored: mid-study
    database_server.stop()
    lines.until("unreachable")  # the worker noticed while it trained a trial, and waits
    database_server.start()
    lines.until("reachable again")
    out = lines.finish()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "s3cret-pw" not in out
    # Trials ran on both sides of the outage: the one it interrupted finished after it.
    assert re.search(r"trial \d+ COMPLETE", lines.after("reachable again")), out
    study = optuna.load_study(study_name="lenet", storage=url)
    c = census(study)
    assert c.running == 0 and c.waiting == 0 and c.counted == 5, c
    assert c.complete >= 4  # at most the one trial whose writes were cut off is retried


def test_a_database_restart_mid_study_is_survived(database_server, real_data):
    """A fast restart (`pg_ctl restart -m fast`, a MariaDB restart) kills every connection, pooled ones too.

    The worker is frozen (SIGSTOP) across the restart, so the restart lands mid-study by
    construction, whatever the machine's speed: trials are left when it happens, and they
    run afterwards on the connections it killed."""
    url = database_server.url
    beat = ["--heartbeat-interval", "1", "--grace-period", "120"]  # frozen is not dead
    proc = _cli("run", "--model", "lenet", "--trials", "4", "--storage", url, *TINY, *beat)
    lines = Lines(proc)
    lines.until("trial 1 ")
    proc.send_signal(signal.SIGSTOP)
    try:
        finished = census(optuna.load_study(study_name="lenet", storage=url)).complete
        assert finished < 4  # trials remain for after the restart
        database_server.restart()
    finally:
        proc.send_signal(signal.SIGCONT)
    out = lines.finish()
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    c = census(optuna.load_study(study_name="lenet", storage=url))
    assert c.running == 0 and c.waiting == 0 and c.counted == 4, c
    assert c.complete > finished  # trials completed after the restart


def test_an_outage_longer_than_the_patience_ends_in_one_line(postgres_server, real_data):
    url = postgres_server.url
    proc = _cli("run", "--model", "lenet", "--trials", "20", "--storage", url, "--storage-patience", "3", *TINY, *BEAT)
    lines = Lines(proc)
    lines.until("trial 0 ")
    postgres_server.stop()
    out = lines.finish()
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "s3cret-pw" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: ") and "unreachable for 3 s" in last and "fmnist:***@" in last, last
    # The trial it could not finish is recovered by the next run once its heartbeat is stale
    # (the run waits for that itself: it polls until no trial is RUNNING).
    postgres_server.start()
    resume = _cli("run", "--study", "lenet", "--trials", "1", "--storage", url, *BEAT)
    out, _ = resume.communicate(timeout=300)
    assert resume.returncode == 0, out
    assert TrialState.RUNNING not in _states(url)


def test_a_worker_waits_for_its_database_and_study(postgres_server, real_data):
    """Containers start in any order: a worker started before PostgreSQL and the study waits for both."""
    url = postgres_server.url
    postgres_server.stop()
    worker = _cli(
        "worker", "--study", "lenet", "--no-bars", "--storage-patience", "120", *BEAT, env={"FMNIST_STORAGE": url}
    )
    lines = Lines(worker)
    lines.until("unreachable")
    postgres_server.start()
    lines.until("waiting up to 120 s for study 'lenet'")
    create = _cli("create", "--model", "lenet", "--trials", "1", "--storage", url, *TINY)
    assert create.wait(timeout=120) == 0, create.stdout.read()
    out = lines.finish()
    assert worker.returncode == 0, out
    assert census(optuna.load_study(study_name="lenet", storage=url)).complete == 1


def test_a_worker_gives_up_on_a_missing_study_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    create = _cli("create", "--model", "lenet", "--study", "other", "--trials", "1", "--storage", url)
    assert create.wait(timeout=120) == 0, create.stdout.read()
    worker = _cli("worker", "--study", "ghost", "--storage", url, "--storage-patience", "1")
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 2, out
    assert out.strip().splitlines()[-1].startswith("error: no study named 'ghost'") and "Traceback" not in out


def test_a_worker_on_a_store_file_not_there_waits_for_it_and_creates_nothing(tmp_path):
    """A worker joins a study: on a SQLite file that is not there it waits for the `create` or
    `run` that makes it, and gives up in one line without creating the file or its folder."""
    path = tmp_path / "later" / "w.db"
    worker = _cli("worker", "--study", "typo", "--storage", f"sqlite:///{path}", "--storage-patience", "1")
    out, _ = worker.communicate(timeout=120)
    assert worker.returncode == 2, out
    waiting, error = out.strip().splitlines()
    assert waiting == f"waiting up to 1 s for {path} to be created"
    assert error.startswith(f"error: no study store at {path}: a study is created with `fmnist-search run")
    assert os.listdir(tmp_path) == []


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 600 KB filesystem: room for the store, not for much more."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root and mount rights): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_under_the_store_ends_in_one_line_and_the_store_stays_readable(small_disk, real_data):
    url = f"sqlite:///{small_disk}/fmnist.db"
    proc = _cli("run", "--model", "lenet", "--trials", "20", "--storage", url, *TINY, *BEAT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "Should not reach" not in out
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot write to the store {url}: database or disk is full"), last
    states = _states(url)  # still readable
    assert states
    if TrialState.RUNNING in states:  # a trial that cannot be written is left for the heartbeat retry, said so
        assert "stays RUNNING until its heartbeat is stale" in last, last


def test_a_full_disk_under_the_artifacts_re_queues_the_trial(small_disk, tmp_path, real_data):
    """Weights or a checkpoint (whichever write finds the disk full first): the trial is re-queued."""
    url = f"sqlite:///{tmp_path}/fmnist.db"
    args = ["--storage", url, "--artifacts", str(small_disk), *TINY, *BEAT]
    proc = _cli("run", "--model", "lenet", "--trials", "20", *args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    last = out.strip().splitlines()[-1]
    assert re.search(rf"(weights|checkpoint) in {small_disk}: No space left on device", last), last
    requeued = re.search(r"trials? ([\d, ]+) re-queued", last)
    assert requeued, last
    c = census(optuna.load_study(study_name="lenet", storage=url))
    # the trials that were training (one, or a population's: LeNet's CPU default is 4) wait for their retry
    assert c.running == 0 and c.waiting == c.retried == len(requeued.group(1).split(",")) >= 1, c


def test_a_heartbeat_during_an_outage_after_a_signal_gives_up_without_a_traceback():
    """The heartbeat thread retries a lost database like any call; once the process was asked to
    stop it gives up with a StorageError (which the heartbeat reports in one line), never ``Stop``."""
    import os
    import signal
    import threading

    from sqlalchemy import exc as sa_exc

    from fmnist_search.core import interrupts
    from fmnist_search.core.errors import StorageError
    from fmnist_search.search.store.retry import Retrier

    def lost() -> None:
        raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))

    ended: list[BaseException] = []
    escaped: list[threading.ExceptHookArgs] = []
    previous_hook, threading.excepthook = threading.excepthook, escaped.append

    def heartbeat() -> None:
        try:
            Retrier("postgresql://db.invalid/x", patience=600)(lost, "heartbeat")
        except StorageError as e:
            ended.append(e)

    try:
        with interrupts.handled():
            with interrupts.shielded():
                os.kill(os.getpid(), signal.SIGINT)  # recorded: the main thread is stopping
            thread = threading.Thread(target=heartbeat)
            thread.start()
            thread.join(timeout=120)
    finally:
        threading.excepthook = previous_hook
    assert not escaped, escaped[0].exc_value if escaped else None
    assert len(ended) == 1 and "unreachable" in str(ended[0])
