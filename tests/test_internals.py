"""Optuna's private names live in search/store/internals.py only, and are all there in the installed Optuna."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest

from fmnist_search.search.store import internals

ROOT = Path(__file__).resolve().parents[1]
# A private attribute of an Optuna object, or a private Optuna module, as this project would spell it.
PRIVATE = re.compile(
    r"\._storage\b|\._study_id\b|\._trial_id\b|\._backend\b|optuna\.storages\._|\._pruners\b|_try_initialization"
    r"|_get_bracket_id|_create_bracket_study|_create_scoped_session|pruner\._|\._n_\w+|\._min_\w+|\._bootstrap_count"
    r"|\._reduction_factor|\._percentile\b|\._interval_steps|\._base_path"
)


def test_every_private_name_is_where_the_installed_optuna_has_it():
    internals.check()  # raises one line naming whatever moved


def test_optuna_is_the_minor_version_the_names_are_tested_with():
    assert optuna.__version__.startswith(internals.OPTUNA_TESTED + ".")
    pyproject = (ROOT / "pyproject.toml").read_text()
    major, minor = internals.OPTUNA_TESTED.split(".")
    assert f'"optuna>={major}.{minor},<{major}.{int(minor) + 1}"' in pyproject


def test_a_moved_name_fails_in_one_line(monkeypatch):
    monkeypatch.setitem(internals._ATTRS, "rdb storage", ("_get_trials", "_renamed_in_a_later_optuna"))
    with pytest.raises(RuntimeError, match=r"lacks private names .* rdb storage\._renamed_in_a_later_optuna"):
        internals.check()


@pytest.mark.parametrize("folder", ["fmnist_search", "tests", "benchmarks"])
def test_no_private_optuna_name_outside_internals(folder):
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if path.name in ("internals.py", "test_internals.py"):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if PRIVATE.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "private Optuna names outside search/store/internals.py:\n" + "\n".join(found)


def test_every_private_torch_name_is_where_the_installed_torch_has_it():
    from fmnist_search.engine import torch_internals

    torch_internals.check()


@pytest.mark.parametrize("folder", ["fmnist_search", "tests", "benchmarks"])
def test_no_private_torch_name_outside_torch_internals(folder):
    import re

    from fmnist_search.engine.torch_internals import NAMES

    pattern = re.compile(r"torch\.(" + "|".join(NAMES) + r")\b")
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path.name not in ("torch_internals.py", "test_internals.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "private torch names outside engine/torch_internals.py: " + ", ".join(found)
