"""Settings refuse bad values wherever they come from: flags, --fix, --params, presets, stored studies."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.core.config import StudySpec, TrainConfig
from fmnist_search.core.errors import ConfigError
from fmnist_search.core.rules import RECIPE_RULES, SPEC_RULES, parse_fixed, parse_value

runner = CliRunner()


@pytest.mark.parametrize(
    "word,value",
    [
        ("true", True),
        ("False", False),
        ("YES", True),
        ("no", False),
        ("On", True),
        ("off", False),
        ("1", True),
        ("0", False),
    ],
)
def test_booleans_spelled_as_words_mean_what_they_say(word, value):
    assert parse_value("nesterov", word) is value
    assert parse_fixed([f"flip={word}", f"tta_flip={word}"]) == {"flip": value, "tta_flip": value}


@pytest.mark.parametrize(
    "item,message",
    [
        ("nesterov=maybe", "nesterov must be true or false, got 'maybe'"),
        ("schedule=cosin", "unknown schedule 'cosin'; choose one of: constant, cosine, onecycle"),
        ("momentum=1", "momentum must be a number in [0, 1), got 1.0"),
        ("momentum=-0.1", "momentum must be a number in [0, 1)"),
        ("label_smoothing=1", "label_smoothing must be a number in [0, 1)"),
        ("warmup_frac=1", "warmup_frac must be a number in [0, 1)"),
        ("erasing=1.5", "erasing must be a number in [0, 1]"),
        ("distill=2", "distill must be a number in [0, 1]"),
        ("distill_temp=0", "distill_temp must be a number > 0"),
        ("weight_decay=-1e-4", "weight_decay must be a number >= 0"),
        ("weight_decay=nan", "weight_decay must be a number >= 0, got nan"),
        ("lr=inf", "lr must be a number > 0"),
        ("lr=fast", "lr must be a number > 0, got 'fast'"),
        ("crop=1.5", "crop must be an integer >= 0, got '1.5'"),
        ("crop=-2", "crop must be an integer >= 0"),
        ("batch_size=0", "batch_size must be an integer >= 1"),
        ("epochs=0", "epochs must be an integer >= 1"),
        ("dropout=0.5", "unknown fixed parameter dropout"),
        ("seed=3", "unknown fixed parameter seed"),  # how a recipe is run, not the recipe
        ("lr", "--fix takes NAME=VALUE"),
    ],
)
def test_fix_refuses_values_its_field_does_not_allow(item, message):
    with pytest.raises(ConfigError) as e:
        parse_fixed([item])
    assert message in str(e.value)


def test_every_recipe_and_study_field_has_a_rule():
    assert set(RECIPE_RULES) == {f.name for f in dataclasses.fields(TrainConfig)}
    # (fixed, lr_grid and recipes have checks of their own: check_fixed, _lr_grid, _recipes)
    assert set(SPEC_RULES) == {f.name for f in dataclasses.fields(StudySpec)} - {"fixed", "lr_grid", "recipes"}


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lr": 0.1, "nesterov": "False"}, "nesterov must be true or false, got 'False'"),  # a truthy string
        ({"lr": 0.1, "epochs": 2.5}, "epochs must be an integer >= 1"),
        ({"lr": 0.1, "epochs": True}, "epochs must be an integer >= 1"),  # a bool is no count
        ({"lr": 0.1, "schedule": "cosin"}, "unknown schedule 'cosin'"),
        ({"lr": 0.1, "precision": "fp8"}, "unknown precision 'fp8'"),
        ({"lr": -1}, "lr must be a number > 0"),
        ({"lr": 0.1, "distill": 0.5}, "needs a teacher"),
    ],
)
def test_a_recipe_checks_every_field_where_it_is_built(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        TrainConfig(**kwargs)


def test_a_fixed_study_setting_must_agree_with_the_study():
    assert StudySpec(epochs=10, fixed={"epochs": 10}).fixed == {"epochs": 10}  # holds a full-space param at it
    with pytest.raises(ConfigError, match="fixed epochs=5 disagrees with the study's epochs=10; give one of them"):
        StudySpec(epochs=10, fixed={"epochs": 5})
    with pytest.raises(ConfigError, match="fixed batch_size=64 disagrees"):
        StudySpec(batch_size=128, fixed={"batch_size": 64})


def test_a_stored_study_with_a_bad_value_is_refused_when_read():
    attrs = {**StudySpec().to_attrs(), "fixed": {"nesterov": "False"}}  # what an older --fix stored
    with pytest.raises(ConfigError, match="nesterov must be true or false"):
        StudySpec.from_attrs(attrs)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--fix", "nesterov=maybe"], "nesterov must be true or false"),
        (["--fix", "schedule=cosin"], "unknown schedule 'cosin'"),
        (["--epochs", "4", "--fix", "epochs=5"], "fixed epochs=5 disagrees with the study's epochs=4"),
        (["--momentum", "1"], "momentum must be a number in [0, 1)"),
        (["--batch-size", "0"], "batch_size must be an integer >= 1"),
        (["--epochs", "0"], "epochs must be an integer >= 1"),
        (["--val-size", "0"], "val_size must be an integer in [1, 59999]"),
        (["--val-size", "60000"], "val_size must be an integer in [1, 59999]"),
        (["--train-size", "0"], "train_size must be an integer >= 1"),
        (["--lr-min", "0"], "lr_min must be a number > 0"),
        (["--lr-min", "0.3", "--lr-max", "0.1"], "lr_min (0.3) must be below lr_max (0.1)"),
        (["--seed", "-1"], "seed must be an integer >= 0"),
        (["--space", "huge"], "unknown space 'huge'"),
    ],
)
def test_a_refused_value_is_one_line_and_nothing_is_stored(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "s.db"
    for command in ("create", "run"):
        result = runner.invoke(app, [command, "--model", "lenet", "--storage", f"sqlite:///{db}", *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert message in result.output.strip().splitlines()[-1]
        assert not db.exists()  # refused before the store was opened: no file, no study


def test_a_fixed_study_setting_is_the_studys_own(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    args = ["create", "--model", "lenet", "--study", "s", "--storage", url, "--space", "full"]
    assert runner.invoke(app, [*args, "--fix", "epochs=5", "--fix", "batch_size=64"]).exit_code == 0
    attrs = optuna.load_study(study_name="s", storage=url).user_attrs
    assert (attrs["epochs"], attrs["batch_size"]) == (5, 64)  # what Hyperband and the space read
    assert (attrs["fixed"]["epochs"], attrs["fixed"]["batch_size"]) == (5, 64)
    again = runner.invoke(app, [*args, "--fix", "epochs=6"])  # a resume asking another value
    assert again.exit_code == 2 and "created with fixed.epochs=5, this run asks for fixed.epochs=6;" in again.output


def test_booleans_as_words_are_stored_as_booleans(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    fix = ["--fix", "nesterov=False", "--fix", "flip=no", "--fix", "tta_flip=ON"]
    result = runner.invoke(app, ["create", "--model", "lenet", "--study", "s", "--storage", url, *fix])
    assert result.exit_code == 0, result.output
    fixed = optuna.load_study(study_name="s", storage=url).user_attrs["fixed"]
    assert (fixed["nesterov"], fixed["flip"], fixed["tta_flip"]) == (False, False, True)


def test_train_params_are_checked_like_a_recipe():
    result = runner.invoke(app, ["train", "--model", "lenet", "--params", '{"lr": 0.1, "nesterov": "no"}'])
    assert result.exit_code == 2 and "nesterov must be true or false, got 'no'" in result.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--timeout", "0"], "--timeout must be a number of seconds > 0, got 0"),
        (["--population", "0"], "'--population': Input should be greater than or equal to 1"),
    ],
)
def test_work_options_refuse_bad_values_in_one_line(tmp_path, args, message):
    db = tmp_path / "s.db"
    result = runner.invoke(app, ["run", "--model", "lenet", "--storage", f"sqlite:///{db}", *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.output.strip().splitlines()[-1] and not db.exists()
