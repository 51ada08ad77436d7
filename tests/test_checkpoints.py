"""Checkpoints: a run resumed from any epoch's snapshot ends as the uninterrupted run does."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from fmnist_search.engine.population import Member, Snapshot, fit_population
from tests.test_population import BASE, RECIPES, _data, _model

RESUMABLE = [dataclasses.replace(c, epochs=3) for c in RECIPES[:3]]  # momentum, Nesterov+wd+cosine, smoothing+onecycle


def _run(name, seeds, cfgs, train, val, resume=None, every=1):
    members = [Member(c) for c in cfgs]
    modules = [_model(name, s) for s in seeds]
    taken: dict[int, dict[int, Snapshot]] = {}
    fit_population(
        modules,
        members,
        train,
        val,
        resume=resume,
        snapshot_every=every,
        on_snapshot=lambda epoch, snaps: taken.setdefault(epoch, snaps),
    )
    return members, modules, taken


def _through_a_file(snap: Snapshot) -> Snapshot:
    """As a checkpoint travels: torch.save, then a weights_only load (plain tensors and values)."""
    buffer = io.BytesIO()
    torch.save(snap.payload(), buffer)
    buffer.seek(0)
    return Snapshot.from_payload(torch.load(buffer, weights_only=True))


def _identical(a: Member, b: Member, module_a=None, module_b=None):
    weights_a = (a.module or module_a).state_dict()
    weights_b = (b.module or module_b).state_dict()
    assert weights_a.keys() == weights_b.keys()
    for key in weights_a:
        assert torch.equal(weights_a[key], weights_b[key]), f"{key} differs"

    def values(m):  # every reported value, bit for bit (not the epoch's duration)
        return [dataclasses.replace(e, train_time_s=0.0) for e in m.result.history]

    assert values(a) == values(b)


@pytest.mark.parametrize("name", ["lenet", "airbench"])  # airbench: BatchNorm statistics too
@pytest.mark.parametrize("stop", [1, 2])
def test_one_model_resumed_from_a_snapshot_ends_as_if_never_stopped(tiny_splits, name, stop):
    train, val = _data(tiny_splits)
    cfg = RESUMABLE[1]
    (whole,), _, taken = _run(name, [3], [cfg], train, val)
    assert sorted(taken) == [1, 2]  # after each epoch but the last (a finished member needs none)
    snap = _through_a_file(taken[stop][0])
    assert snap.epoch == stop and len(snap.history) == stop
    (resumed,), _, _ = _run(name, [99], [cfg], train, val, resume=[snap])  # other initial weights: all overwritten
    _identical(resumed, whole)


def test_a_population_resumed_together_ends_as_if_never_stopped(tiny_splits):
    train, val = _data(tiny_splits)
    seeds = [0, 1, 2]
    whole, _, taken = _run("airbench", seeds, RESUMABLE, train, val)
    snaps = [_through_a_file(taken[1][k]) for k in range(3)]
    resumed, _, _ = _run("airbench", [7, 8, 9], RESUMABLE, train, val, resume=snaps)
    for a, b in zip(resumed, whole, strict=True):
        _identical(a, b)


def test_a_population_member_resumes_alone(tiny_splits):
    """A member of a stacked population continues as a single model (its momentum travels per
    parameter): the same up to summation order (grouped vs single convolutions)."""
    train, val = _data(tiny_splits)
    whole, _, taken = _run("lenet", [0, 1], RESUMABLE[:2], train, val)
    (alone,), (module,), _ = _run("lenet", [5], RESUMABLE[1:2], train, val, resume=[_through_a_file(taken[1][1])])
    expected = whole[1].module.state_dict()
    for key, value in module.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-10, atol=1e-12)
    assert [m.epoch for m in alone.result.history] == [1, 2, 3]


def test_snapshots_taken_at_other_points_cannot_resume_together(tiny_splits):
    train, val = _data(tiny_splits)
    _, _, taken = _run("lenet", [0], [RESUMABLE[0]], train, val)
    with pytest.raises(ValueError, match="same point"):
        _run("lenet", [0, 1], [RESUMABLE[0]] * 2, train, val, resume=[taken[1][0], taken[2][0]])


def test_snapshots_every_n_epochs_and_never(tiny_splits):
    train, val = _data(tiny_splits)
    cfg = dataclasses.replace(BASE, epochs=5)
    assert sorted(_run("lenet", [0], [cfg], train, val, every=2)[2]) == [2, 4]
    assert _run("lenet", [0], [cfg], train, val, every=0)[2] == {}


# --- through the tool: a trial stopped mid-epoch continues from its checkpoint on a retry ---

import os  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import optuna  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from fmnist_search.cli import app  # noqa: E402
from fmnist_search.engine import population  # noqa: E402
from fmnist_search.search.artifacts.weights import open_store  # noqa: E402
from tests.conftest import finish_command  # noqa: E402

STUDY = [
    "--model",
    "lenet",
    "--epochs",
    "3",
    "--train-size",
    "384",
    "--val-size",
    "300",
    "--batch-size",
    "96",
    "--pruner",
    "none",
    "--seed",
    "4",
]


def _signal_in_epoch(monkeypatch, epoch: int, sig: int = signal.SIGTERM) -> None:
    """Signal this process at the second batch of ``epoch`` (its first batch already stepped)."""
    shuffle, next_full = population.SharedBatches.shuffle, population.SharedBatches.next_full
    seen = {"epoch": 0, "batch": 0}

    def counted_shuffle(self):  # once per epoch
        seen["epoch"], seen["batch"] = seen["epoch"] + 1, 0
        shuffle(self)

    def counted_next(self):
        seen["batch"] += 1
        if seen["epoch"] == epoch and seen["batch"] == 2:
            os.kill(os.getpid(), sig)
        return next_full(self)

    monkeypatch.setattr(population.SharedBatches, "shuffle", counted_shuffle)
    monkeypatch.setattr(population.SharedBatches, "next_full", counted_next)


def _weights(url: str, trial) -> dict:
    from fmnist_search.search.artifacts.weights import default_dir, load_weights

    _, model, _ = load_weights(open_store(default_dir(url)), trial.user_attrs["weights_artifact"])
    return model.state_dict()


def _complete(url: str) -> list:
    study = optuna.load_study(study_name="lenet", storage=url)
    return [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]


SIX_EPOCHS = [a if a != "3" else "6" for a in STUDY]  # --epochs 6


@pytest.mark.parametrize(
    ("sig", "population_size"),
    [(signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGTERM, 1)],
    ids=["SIGINT", "SIGINT-population-2", "SIGTERM"],
)
def test_a_trial_stopped_mid_epoch_continues_from_its_checkpoint(
    tmp_path, real_data, monkeypatch, sig, population_size
):
    """Ctrl-C (or SIGTERM) mid-epoch 3 of 6, then the command the message names: each trial's curve
    is epochs 1..6, its weights are the uninterrupted trial's, and the study has the trials asked for."""
    runner = CliRunner()
    k = str(population_size)
    whole = f"sqlite:///{tmp_path}/whole.db"
    result = runner.invoke(app, ["run", *SIX_EPOCHS, "--trials", k, "--population", k, "--storage", whole])
    assert result.exit_code == 0, result.output

    stopped = f"sqlite:///{tmp_path}/stopped.db"
    with monkeypatch.context() as mp:
        _signal_in_epoch(mp, 3, sig)  # after epoch 2's checkpoint
        result = runner.invoke(app, ["run", *SIX_EPOCHS, "--trials", k, "--population", k, "--storage", stopped])
    assert result.exit_code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], result.output
    study = optuna.load_study(study_name="lenet", storage=stopped)
    assert [t.state.name for t in study.trials] == ["FAIL"] * population_size + ["WAITING"] * population_size
    assert all(t.user_attrs["checkpoint"]["epoch"] == 2 for t in study.trials[:population_size])

    result = runner.invoke(app, finish_command(result.output))
    assert result.exit_code == 0, result.output
    for n in range(population_size):
        assert f"trial {population_size + n} resumes trial {n} from epoch 2" in result.output
    study = optuna.load_study(study_name="lenet", storage=stopped)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL"] * population_size + ["COMPLETE"] * population_size  # exactly the trials asked for
    for before, after in zip(_complete(whole), _complete(stopped), strict=True):
        assert after.user_attrs["resumed_from"] == {"trial": before.number, "epoch": 2}
        assert after.params == before.params and after.user_attrs["config"] == before.user_attrs["config"]
        # One unbroken curve, the same values to the last bit, and the same weights.
        assert sorted(after.intermediate_values) == [1, 2, 3, 4, 5, 6]
        assert after.intermediate_values == before.intermediate_values
        assert (after.value, after.user_attrs["test_accuracy"]) == (before.value, before.user_attrs["test_accuracy"])
        mine, theirs = _weights(stopped, after), _weights(whole, before)
        assert all(torch.equal(mine[key], theirs[key]) for key in theirs)
        assert after.user_attrs.get("checkpoint") in (None, {})  # ended: no checkpoint left
    store_dir = Path(tmp_path / "stopped-artifacts")
    assert not [p for p in store_dir.iterdir() if p.name.startswith("checkpoint-")]  # consumed and removed


