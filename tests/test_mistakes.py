"""A mistake is one line, a non-zero exit, and creates nothing: a mistyped store, study, data
folder or value never quietly does something else than asked."""

from __future__ import annotations

import os

import optuna
import pytest
from typer.testing import CliRunner

from fmnist_search.cli import app

runner = CliRunner()
TINY = ["--epochs", "1", "--train-size", "384", "--val-size", "300", "--batch-size", "96"]

READS = [
    ["studies"],
    ["show", "--study", "lenet"],
    ["export", "--study", "lenet"],
    ["report", "--study", "lenet"],
    ["plot", "--study", "lenet"],
    ["evaluate", "--study", "lenet"],
    ["dashboard"],
    ["prune-artifacts", "--dry-run"],
    ["train", "--from-study", "lenet"],
    ["delete", "--study", "lenet", "--yes"],
    ["worker", "--study", "lenet", "--storage-patience", "0"],  # (a worker waits for the file that long)
]


def _one_completed_trial(url: str) -> None:
    """Study ``lenet`` in ``url`` gets a completed trial (without training one)."""
    study = optuna.load_study(study_name="lenet", storage=url)
    lr = optuna.distributions.FloatDistribution(0.01, 0.4, log=True)
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, distributions={"lr": lr}, value=0.5))


def _one_error_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


@pytest.mark.parametrize("args", READS, ids=[a[0] for a in READS])
@pytest.mark.parametrize("storage", [None, "sqlite:///nosuchdir/s.db"], ids=["default", "mistyped"])
def test_a_read_on_a_store_that_is_not_there_creates_nothing(tmp_path, monkeypatch, args, storage):
    monkeypatch.chdir(tmp_path)  # another folder than the one the studies live in
    result = runner.invoke(app, [*args, *(["--storage", storage] if storage else [])])
    line = _one_error_line(result)
    path = tmp_path / ("nosuchdir/s.db" if storage else "studies/fmnist.db")
    assert line.startswith(f"error: no study store at {path}: a study is created with `fmnist-search run")
    assert os.listdir(tmp_path) == []  # no folder, no database, no artifact folder


@pytest.fixture
def two_studies(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    for name in ("lenet-small", "airbench"):
        result = runner.invoke(app, ["create", "--model", name.split("-")[0], "--study", name, "--storage", url])
        assert result.exit_code == 0, result.output
    return url


@pytest.mark.parametrize("command", ["run", "create"])
def test_an_unknown_study_without_a_model_is_refused_naming_the_closest(two_studies, command):
    result = runner.invoke(app, [command, "--study", "lenet-smal", "--trials", "1", "--storage", two_studies])
    line = _one_error_line(result)
    assert "no study named 'lenet-smal'" in line and "(studies: lenet-small, airbench)" in line
    assert "give --model (or --preset) to create it" in line
    assert sorted(s.study_name for s in optuna.get_all_study_summaries(two_studies)) == ["airbench", "lenet-small"]
    # With --model, the same name is a new study.
    result = runner.invoke(app, ["create", "--study", "lenet-smal", "--model", "lenet", "--storage", two_studies])
    assert result.exit_code == 0, result.output


def test_a_read_of_an_unknown_study_names_the_closest_first(two_studies):
    line = _one_error_line(runner.invoke(app, ["show", "--study", "airbech", "--storage", two_studies]))
    assert line == "error: no study named 'airbech' in this storage (studies: airbench, lenet-small)"


@pytest.mark.parametrize("jobs", ["1", "2"])  # here, or in worker processes (the parent only finds the data)
def test_a_chosen_data_folder_without_the_data_is_refused(tmp_path, real_data, jobs):
    url = f"sqlite:///{tmp_path}/d.db"
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(
        app,
        [
            "run",
            "--model",
            "lenet",
            "--trials",
            "1",
            "--storage",
            url,
            "--data-dir",
            str(empty),
            "--no-download",
            "--jobs",
            jobs,
            *TINY,
        ],
    )
    line = _one_error_line(result)
    assert line.startswith(f"error: {empty} holds no Fashion-MNIST (missing train-images-idx3-ubyte")
    assert optuna.get_all_study_summaries(url) == []  # refused before the study was created
    line = _one_error_line(runner.invoke(app, ["data", "--data-dir", str(empty)]))
    assert line == "error: Fashion-MNIST not found in the folder you chose; " + line.split("; ", 1)[1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "--trials", "-1"], "error: Invalid value for '--trials'"),
        (["export", "--study", "x", "--top", "0"], "error: Invalid value for '--top'"),
        (["predict"], "error: Missing argument 'images' (see `fmnist-search predict --help`)"),
        (["dashboard", "--port", "80000"], "error: Invalid value for '--port'"),
        (["run", "--no-such-option"], "error: No such option: --no-such-option"),
    ],
)
def test_a_usage_error_is_one_line(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _one_error_line(runner.invoke(app, args, prog_name="fmnist-search")).startswith(expected)
    assert os.listdir(tmp_path) == []


def test_a_bare_command_still_shows_its_help():
    result = runner.invoke(app, [])
    assert "Usage:" in result.output and "run" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--model", ""], "error: model is empty; choose one or more"),
        (["--model", "lenet,lenet"], "error: model names lenet more than once; give each once"),
        (["--model", "lenet", "--train-size", "5"], "error: train_size=5 is fewer images than the 10 classes"),
        (
            ["--model", "lenet", "--train-size", "100000"],
            "error: train_size=100,000 is more than the 50,000 training images left after val_size=10,000",
        ),
        (
            ["--model", "lenet", "--storage", "studies/x.db"],
            "for the SQLite file studies/x.db write sqlite:///studies/x.db",
        ),
        (
            ["--model", "lenet", "--storage", "mysql://u:pw@localhost/db"],
            "mysql:// means the mysqlclient driver, which is not installed; write mysql+pymysql://u:***@localhost/db",
        ),
    ],
    ids=["empty-model", "model-twice", "train-size-5", "train-size-100000", "a-path", "mysql-url"],
)
@pytest.mark.parametrize("command", ["run", "create"])
def test_a_mistaken_value_says_what_is_wrong_and_creates_nothing(tmp_path, monkeypatch, command, args, says):
    monkeypatch.chdir(tmp_path)
    line = _one_error_line(runner.invoke(app, [command, "--trials", "1", *args]))
    assert says in line and "pw" not in line
    assert os.listdir(tmp_path) == []


