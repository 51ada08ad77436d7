"""Knowledge distillation: the loss, fit's use of a teacher, the teacher cache, config checks."""

from __future__ import annotations

import math

import optuna
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.core.config import StudySpec
from fmnist_search.core.errors import ConfigError
from fmnist_search.core.presets import check_recipe, load_preset
from fmnist_search.engine.teachers import cached_teacher
from fmnist_search.engine.train import TrainConfig, distillation_loss, fit, to_device
from fmnist_search.search.trials.context import TrialContext
from fmnist_search.search.trials.lifecycle import optimize

runner = CliRunner()


def test_distillation_loss_is_the_temperature_scaled_kl():
    z = torch.tensor([[2.0, 0.0, -1.0]])
    assert distillation_loss(z, z, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    s, t, temp = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 2.0
    p = F.softmax(t / temp, dim=1)  # teacher's soft targets
    q = F.softmax(s / temp, dim=1)
    by_hand = (p * (p / q).log()).sum() * temp**2
    assert distillation_loss(s, t, temp).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert distillation_loss(s, t, temp).item() > 0


def _linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))


def test_a_fully_distilled_student_learns_the_teacher_not_the_labels():
    # The labels are noise; the teacher is a fixed random linear map. With distill=1 the
    # student sees only the teacher, so it must end up agreeing with it, not with the labels.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1, 28, 28, generator=g)
    noise_labels = torch.randint(0, 10, (512,), generator=g)
    torch.manual_seed(1)
    teacher = _linear().eval().requires_grad_(False)
    torch.manual_seed(2)
    student = _linear()
    cfg = TrainConfig(lr=0.05, epochs=15, batch_size=64, teacher="t", distill=1.0, distill_temp=1.0)
    fit(student, (x, noise_labels), None, cfg, teacher=teacher)
    with torch.no_grad():
        pred = student(x).argmax(1)
        agree = (pred == teacher(x).argmax(1)).float().mean().item()
    label_acc = (pred == noise_labels).float().mean().item()
    assert agree > 0.8, agree
    assert label_acc < 0.3, label_acc


def test_fit_refuses_distill_without_a_teacher():
    x, y = torch.zeros(8, 1, 28, 28), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="needs a teacher"):
        fit(_linear(), (x, y), None, TrainConfig(lr=0.1, epochs=1, teacher="t", distill=0.5))


def test_teacher_is_trained_once_on_the_students_images_then_loaded(tiny_splits):
    said: list[str] = []
    train = to_device(*tiny_splits.train, torch.device("cpu"))
    first = cached_teacher("airbench-tuned", train, seed=0, say=said.append).net
    assert any("training airbench for 10 epochs on 400 images" in m for m in said)
    assert any(m.startswith("teacher airbench-tuned: epoch 10/10 train_acc=") for m in said)  # progress per epoch
    assert not first.training and not any(p.requires_grad for p in first.parameters())
    said.clear()
    second = cached_teacher("airbench-tuned", train, seed=0, say=said.append).net
    assert any("loaded from" in m for m in said) and not any("training" in m for m in said)
    x = train[0][:16]
    assert torch.equal(first(x), second(x))
    # other training images (another split) make another teacher: it never reuses one that saw other data
    said.clear()
    other = to_device(*tiny_splits.val, torch.device("cpu"))
    cached_teacher("airbench-tuned", other, seed=0, say=said.append)
    assert any("training" in m for m in said)
    # the teacher learned something: well above chance (10%) on held-out synthetic images
    val = to_device(*tiny_splits.test, torch.device("cpu"))
    assert (first(val[0]).argmax(1) == val[1]).float().mean().item() > 0.5