def test_a_checkpoint_that_does_not_fit_is_ignored_in_one_line(tmp_path, real_data, monkeypatch):
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/s.db"
    with monkeypatch.context() as mp:
        _signal_in_epoch(mp, 2)
        assert runner.invoke(app, ["run", *STUDY, "--trials", "1", "--storage", url]).exit_code == 143
    study = optuna.load_study(study_name="lenet", storage=url)
    attr = study.trials[0].user_attrs["checkpoint"]
    (tmp_path / "s-artifacts" / attr["artifact"]).write_bytes(b"not a checkpoint")  # a corrupt file
    result = runner.invoke(app, ["worker", "--study", "lenet", "--storage", url, "--no-bars"])
    assert result.exit_code == 0, result.output
    assert "the checkpoint of trial 0 is ignored (unreadable" in result.output and "it starts over" in result.output
    retry = _complete(url)[0]
    assert "resumed_from" not in retry.user_attrs and sorted(retry.intermediate_values) == [1, 2, 3]


def test_a_studys_space_is_shown_and_only_leftovers_are_pruned(tmp_path, real_data, monkeypatch):
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/s.db"
    folder = tmp_path / "s-artifacts"
    assert runner.invoke(app, ["run", *STUDY, "--trials", "1", "--storage", url]).exit_code == 0  # weights
    with monkeypatch.context() as mp:
        _signal_in_epoch(mp, 2)  # a stopped trial: its checkpoint waits for the retry
        assert runner.invoke(app, ["run", *STUDY, "--trials", "1", "--storage", url]).exit_code == 143
    (folder / "checkpoint-orphan").write_bytes(b"x" * 1000)  # an interrupted write: no trial names it
    kept = {p.name for p in folder.iterdir()} - {"checkpoint-orphan"}
    assert len(kept) == 3 and ".fmnist-stores" in kept  # weights, a checkpoint, and which stores write here

    listed = runner.invoke(app, ["studies", "--storage", url])
    assert listed.exit_code == 0 and "MB" in listed.output and "ckpt" in listed.output  # (a narrow table)
    shown = runner.invoke(app, ["show", "--study", "lenet", "--storage", url])
    space = sum(p.stat().st_size for p in folder.iterdir() if p.name in kept)
    assert shown.exit_code == 0 and f"; artifacts {space / 1e6:.1f} MB, " in shown.output and " ckpt" in shown.output

    dry = runner.invoke(app, ["prune-artifacts", "--storage", url, "--dry-run"])
    assert dry.exit_code == 0 and "would remove 0 files" in dry.output  # younger than the grace age (1 h)
    an_hour_ago = time.time() - 3601
    for p in folder.iterdir():
        os.utime(p, (an_hour_ago, an_hour_ago))
    dry = runner.invoke(app, ["prune-artifacts", "--storage", url, "--dry-run"])
    assert dry.exit_code == 0 and "checkpoint-orphan" in dry.output and "would remove 1 files" in dry.output
    assert (folder / "checkpoint-orphan").exists()
    done = runner.invoke(app, ["prune-artifacts", "--storage", url])
    assert done.exit_code == 0 and "removed 1 files" in done.output
    assert {p.name for p in folder.iterdir()} == kept  # the weights and the checkpoint a retry will resume

    assert runner.invoke(app, ["worker", "--study", "lenet", "--storage", url, "--no-bars"]).exit_code == 0
    assert len(list(folder.iterdir())) == 3  # the retry consumed and removed the checkpoint, kept its weights
    assert "removed 0 files" in runner.invoke(app, ["prune-artifacts", "--storage", url, "--min-age", "0"]).output