def test_every_output_file_follows_one_rule_its_folder_is_made(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    made = runner.invoke(app, ["create", "--model", "lenet", "--trials", "1", "--storage", url])
    assert made.exit_code == 0, made.output
    # a command to copy, not a placeholder: the store it used, and "1 trial"
    assert (
        f"has a target of 1 trial; start workers with:\n  fmnist-search worker --study lenet --storage {url}"
        in made.output
    )
    _one_completed_trial(url)  # something to write
    for command in (["export"], ["report"]):
        out = tmp_path / "missing" / command[0] / "out.txt"
        result = runner.invoke(app, [*command, "--study", "lenet", "--storage", url, "--output", str(out)])
        assert result.exit_code == 0 and out.is_file(), result.output
    (tmp_path / "a-folder").mkdir()
    line = _one_error_line(
        runner.invoke(app, ["export", "--study", "lenet", "--storage", url, "-o", str(tmp_path / "a-folder")])
    )
    assert line.startswith(f"error: cannot write {tmp_path / 'a-folder'}: ") and "None" not in line


@pytest.mark.parametrize("command", ["run", "create"])
@pytest.mark.parametrize("storage", [None, "sqlite:///new.db"], ids=["default-elsewhere", "new-file"])
def test_resuming_a_study_by_name_on_a_store_that_is_not_there_creates_nothing(tmp_path, monkeypatch, command, storage):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, [command, "--study", "typo", "--trials", "1", *(["--storage", storage] if storage else [])]
    )
    line = _one_error_line(result)
    assert line.startswith(f"error: no study store at {tmp_path / ('new.db' if storage else 'studies/fmnist.db')}")
    assert result.exit_code == 2 and os.listdir(tmp_path) == []


def test_delete_with_no_answer_and_a_study_named_twice(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    assert runner.invoke(app, ["create", "--model", "lenet", "--trials", "1", "--storage", url]).exit_code == 0
    asked = runner.invoke(app, ["delete", "--study", "lenet", "--storage", url], input="")  # stdin closed
    assert asked.exit_code == 1 and "Aborted" not in asked.output, asked.output
    assert asked.output.rstrip().endswith("error: nothing deleted: no answer; add --yes to delete without asking")
    _one_completed_trial(url)  # a row to report
    once = runner.invoke(app, ["report", "--study", "lenet", "--storage", url])
    twice = runner.invoke(app, ["report", "--study", "lenet", "--study", "lenet", "--storage", url])
    assert twice.exit_code == 0 and twice.output == once.output


_RUN_OUTPUT: dict[str, str] = {}  # what `run` printed, by store


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_data):
    """A store with one completed LeNet trial (its weights saved)."""
    root = tmp_path_factory.mktemp("trained")
    url = f"sqlite:///{root}/s.db"
    result = runner.invoke(app, ["run", "--model", "lenet", "--trials", "1", "--storage", url, *TINY])
    assert result.exit_code == 0, result.output
    _RUN_OUTPUT[url] = result.output
    return url