@pytest.mark.parametrize(
    "values,message",
    [
        ({"distill": 0.9}, "needs a teacher"),
        ({"teacher": "airbench-tuned"}, "unused with distill=0"),
        ({"teacher": "no-such-preset", "distill": 0.5}, "teacher: unknown preset"),
        ({"teacher": "seed-report", "distill": 0.5}, "must name one model"),
        ({"teacher": "airbench-tuned", "distill": 1.5}, r"distill must be a number in \[0, 1\]"),
        ({"teacher": "airbench-tuned", "distill": 0.5, "distill_temp": 0}, "distill_temp must be a number > 0, got 0"),
    ],
)
def test_bad_distillation_settings_are_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        check_recipe(values)


def test_a_teacher_with_a_teacher_is_refused(tmp_path):
    chained = tmp_path / "chained.toml"
    chained.write_text("model = 'lenet'\n[train]\nlr = 0.1\nteacher = 'airbench-tuned'\ndistill = 0.5\n")
    with pytest.raises(ConfigError, match="teacher of its own"):
        check_recipe({"teacher": str(chained), "distill": 0.5})


def test_a_preset_that_teaches_itself_or_a_cycle_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    recipe = "model = 'lenet'\n[fixed]\nteacher = '{t}'\ndistill = 0.5\n[train]\nlr = 0.1\n"
    (tmp_path / "studies" / "narcissus.toml").write_text(recipe.format(t="narcissus"))
    (tmp_path / "studies" / "ping.toml").write_text(recipe.format(t="pong"))
    (tmp_path / "studies" / "pong.toml").write_text(recipe.format(t="ping"))
    for preset in ("narcissus", "ping"):
        with pytest.raises(ConfigError, match="has a teacher of its own"):
            load_preset(preset)
        result = runner.invoke(app, ["train", "--preset", preset])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1 and "chains are not supported" in result.output


def test_train_cli_reports_distillation_errors_in_one_line():
    result = runner.invoke(app, ["train", "--model", "lenet", "--params", '{"lr": 0.1, "distill": 0.9}'])
    assert result.exit_code == 2
    expected = "error: distill=0.9 needs a teacher: add teacher=PRESET, e.g. teacher=airbench-tuned"
    assert result.output.strip() == expected


def test_a_study_with_a_fixed_teacher_distils_every_trial(tiny_splits):
    """Same seeds, lr and data with and without the teacher: only the teacher's term differs."""
    fixed = {"teacher": "airbench-tuned", "distill": 0.7, "distill_temp": 3.0, "lr": 0.05}
    losses = {}
    for name, fix in (("distilled", fixed), ("plain", {"lr": 0.05})):
        spec = StudySpec(epochs=2, batch_size=64, space="lr", fixed=fix)
        said: list[str] = []
        objective = TrialContext(spec, tiny_splits, torch.device("cpu"), say=said.append)
        assert set(objective.teachers) == ({"airbench-tuned"} if name == "distilled" else set())
        study = optuna.create_study(direction="maximize")
        optimize(study, objective, 2)
        for t in study.trials:
            assert t.state.name == "COMPLETE" and not math.isnan(t.value)
            if name == "distilled":
                config = t.user_attrs["config"]
                assert (config["teacher"], config["distill"], config["distill_temp"]) == ("airbench-tuned", 0.7, 3.0)
        losses[name] = [t.user_attrs["train_loss"] for t in study.trials]
    assert any("teacher airbench-tuned" in m for m in said) is False  # the plain study built no teacher
    for distilled, plain in zip(losses["distilled"], losses["plain"], strict=True):
        assert abs(distilled - plain) > 1e-3, losses  # the teacher's term changed what was minimised


