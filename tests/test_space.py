"""Search space, schedules, augmentation, presets and `train` (issue: accuracy)."""

from __future__ import annotations

import itertools
from pathlib import Path

import optuna
import pytest
import torch
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.core.config import StudySpec
from fmnist_search.core.errors import ConfigError
from fmnist_search.core.presets import load_preset, preset_names
from fmnist_search.engine import augment
from fmnist_search.engine.schedules import make_scheduler
from fmnist_search.engine.train import BACKGROUND, TrainConfig, augment_batch
from fmnist_search.search.trials.context import TrialContext
from fmnist_search.search.trials.lifecycle import optimize
from fmnist_search.search.trials.space import PARAMS

runner = CliRunner()


def lrs(schedule: str, total: int, warmup: float, lr: float = 0.1) -> list[float]:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = make_scheduler(opt, schedule, total, warmup)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_constant_schedule_with_and_without_warmup():
    assert lrs("constant", 10, 0.0) == [0.1] * 10
    warm = lrs("constant", 10, 0.2)  # 2 warm-up steps
    assert warm[0] == pytest.approx(0.05) and warm[1:] == pytest.approx([0.1] * 9)


def test_cosine_schedule_values():
    values = lrs("cosine", 100, 0.0)
    assert values[0] == pytest.approx(0.1)
    assert values[50] == pytest.approx(0.05)  # half way: half the peak
    assert 0 < values[99] < 1e-4  # it reaches 0 after the last step
    warm = lrs("cosine", 100, 0.1)  # 10 warm-up steps
    assert warm[0] == pytest.approx(0.01) and warm[9] == pytest.approx(0.1)
    after_warmup = warm[9:]
    assert all(a >= b for a, b in itertools.pairwise(after_warmup))


def test_onecycle_peaks_at_the_end_of_warmup():
    values = lrs("onecycle", 100, 0.3)
    peak = max(range(100), key=values.__getitem__)
    assert values[peak] == pytest.approx(0.1) and 28 <= peak <= 30
    assert values[0] == pytest.approx(0.1 / 25)  # torch's div_factor
    assert values[-1] < 1e-4


@pytest.mark.parametrize("total,warmup", [(100, 0.3), (37, 0.15), (7, 0.3), (3, 0.25), (10, 0.0)])
def test_onecycle_is_torchs_curve(total: int, warmup: float):
    from torch.optim.lr_scheduler import OneCycleLR

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=total, pct_start=warmup or 0.25, cycle_momentum=False)
    theirs = []
    for _ in range(total):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs("onecycle", total, warmup) == pytest.approx(theirs, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("total,warmup", [(4, 0.25), (10, 0.1), (5, 0.2), (1, 0.3), (2, 0.3)])
def test_onecycle_on_a_few_steps(total: int, warmup: float):
    """A warm-up of exactly one step (torch's OneCycleLR divides by zero there) or a single step."""
    values = lrs("onecycle", total, warmup)
    assert len(values) == total and all(0 < v <= 0.1 + 1e-12 for v in values)  # (torch's: a ZeroDivisionError)
    assert values[-1] == min(values)  # it still ends at its lowest


def _identity_batch(n: int = 64) -> torch.Tensor:
    """Sample i is the constant image i+1 (so a sample's identity survives any augmentation)."""
    return torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 28, 28).clone()


def test_crop_keeps_shape_order_and_content():
    g = torch.Generator().manual_seed(0)
    x = _identity_batch()
    out = augment.random_crop(x, 4, fill=-1.0, g=g)
    assert out.shape == x.shape
    for i in range(len(x)):
        values = set(out[i].unique().tolist())
        assert values <= {i + 1.0, -1.0} and i + 1.0 in values  # its own pixels, or padding
    assert (out == -1.0).any()  # some windows were shifted into the padding
    assert torch.equal(augment.random_crop(x, 0, -1.0, g), x)


def test_crop_is_a_real_shift():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1
    g = torch.Generator().manual_seed(1)
    shifted = [tuple(augment.random_crop(x, 2, 0.0, g)[0, 0].nonzero()[0].tolist()) for _ in range(30)]
    assert all(8 <= r <= 12 and 8 <= c <= 12 for r, c in shifted) and len(set(shifted)) > 5


def test_flip_mirrors_about_half():
    x = torch.randn(200, 1, 28, 28)
    out = augment.random_flip(x, torch.Generator().manual_seed(0))
    same = [torch.equal(out[i], x[i]) for i in range(200)]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(200)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True))
    assert 60 < sum(mirrored) < 140


def test_erasing_probability_and_area():
    x = _identity_batch(100)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment.random_erasing(x, 0.0, g), x)
    out = augment.random_erasing(x, 1.0, g)
    erased = (out == 0).float().mean(dim=(1, 2, 3))
    assert (erased > 0).all() and erased.min() >= 0.005 and erased.max() <= 0.4
    for i in range(100):  # the rest of each sample is untouched
        assert set(out[i].unique().tolist()) <= {0.0, i + 1.0}


def test_augment_batch_composes_what_the_config_asks():
    x = _identity_batch(32)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, TrainConfig(lr=0.1), g), x)
    out = augment_batch(x, TrainConfig(lr=0.1, crop=2, flip=True, erasing=0.5), g)
    assert out.shape == x.shape
    assert ((out == BACKGROUND) | (out == 0)).any()