def test_a_run_says_its_store_file_and_its_settings_as_people_read_them(trained, tmp_path, monkeypatch):
    first, second = _RUN_OUTPUT[trained].splitlines()[:2]
    assert first.startswith(f"study 'lenet' in {trained}: target 1 trial; lenet, 1 epoch, batch 96, 384 train / 300")
    assert second.startswith("  searches lr 0.01..0.4 (tpe sampler, median pruner); fixed: nesterov, weight_decay ")
    assert not set("{}[]'") & set(second)  # no Python reprs
    monkeypatch.chdir(tmp_path)  # the default store is relative: the file itself is named
    created = runner.invoke(app, ["create", "--model", "lenet", "--trials", "1"])
    assert f"sqlite:///studies/fmnist.db ({tmp_path / 'studies' / 'fmnist.db'})" in created.output, created.output


@pytest.mark.parametrize(
    "args,says",
    [
        (["train", "--from-study", "lenet", "--save", "{folder}"], "{folder}: it is a folder; name a file in it"),
        (["train", "--from-study", "lenet", "--save", "{file}/best.pt"], "{file}/best.pt: {file} is a file"),
        (["export", "--study", "lenet", "--output", "{folder}"], "{folder}: it is a folder"),
        (["report", "--study", "lenet", "--csv", "{folder}"], "{folder}: it is a folder"),
        (["plot", "--study", "lenet", "--output-dir", "{file}"], "to {file}: it is a file; name a folder"),
        (["evaluate", "--study", "lenet", "--output-dir", "{file}"], "to {file}: it is a file; name a folder"),
    ],
    ids=["save-folder", "save-under-file", "export-folder", "csv-folder", "plot-file", "evaluate-file"],
)
def test_an_output_that_names_a_folder_or_a_file_is_refused_before_any_work(trained, tmp_path, args, says):
    """(``train`` refused before its first epoch; read-only folders: tests/test_readonly.py.)"""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("x")
    where = {"folder": tmp_path / "folder", "file": tmp_path / "file"}
    line = _one_error_line(runner.invoke(app, [*(a.format(**where) for a in args), "--storage", trained]))
    assert line.startswith("error: cannot write ") and says.format(**where) in line
    assert sorted(os.listdir(tmp_path)) == ["file", "folder"] and os.listdir(where["folder"]) == []


def test_evaluate_writes_its_page_only_when_asked(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", trained])
    assert result.exit_code == 0 and "test_accuracy=" in result.output, result.output
    assert os.listdir(tmp_path) == []  # no confusion-*.html in the current folder
    asked = runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", trained, "--output-dir", "out"])
    assert asked.exit_code == 0 and [p.name for p in (tmp_path / "out").iterdir()] == ["confusion-lenet-trial-0.html"]


@pytest.mark.parametrize(
    "args,says",
    [
        (["export"], "study 'lenet' has no completed trial yet: nothing to export (--all writes every trial)"),
        (["export", "--all"], "study 'lenet' has no trial yet: nothing to export"),
        (["export", "--history"], "study 'lenet' has no trial that finished an epoch yet: nothing to export"),
        (["report"], "no completed trial in study 'lenet' yet: nothing to report"),
        (["plot", "--output-dir", "plots"], "study 'lenet' has no trial that finished an epoch yet: nothing to plot"),
    ],
    ids=["export", "export-all", "history", "report", "plot"],
)
def test_an_output_of_a_study_with_nothing_to_show_says_so(tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/s.db"
    assert runner.invoke(app, ["create", "--model", "lenet", "--trials", "1", "--storage", url]).exit_code == 0
    line = _one_error_line(runner.invoke(app, [args[0], "--study", "lenet", *args[1:], "--storage", url]))
    assert line == f"error: {says}"
    assert not [p for p in os.listdir(tmp_path) if not p.startswith("s.db")]  # no empty page or file