def test_prune_during_a_live_run_keeps_the_checkpoint_the_retry_resumes(tmp_path, real_data, monkeypatch):
    """prune-artifacts at the worst moment: epoch 2's checkpoint written, its attr not yet (the run
    then stopped in epoch 3). The file is young, so it stays, and the retry resumes from epoch 2."""
    from fmnist_search.app.results import prune_artifacts
    from fmnist_search.search.store.storage import make_storage
    from fmnist_search.search.trials import checkpoints

    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/live.db"
    folder = tmp_path / "live-artifacts"
    save, pruned = checkpoints.save, []

    def save_then_prune(store, model, cfg, snap):
        attr = save(store, model, cfg, snap)
        if snap.epoch == 2:  # named by no trial yet: only its age protects it
            pruned.append(prune_artifacts(make_storage(url, heartbeat=False), url, folder, False, 3600))
            assert (folder / attr["artifact"]).is_file()
        return attr

    with monkeypatch.context() as mp:
        mp.setattr(checkpoints, "save", save_then_prune)
        _signal_in_epoch(mp, 3)
        result = runner.invoke(app, ["run", *STUDY, "--trials", "1", "--storage", url])
    assert result.exit_code == 143, result.output
    assert pruned == [([], 0)]
    result = runner.invoke(app, finish_command(result.output))
    assert result.exit_code == 0, result.output
    retry = optuna.load_study(study_name="lenet", storage=url).trials[1]
    assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}


