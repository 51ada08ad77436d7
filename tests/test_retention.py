"""--keep-weights: a study's disk use has a bound the user sets, and a reader is never robbed."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.search.artifacts import weights as artifacts
from fmnist_search.search.artifacts.retention import keep_best
from fmnist_search.search.results.front import ranked

runner = CliRunner()
TINY = [
    "--model",
    "lenet",
    "--epochs",
    "1",
    "--train-size",
    "384",
    "--val-size",
    "300",
    "--batch-size",
    "96",
    "--pruner",
    "none",
]


def _weights(folder) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")}


def test_only_the_best_n_trials_keep_their_weights(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/k.db"
    folder = tmp_path / "k-artifacts"
    result = runner.invoke(app, ["run", *TINY, "--trials", "5", "--keep-weights", "2", "--storage", url])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="lenet", storage=url)
    done = sorted(study.trials, key=lambda t: (-t.value, t.number))
    assert len(done) == 5 and study.user_attrs["keep_weights"] == 2
    assert _weights(folder) == {t.user_attrs["weights_artifact"] for t in done[:2]}  # the best two, no more
    assert runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", url]).exit_code == 0  # the best: kept
    result = runner.invoke(app, ["evaluate", "--study", "lenet", "--trial", str(done[-1].number), "--storage", url])
    assert result.exit_code == 2
    assert f"trial {done[-1].number}'s weights were removed: study 'lenet' keeps those of its best 2" in result.output
    # A later --keep-weights replaces the bound (here: tighter, applied at the next completed trial).
    result = runner.invoke(app, ["run", "--study", "lenet", "--trials", "1", "--keep-weights", "1", "--storage", url])
    assert result.exit_code == 0, result.output
    best = optuna.load_study(study_name="lenet", storage=url).best_trial
    assert _weights(folder) == {best.user_attrs["weights_artifact"]}


def test_weights_a_reader_is_loading_are_not_removed_under_it(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/r.db"
    folder = tmp_path / "r-artifacts"
    assert runner.invoke(app, ["run", *TINY, "--trials", "3", "--storage", url]).exit_code == 0
    study = optuna.load_study(study_name="lenet", storage=url)
    study.set_user_attr("keep_weights", 1)
    store = artifacts.open_store(folder)
    with artifacts.reading(folder):  # `evaluate` copying a file out
        assert keep_best(study, store) == [] and len(_weights(folder)) == 3
    removed = keep_best(study, store)
    assert len(removed) == 2 and study.best_trial.number not in removed and len(_weights(folder)) == 1


def _trial(values: list[float]) -> optuna.trial.FrozenTrial:
    return optuna.create_trial(values=values, params={"lr": 0.1}, distributions={"lr": FloatDistribution(0.01, 1)})


def test_ranked_goes_front_by_front_in_a_multi_objective_study():
    study = optuna.create_study(directions=["maximize", "maximize"])  # accuracy, throughput
    study.set_user_attr("objectives", ["accuracy", "throughput"])
    points = [[0.90, 10.0], [0.80, 100.0], [0.85, 50.0], [0.84, 40.0], [0.70, 90.0], [0.60, 5.0]]
    for values in points:
        study.add_trial(_trial(values))
    # front 1: 0, 2, 1 (most accurate first); front 2: 3, 4; front 3: 5
    assert [t.number for t in ranked(study)] == [0, 2, 1, 3, 4, 5]
    assert [t.number for t in ranked(study, limit=4)] == [0, 2, 1, 3]


@pytest.mark.parametrize("n", ["0", "-1"])
def test_keep_weights_takes_a_positive_count(n):
    result = runner.invoke(app, ["run", *TINY, "--keep-weights", n])
    assert result.exit_code == 2 and "error: Invalid value for '--keep-weights'" in result.output
