"""A study run with --population stores the same kinds of trials as one without, and stops as cleanly."""

from __future__ import annotations

import os
import re
import signal
import sqlite3

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.search.store.internals import trial_id
from fmnist_search.search.trials import lifecycle
from fmnist_search.search.trials.coordination import census
from fmnist_search.search.trials.record import FIELDS, TrialRecord
from tests.conftest import finish_command

TINY = ["--epochs", "2", "--train-size", "2048", "--val-size", "1000", "--batch-size", "64"]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def studies(tmp_path_factory, real_data):
    """The same study settings run one trial at a time and four at a time."""
    root = tmp_path_factory.mktemp("population")
    urls = {}
    for k, trials in ((1, 2), (4, 6)):
        url = urls[k] = f"sqlite:///{root}/k{k}.db"
        result = invoke(
            "run",
            "--model",
            "lenet",
            "--trials",
            str(trials),
            "--population",
            str(k),
            "--lr-min",
            "0.02",
            "--lr-max",
            "0.2",
            "--storage",
            url,
            *TINY,
        )
        assert result.exit_code == 0, result.output
        if k > 1:
            assert "4 at a time (--population)" in result.output
    return urls


def _trials(url):
    return optuna.load_study(study_name="lenet", storage=url).trials


def test_population_trials_are_ordinary_trials(studies):
    alone, together = _trials(studies[1]), _trials(studies[4])
    assert len(together) == 6 and {t.state for t in together} <= {TrialState.COMPLETE, TrialState.PRUNED}
    done = [t for t in together if t.state == TrialState.COMPLETE]
    assert done
    single_keys = set(alone[0].user_attrs) | {"population_throughput"}
    for t in done:
        assert set(t.user_attrs) == single_keys and set(t.user_attrs) <= set(FIELDS)
        r = TrialRecord.of(t)
        assert r.epochs_completed == 2 and sorted(t.intermediate_values) == [1, 2]
        assert t.value == r.val_accuracy and 0.5 < r.val_accuracy <= 1 and 0.5 < r.test_accuracy <= 1
        assert r.throughput > 0 and r.population_throughput > 0
        assert r.weights_artifact
    assert all(TrialRecord.of(t).population_throughput > 0 for t in together)  # pruned ones too
    # 6 trials, 4 at a time: one population of 4 whose freed rows took the last 2 (refills, asked
    # once the first ones had ended and been told); one batch order.
    records = [TrialRecord.of(t) for t in together]
    assert [r.population for r in records] == [4] * 6 and {r.population_id for r in records} == {0}
    assert [r.joined_epoch for r in records[:4]] == [1] * 4 and all(r.joined_epoch > 1 for r in records[4:])
    told_before = {t.number for t in together[:4] if t.datetime_complete < together[4].datetime_start}
    assert told_before, "a refill is sampled after earlier results were told"
    assert {r.config["data_seed"] for r in records} == {0}
    assert {TrialRecord.of(t).config["seed"] for t in together} == set(range(6))  # weights: one seed each
    assert all(TrialRecord.of(t).population == 1 for t in alone)


def test_population_trials_have_heartbeats(studies):
    path = studies[4].removeprefix("sqlite:///")
    with sqlite3.connect(path) as db:
        beating = {row[0] for row in db.execute("SELECT trial_id FROM trial_heartbeats")}
    # A killed population's trials go stale and are retried only if each has a heartbeat.
    assert beating == {trial_id(t) for t in _trials(studies[4])}