def test_prune_refuses_a_folder_other_stores_write_into(tmp_path, real_data):
    runner = CliRunner()
    shared = ["--artifacts", str(tmp_path / "shared")]
    for name in ("one", "two"):
        url = f"sqlite:///{tmp_path}/{name}.db"
        assert (
            runner.invoke(app, ["run", *STUDY, "--epochs", "1", "--trials", "1", "--storage", url, *shared]).exit_code
            == 0
        )
    before = sorted(p.name for p in (tmp_path / "shared").iterdir())
    result = runner.invoke(
        app, ["prune-artifacts", "--storage", f"sqlite:///{tmp_path}/one.db", "--min-age", "0", *shared]
    )
    assert result.exit_code == 2 and f"also holds the trials of sqlite:{tmp_path}/two.db" in result.output
    assert sorted(p.name for p in (tmp_path / "shared").iterdir()) == before  # the other store's weights stay


def test_a_checkpoint_of_another_model_or_recipe_is_refused(tmp_path, tiny_splits):
    from optuna.artifacts import FileSystemArtifactStore

    from fmnist_search.search.trials import checkpoints

    store = FileSystemArtifactStore(str(tmp_path))
    train, val = _data(tiny_splits)
    cfg = RESUMABLE[0]
    _, _, taken = _run("lenet", [0], [cfg], train, val)
    attr = checkpoints.save(store, "lenet", cfg, taken[1][0])
    snap, seed, data_seed = checkpoints.load(store, attr, "lenet", dataclasses.replace(cfg, seed=9, data_seed=3))
    assert snap.epoch == 1 and (seed, data_seed) == (cfg.seed, cfg.data_seed)  # it trained with those: kept
    with pytest.raises(checkpoints.Refused, match="it is a lenet, this trial trains a airbench"):
        checkpoints.load(store, attr, "airbench", cfg)
    with pytest.raises(checkpoints.Refused, match=r"another recipe \(lr, momentum\)"):
        checkpoints.load(store, attr, "lenet", dataclasses.replace(cfg, lr=0.5, momentum=0.1))
    (tmp_path / attr["artifact"]).write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoints.Refused, match="unreadable"):
        checkpoints.load(store, attr, "lenet", cfg)
    checkpoints.remove(store, attr)
    with pytest.raises(checkpoints.Refused, match=f"its file is not in {tmp_path}: give every worker the same"):
        checkpoints.load(store, attr, "lenet", cfg)


