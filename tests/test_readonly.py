"""Reading never needs write access: a study on a read-only mount is listed, shown, exported,
reported, plotted, evaluated and served, and nothing is written there."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.conftest import cli_process, serving_dashboard

TINY = ["--epochs", "1", "--train-size", "512", "--val-size", "500", "--batch-size", "128"]


def _snapshot(folder):
    return {p.relative_to(folder): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def read_only_store(tmp_path_factory, real_data):
    """A real study written by `run` (a finished process: its WAL is checkpointed), then the
    folder bind-mounted read-only (root: EROFS holds for root too, unlike file permissions)."""
    src, mount = tmp_path_factory.mktemp("shared"), tmp_path_factory.mktemp("ro")
    run = cli_process("run", "--model", "lenet", "--trials", "2", "--storage", f"sqlite:///{src}/s.db", *TINY)
    out, _ = run.communicate(timeout=600)
    assert run.returncode == 0, out
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root (CI runs as root, so there it always runs)")
    subprocess.run(["mount", "--bind", str(src), str(mount)], check=True, capture_output=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True, capture_output=True)
        assert not os.access(mount, os.W_OK)  # really read-only, for root too
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize(
    "command,expect",
    [
        (["studies"], "lenet"),
        (["show", "--study", "lenet"], "COMPLETE"),
        (["export", "--study", "lenet"], "test_accuracy"),
        (["report", "--study", "lenet"], "lenet"),
        (["plot", "--study", "lenet", "--output-dir", "{out}"], "the store is read-only"),
        (["evaluate", "--study", "lenet", "--output-dir", "{out}"], "accuracy"),
    ],
)
def test_reading_commands_work_on_a_read_only_mount(read_only_store, tmp_path, command, expect):
    before = _snapshot(read_only_store)
    args = [a.format(out=tmp_path / "out") for a in command]
    proc = cli_process(*args, "--storage", f"sqlite:///{read_only_store}/s.db")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert expect in out and "Traceback" not in out
    assert _snapshot(read_only_store) == before  # nothing written (no -wal, no -shm, no journal)


def test_the_dashboard_serves_a_read_only_store(read_only_store):
    with serving_dashboard(f"sqlite:///{read_only_store}/s.db") as (_, studies):
        assert [s["study_name"] for s in studies] == ["lenet"]


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--study", "lenet", "--output", "{ro}/new/t.csv"],
        ["report", "--study", "lenet", "--output", "{ro}/r.md"],
        ["report", "--study", "lenet", "--csv", "{ro}/r.csv"],
        ["plot", "--study", "lenet", "--output-dir", "{ro}/plots"],
        ["evaluate", "--study", "lenet", "--output-dir", "{ro}/e"],
        ["train", "--from-study", "lenet", "--save", "{ro}/best.pt"],
    ],
)
def test_an_output_on_a_read_only_mount_is_one_line_before_any_work(read_only_store, command):
    """Every output option pointed into a read-only folder: one line naming the place, exit 2,
    refused before the command's work (``train`` trains no epoch), nothing written there."""
    before = _snapshot(read_only_store)
    args = [a.format(ro=read_only_store) for a in command]
    proc = cli_process(*args, "--storage", f"sqlite:///{read_only_store}/s.db")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, out  # a place given that cannot be written: bad input
    assert out.strip().splitlines() == [f"error: cannot write {args[-1]}: {read_only_store}: Read-only file system"]
    assert _snapshot(read_only_store) == before