@pytest.mark.slow
def test_run_trains_the_studys_teacher_once_then_resumes_with_it(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/kd.db"
    args = ["run", "--model", "lenet", "--storage", url, "--study", "kd", "--epochs", "1", "--batch-size", "64"]
    args += ["--train-size", "1024", "--val-size", "500", "--fix", "teacher=airbench-tuned", "--fix", "distill=0.5"]
    first = runner.invoke(app, [*args, "--trials", "1"])
    assert first.exit_code == 0, first.output
    assert "teacher airbench-tuned: training airbench for 10 epochs on 1024 images" in first.output
    again = runner.invoke(app, [*args, "--trials", "1"])  # one more trial: the same images, so the cached teacher
    assert again.exit_code == 0, again.output
    assert "teacher airbench-tuned: loaded from" in again.output and "training airbench" not in again.output
    study = optuna.load_study(study_name="kd", storage=url)
    assert len(study.trials) == 2
    assert all(t.user_attrs["config"]["distill"] == 0.5 for t in study.trials)


def test_teacher_cache_key_is_the_images_not_their_float_rounding(tiny_splits):
    from fmnist_search.engine.teachers import _fingerprint
    from fmnist_search.engine.train import to_device

    x, y = to_device(*tiny_splits.train, torch.device("cpu"))
    ulp_off = torch.nextafter(x, torch.full_like(x, 10.0))  # another device's normalisation, an ulp away
    key = _fingerprint("lenet", {"lr": 0.1}, 0, "fp32", (x, y))
    assert _fingerprint("lenet", {"lr": 0.1}, 0, "fp32", (ulp_off, y)) == key
    assert _fingerprint("lenet", {"lr": 0.1}, 0, "fp32", (x[1:], y[1:])) != key  # other images: another teacher


def test_looked_up_soft_targets_are_the_teachers_and_train_the_same(tiny_splits):
    """No crops, no erasing: the teacher's logits come from a table (each image and its mirror,
    computed once) instead of a forward pass per batch, with the same result."""
    from fmnist_search.engine.train import Teacher, build_model, soft_targets, to_device

    cpu = torch.device("cpu")
    x, y = (t.double() if t.is_floating_point() else t for t in to_device(*tiny_splits.train, cpu))
    net = build_model("lenet", 9, cpu).module.double().eval()
    teacher = Teacher(net)
    plain, mirror = teacher.tables(x, "fp32", 64)
    idx = torch.tensor([5, 0, 399, 17])
    flips = torch.tensor([True, False, True, False])
    looked_up = soft_targets((plain, mirror), idx, flips)
    with torch.no_grad():
        direct = net(torch.where(flips.view(-1, 1, 1, 1), x[idx].flip(-1), x[idx]))
    torch.testing.assert_close(looked_up, direct, rtol=1e-12, atol=1e-12)
    assert teacher.tables(x, "fp32", 64)[0] is plain  # computed once, then kept

    cfg = TrainConfig(lr=0.05, epochs=2, batch_size=64, flip=True, teacher="t", distill=0.7, distill_temp=3.0)
    runs = []
    for lookup in (True, False):
        model = build_model("lenet", 0, cpu).module.double()
        result = fit(model, (x, y), None, cfg, teacher=teacher, lookup=lookup)
        runs.append((model, result))
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)
    assert [m.train_loss for m in runs[0][1].history] == pytest.approx([m.train_loss for m in runs[1][1].history])


def test_the_teachers_logit_tables_are_computed_once_per_teacher_and_data(tiny_splits):
    """A second process (a new Teacher) loads the tables from beside the cached teacher instead of running it."""
    train = to_device(*tiny_splits.train, torch.device("cpu"))
    first = cached_teacher("airbench-tuned", train, seed=0)
    plain, mirror = first.tables(train[0], "fp32", 64)
    files = sorted(first.cache.parent.glob(f"{first.cache.name}-logits-*.pt"))
    assert len(files) == 1
    second = cached_teacher("airbench-tuned", train, seed=0)

    class Refuses(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("the teacher ran: its tables were not loaded")

    second.net = Refuses()
    loaded = second.tables(train[0], "fp32", 64)
    assert torch.equal(loaded[0], plain) and torch.equal(loaded[1], mirror)
    assert first._file(train[0][:100], "fp32", 64) != files[0]  # other images, another file
    assert first._file(train[0], "fp32", 128) != files[0]  # another batch size (other kernels), another file
