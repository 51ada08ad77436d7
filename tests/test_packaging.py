"""The package as users install it: a wheel, outside the repository, with its presets."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> dict[str, str]:
    """The project's wheel, built and installed into a folder of its own; the environment to run it."""
    wheels, target = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
    # Build from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path_factory.mktemp("src") / "fmnist-search"
    junk = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "studies", ".*cache")
    shutil.copytree(REPO, source, ignore=junk)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-build-isolation: build with this environment's setuptools, no download
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)], check=True)
    (wheel,) = wheels.glob("fmnist_search-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True)
    # The dependencies come from this environment; the package itself from the wheel only.
    return {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}


def _run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist_search", *args], env=env, cwd=cwd, capture_output=True, text=True
    )


def test_the_wheel_runs_shipped_presets_outside_the_repository(installed_wheel, tmp_path, real_data):
    where = subprocess.run(
        [sys.executable, "-c", "import fmnist_search; print(fmnist_search.__file__)"],
        env=installed_wheel,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert not where.startswith(str(REPO)), where  # the installed copy, not the source tree
    assert not (tmp_path / "studies").exists()

    url = f"sqlite:///{tmp_path}/w.db"
    done = _run(
        installed_wheel,
        tmp_path,
        "run",
        "--preset",
        "seed-report",
        "--models",
        "lenet",
        "--storage",
        url,
        "--epochs",
        "1",
        "--train-size",
        "512",
        "--val-size",
        "500",
    )
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="seed-report-lenet", storage=url)
    assert sorted(t.params["lr"] for t in study.trials) == [0.01, 0.05, 0.1]  # the preset's grid

    # lenet-tuned names a teacher preset, which must load from the package too (trained on 512 + 500 images).
    done = _run(
        installed_wheel,
        tmp_path,
        "train",
        "--preset",
        "lenet-tuned",
        "--epochs",
        "1",
        "--train-size",
        "512",
        "--val-size",
        "500",
    )
    assert done.returncode == 0, done.stderr
    assert "teacher airbench-tuned: training airbench" in done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("test_accuracy=")


def test_unknown_preset_lists_the_shipped_ones(installed_wheel, tmp_path):
    done = _run(installed_wheel, tmp_path, "run", "--preset", "nope")
    assert done.returncode == 2
    assert (
        "unknown preset 'nope'; choose one of: airbench-tuned, compare, lenet-base, lenet-tuned, resnet18-tuned"
        in done.stderr
    )