def test_a_retry_that_starts_over_has_clean_pruning_state(tmp_path, real_data, monkeypatch):
    """Successive halving: the interrupted trial reached rung 0; its retry (no checkpoint: it starts
    over) is queued without that rung and records its own epoch-1 value there."""
    runner = CliRunner()
    url = f"sqlite:///{tmp_path}/sha.db"
    args = [*STUDY[:-4], "--pruner", "sha", "--seed", "4", "--checkpoint-every", "0", "--storage", url]
    with monkeypatch.context() as mp:
        _signal_in_epoch(mp, 2, signal.SIGINT)
        result = runner.invoke(app, ["run", *args, "--trials", "1"])
    assert result.exit_code == 130, result.output
    stopped, queued = optuna.load_study(study_name="lenet", storage=url).trials
    assert stopped.system_attrs["completed_rung_0"] == stopped.intermediate_values[1]
    assert queued.state.name == "WAITING" and not any(k.startswith("completed_rung_") for k in queued.system_attrs)

    result = runner.invoke(app, finish_command(result.output))
    assert result.exit_code == 0, result.output
    retry = optuna.load_study(study_name="lenet", storage=url).trials[1]
    assert retry.state.name in ("COMPLETE", "PRUNED") and 1 in retry.intermediate_values  # judged from its epoch 1
    assert retry.system_attrs["completed_rung_0"] == retry.intermediate_values[1]


@pytest.mark.parametrize("shared", [True, False], ids=["shared-artifacts", "relative-default"])
def test_a_retry_on_another_machine_resumes_from_a_shared_artifact_folder(
    postgres_url, tmp_path, real_data, monkeypatch, shared
):
    """Two workers on PostgreSQL in different working folders (two machines): with one shared
    --artifacts the retry resumes from the stopped trial's checkpoint; with the relative default
    each has its own folder, and the retry says so in one line and starts from epoch 1."""
    runner = CliRunner()
    study = f"machines-{shared}"
    artifacts = ["--artifacts", str(tmp_path / "shared")] if shared else []
    result = runner.invoke(app, ["create", *STUDY, "--study", study, "--trials", "1", "--storage", postgres_url])
    assert result.exit_code == 0, result.output
    for machine in ("a", "b"):
        (tmp_path / machine).mkdir()
    worker = ["worker", "--study", study, "--storage", postgres_url, "--no-bars", *artifacts]
    with monkeypatch.context() as mp:
        mp.chdir(tmp_path / "a")
        _signal_in_epoch(mp, 3)  # SIGTERM after epoch 2's checkpoint
        result = runner.invoke(app, worker)
    assert result.exit_code == 143, result.output
    assert ("on this machine only" in result.output.splitlines()[0]) is not shared  # the first line warns
    with monkeypatch.context() as mp:
        mp.chdir(tmp_path / "b")
        result = runner.invoke(app, worker)
    assert result.exit_code == 0, result.output
    retry = optuna.load_study(study_name=study, storage=postgres_url).trials[1]
    assert retry.state.name == "COMPLETE" and sorted(retry.intermediate_values) == [1, 2, 3]
    if shared:
        assert retry.user_attrs["resumed_from"] == {"trial": 0, "epoch": 2}
        assert "trial 1 resumes trial 0 from epoch 2" in result.output
    else:
        assert "resumed_from" not in retry.user_attrs
        assert (
            "trial 1: the checkpoint of trial 0 is ignored (its file is not in studies/artifacts: give every "
            "worker the same --artifacts (FMNIST_ARTIFACTS)); it starts over" in result.output
        )