def test_population_weights_reproduce_the_stored_test_accuracy(studies, tmp_path):
    best = optuna.load_study(study_name="lenet", storage=studies[4]).best_trial
    result = invoke(
        "evaluate",
        "--study",
        "lenet",
        "--trial",
        str(best.number),
        "--storage",
        studies[4],
        "--output-dir",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    measured = float(re.search(r"test_accuracy=([0-9.]+)", result.output).group(1))
    assert measured == round(best.user_attrs["test_accuracy"], 4)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_whole_population_cleanly(sig, tmp_path, monkeypatch, real_data):
    url = f"sqlite:///{tmp_path}/s.db"
    original = lifecycle.population_prunes
    calls = {"n": 0}

    def prunes(*args, **kwargs):  # the signal lands after the population's first epoch reports
        calls["n"] += 1
        if calls["n"] == 1:
            os.kill(os.getpid(), sig)
        return original(*args, **kwargs)

    with monkeypatch.context() as mp:
        mp.setattr(lifecycle, "population_prunes", prunes)
        result = invoke("run", "--model", "lenet", "--trials", "3", "--population", "3", "--storage", url, *TINY)
    assert result.exit_code == (130 if sig == signal.SIGINT else 143), result.output
    assert "Traceback" not in result.output
    study = optuna.load_study(study_name="lenet", storage=url)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states and states.count(TrialState.FAIL) == 3
    for t in study.trials[:3]:
        assert TrialRecord.of(t).fail_reason.startswith("interrupted")
        assert TrialRecord.of(t).epochs_completed == 1  # what it measured is kept
    c = census(study)
    assert c.waiting == 3 and c.retried == 3  # all three re-queued, on Ctrl-C as on SIGTERM
    # The command the last line names finishes the three, and the count is exact.
    result = invoke(*finish_command(result.output))
    assert result.exit_code == 0, result.output
    after = census(optuna.load_study(study_name="lenet", storage=url))
    assert after.running == 0 and after.waiting == 0 and after.complete + after.pruned == 3


def test_population_refuses_fp16_and_compile_in_one_line(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/r.db"
    result = invoke("run", "--model", "lenet", "--trials", "1", "--population", "2", "--compile", "--storage", url)
    assert result.exit_code != 0 and "--population 1" in result.output and "Traceback" not in result.output


def test_a_population_on_a_database_server(database_url, real_data):
    """The batched writes (multi-row upserts of reports, records and SHA rung attrs) and the
    batched heartbeats in each server's own SQL dialect."""
    result = invoke(
        "run",
        "--model",
        "lenet",
        "--study",
        "pop",
        "--trials",
        "4",
        "--population",
        "4",
        "--pruner",
        "sha",
        "--storage",
        database_url,
        *TINY,
    )
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="pop", storage=database_url).trials
    assert len(trials) == 4 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert all(sorted(t.intermediate_values)[0] == 1 for t in trials)
    assert all("completed_rung_0" in t.system_attrs for t in trials)  # every peer's rung value, recorded first
    assert all(TrialRecord.of(t).population == 4 and TrialRecord.of(t).history for t in trials)


def test_a_full_space_population_stays_whole_and_its_refills_are_sampled_after_results(
    tmp_path, monkeypatch, real_data
):
    """The `full` space samples batch size, crop, flip and erasing: a population samples the
    batch size once (its members and refills take it) and each member augments its own view,
    so 4 asked trials train as one population of 4, not as groups of one; the refills' params
    are sampled when the study already holds finished trials."""
    from fmnist_search.search import study as study_mod

    seen: dict[int, int] = {}  # trial number -> finished trials the sampler saw when it sampled it

    class Recording(optuna.samplers.TPESampler):
        def sample_independent(self, study, trial, name, distribution):
            finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
            seen.setdefault(trial.number, len(finished))
            return super().sample_independent(study, trial, name, distribution)

    monkeypatch.setitem(study_mod.SAMPLERS, "tpe", lambda spec, seed: Recording(seed=seed, constant_liar=True))
    url = f"sqlite:///{tmp_path}/full.db"
    args = ["--model", "lenet", "--trials", "8", "--population", "4", "--space", "full", "--storage", url]
    result = invoke("run", *args, "--epochs", "3", "--train-size", "1024", "--val-size", "500")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="lenet", storage=url).trials
    records = [TrialRecord.of(t) for t in trials]
    assert len(trials) == 8 and all(r.population == 4 for r in records)
    assert {r.population_id for r in records} == {0}  # one population, refilled
    assert len({t.params["batch_size"] for t in trials}) == 1  # sampled once
    assert len({(t.params["crop"], t.params["flip"], t.params["erasing"]) for t in trials}) > 1  # own views
    refills = [t.number for t, r in zip(trials, records, strict=True) if r.joined_epoch > 1]
    assert refills and all(seen[n] >= 1 for n in refills)
    assert re.search(r"populations of 4: \d+% of their rows filled over all steps, \d+ trials joined", result.output)


def test_a_refilled_population_stops_cleanly_and_its_trials_resume(tmp_path, monkeypatch, real_data):
    """Ctrl-C after refills joined (members at different epochs): every trial is re-queued, the
    named command finishes exactly the trials asked for, the one with a checkpoint resumes from it
    (bit for bit: test_population.py)."""
    url = f"sqlite:///{tmp_path}/s.db"
    original = lifecycle._Population.on_epoch_end
    joined = []

    def on_epoch_end(self, at_round, metrics):
        if at_round == 2 and any(s.record.joined_epoch > 1 for s in self.group):
            joined.extend(s.trial.number for s in self.group if s.record.joined_epoch > 1)
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, at_round, metrics)

    args = ["--model", "lenet", "--trials", "5", "--population", "3", "--pruner", "sha", "--storage", url]
    with monkeypatch.context() as mp:
        mp.setattr(lifecycle._Population, "on_epoch_end", on_epoch_end)
        result = invoke("run", *args, "--epochs", "3", "--train-size", "1024", "--val-size", "500")
    assert result.exit_code == 130, result.output
    assert joined, "SHA prunes 2 of 3 at epoch 1 (top 1/4 promoted): their rows were refilled"
    study = optuna.load_study(study_name="lenet", storage=url)
    assert TrialState.RUNNING not in {t.state for t in study.trials}
    result = invoke(*finish_command(result.output))
    assert result.exit_code == 0, result.output
    assert re.search(r"trial \d+ resumes trial \d+ from epoch 1", result.output)  # the one SHA promoted
    assert "train as a population of their own: a population resumes together only the trials" in result.output
    after = census(optuna.load_study(study_name="lenet", storage=url))
    assert after.running == after.waiting == 0 and after.complete + after.pruned == 5