def test_full_space_records_every_sampled_param(tiny_splits):
    spec = StudySpec(space="full", epochs=2, fixed={"schedule": "cosine"})
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optimize(study, TrialContext(spec, tiny_splits, torch.device("cpu")), 2)
    for t in study.trials:
        assert set(t.params) == set(PARAMS) - {"schedule"}  # every sampled one; the fixed one is not sampled
        config = t.user_attrs["config"]
        assert config["schedule"] == "cosine"
        assert all(config[k] == v for k, v in t.params.items())
        assert t.state.name in ("COMPLETE", "PRUNED", "FAIL")


def test_unknown_fixed_parameters_and_spaces_are_refused():
    with pytest.raises(ConfigError, match="unknown fixed parameter"):
        StudySpec(fixed={"dropout": 0.5})
    with pytest.raises(ConfigError, match="unknown space"):
        StudySpec(space="huge")


def test_every_shipped_preset_loads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no studies/ here: the presets come from the package
    names = preset_names()
    assert names == [
        "airbench-tuned",
        "compare",
        "lenet-base",
        "lenet-tuned",
        "resnet18-tuned",
        "resnet34-tuned",
        "seed-report",
    ]
    for name in names:
        preset = load_preset(name)
        assert preset.description


def test_seed_report_preset_is_the_report_protocol():
    p = load_preset("seed-report")
    assert p.models == ("lenet", "resnet18", "resnet34") and p.study == "seed-report-{model}" and p.trials == 3
    spec = StudySpec(**p.settings, model="lenet")
    assert spec.sampler == "grid" and spec.lr_grid == (0.1, 0.05, 0.01)
    assert (spec.momentum, spec.batch_size, spec.epochs) == (0.0, 256, 10)


@pytest.mark.parametrize(
    "body,message",
    [
        ("epochs = 10\ncolour = 'red'\n", "unknown key"),
        ("epochs = 0\n", "epochs must be an integer >= 1, got 0"),
        ("[train]\nlr = 0.1\ndropout = 0.2\n", "unknown fixed parameter"),
        ("[train]\nlr = 0.1\nfull_train = 'yes'\n", "full_train must be true or false"),
        ("epochs = [\n", "not valid TOML"),
    ],
)
def test_bad_presets_are_errors(tmp_path: Path, body: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text("description = 'x'\n" + body)
    with pytest.raises(ConfigError, match=message):
        load_preset(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["lenet-tuned", "airbench-tuned"])
def test_train_with_a_preset_on_a_tiny_subset(tmp_path, real_data, preset):
    weights = tmp_path / "w.pt"
    args = ["train", "--preset", preset, "--epochs", "1", "--train-size", "2048", "--val-size", "1000"]
    args += ["--save", str(weights)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("test_accuracy=")
    assert any(line.startswith("epoch 1/1:") for line in lines)
    fitted = {"lenet-tuned": 3048, "airbench-tuned": 2048}[preset]  # lenet-tuned's final fit: train + val
    assert any(f" on {fitted} images" in line for line in lines)
    assert 0.1 < float(lines[-1].split("=")[1]) <= 1.0
    assert weights.stat().st_size > 10_000
    # evaluate --tta-flip reproduces train's figure (both presets evaluate with flip TTA)
    again = runner.invoke(app, ["evaluate", "--weights", str(weights), "--tta-flip", "--output-dir", str(tmp_path)])
    assert again.exit_code == 0, again.output
    assert again.stdout.strip().splitlines()[-1] == lines[-1]


def test_a_presets_final_fit_on_train_and_validation_and_the_flag_that_overrides_it(tmp_path, real_data):
    preset = tmp_path / "final.toml"
    preset.write_text("description = 'x'\nmodel = 'lenet'\n[train]\nlr = 0.05\nfull_train = true\n")
    base = ["train", "--preset", str(preset), "--epochs", "1", "--train-size", "2048", "--val-size", "1000"]
    for extra, images, val_shown in (([], 3048, False), (["--no-full-train"], 2048, True)):
        result = runner.invoke(app, base + extra)
        assert result.exit_code == 0, result.output
        assert f"train lenet on {images} images" in result.stdout
        epoch = next(line for line in result.stdout.splitlines() if line.startswith("epoch 1/1:"))
        assert ("val_acc=" in epoch) is val_shown


def test_train_errors():
    result = runner.invoke(app, ["train", "--model", "lenet", "--params", "{not json"])
    assert result.exit_code == 2 and "not valid JSON" in result.output
    result = runner.invoke(app, ["train", "--model", "lenet"])
    assert result.exit_code == 2 and "no learning rate" in result.output
    result = runner.invoke(app, ["train", "--model", "lenet", "--params", '{"lr": 0.1, "dropout": 0.3}'])
    assert result.exit_code == 2 and "unknown fixed parameter" in result.output


def test_fix_adds_to_a_presets_fixed_table(tmp_path):
    # lenet-tuned fixes epochs=10 and crop=0; --fix must add tta_flip and override crop, not drop epochs.
    from fmnist_search.search.study import load_study, stored_spec

    url = f"sqlite:///{tmp_path}/s.db"
    args = ["create", "--preset", "lenet-tuned", "--study", "s", "--storage", url, "--fix", "tta_flip=true"]
    result = runner.invoke(app, [*args, "--fix", "crop=2"])
    assert result.exit_code == 0, result.output
    spec = stored_spec(load_study(url, "s"))
    teacher = {"teacher": "airbench-tuned", "distill": 0.9, "distill_temp": 4.0}
    assert spec.fixed == {"epochs": 10, "crop": 2, "tta_flip": True, **teacher}
