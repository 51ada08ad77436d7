"""Results people use: the report table, plots, weights as artifacts, evaluate and predict."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState, create_trial
from PIL import Image
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.core.config import StudySpec
from fmnist_search.engine import data
from fmnist_search.engine.train import predict_proba
from fmnist_search.search.artifacts.weights import load_weights, open_store
from fmnist_search.search.results.export import trials_frame
from fmnist_search.search.results.plots import curves_data, learning_curves, study_figures
from fmnist_search.search.results.report import report_frame, to_markdown
from fmnist_search.search.study import make_storage, open_study
from fmnist_search.search.trials import lifecycle as lifecycle_mod
from fmnist_search.search.trials.context import TrialContext
from fmnist_search.search.trials.lifecycle import optimize
from fmnist_search.search.trials.record import TrialRecord

runner = CliRunner()


def _grid_study(tmp_path: Path, epochs: int = 10) -> optuna.Study:
    """A seed-report-like study with three stored trials (real Optuna trials, made by hand)."""
    storage = make_storage(f"sqlite:///{tmp_path}/r.db", heartbeat=False)
    requested = {
        "model": "lenet",
        "sampler": "grid",
        "lr_grid": [0.1, 0.05, 0.01],
        "momentum": 0.0,
        "epochs": epochs,
        "pruner": "none",
    }
    study, _ = open_study(storage, "seed-report-lenet", requested)
    dist = {"lr": optuna.distributions.FloatDistribution(1e-3, 0.5, log=True)}
    for i, lr in enumerate([0.1, 0.05, 0.01]):
        history = [
            {
                "epoch": e,
                "train_loss": 1 / e,
                "train_accuracy": 0.5 + e / 100,
                "val_accuracy": 0.5 + e / 50,
                "val_loss": 1.0,
                "train_time_s": 1.0,
                "samples": 100,
            }
            for e in range(1, 4)
        ]
        attrs = {
            "train_accuracy": 0.9 - i / 100,
            "test_accuracy": 0.8 + i / 100,
            "throughput": 1000.0 + i,
            "device": "cpu",
            "device_name": "test cpu",
            "history": history,
        }
        study.add_trial(create_trial(params={"lr": lr}, distributions=dist, value=0.85 + i / 100, user_attrs=attrs))
    return study


def test_report_rows_match_stored_trials_and_the_report(tmp_path):
    study = _grid_study(tmp_path)
    frame = report_frame([study])
    assert frame["lr"].tolist() == [0.1, 0.05, 0.01]
    by_lr = {t.params["lr"]: t for t in study.trials}
    for row in frame.itertuples():
        t = by_lr[row.lr]
        assert row.val_accuracy == t.value and row.test_accuracy == t.user_attrs["test_accuracy"]
        assert row.samples_per_s == t.user_attrs["throughput"] and row.device == "test cpu"
    lenet_01 = frame.iloc[0]
    assert (lenet_01.report_train_accuracy, lenet_01.report_test_accuracy) == (0.894, 0.835)
    md = to_markdown(frame)
    row = f"| lenet | 0.1 | {by_lr[0.1].number} | 90.0% | 85.0% | 80.0% | 1,000 | test cpu | 89.4% | 83.5% | 50,245 |"
    assert row in md


def test_report_leaves_out_report_figures_when_the_recipe_differs(tmp_path):
    frame = report_frame([_grid_study(tmp_path, epochs=3)])
    assert frame["report_test_accuracy"].isna().all()
    assert "| — | — | — |" in to_markdown(frame)


def test_report_command_writes_markdown_and_csv(tmp_path):
    study = _grid_study(tmp_path)
    md, csv = tmp_path / "report.md", tmp_path / "report.csv"
    url = f"sqlite:///{tmp_path}/r.db"
    result = runner.invoke(
        app, ["report", "--study", study.study_name, "--storage", url, "-o", str(md), "--csv", str(csv)]
    )
    assert result.exit_code == 0, result.output
    assert md.read_text().count("\n| lenet |") == 3
    assert len(csv.read_text().splitlines()) == 4


def test_learning_curves_have_a_trace_per_trial_and_panel(tmp_path):
    study = _grid_study(tmp_path)
    data_ = curves_data(study)
    fig = learning_curves("s", data_)
    assert len(data_) == 3 and len(fig.data) == 9  # 3 trials x (train loss, train acc, val acc)
    assert list(fig.data[2].y) == [h["val_accuracy"] for h in data_[0]["history"]]
    names = set(study_figures(study))
    assert {"learning_curves", "optimization_history", "slice", "timeline"} <= names
    assert "param_importances" not in names  # a single parameter has no importances


def _plotted(tmp_path: Path) -> tuple[optuna.Study, Path, str]:
    """`plot` of a 3-trial grid study: the study, the folder it wrote, the storage URL."""
    study = _grid_study(tmp_path)
    out = tmp_path / "plots"
    url = f"sqlite:///{tmp_path}/r.db"
    result = runner.invoke(app, ["plot", "--study", study.study_name, "--storage", url, "--output-dir", str(out)])
    assert result.exit_code == 0, result.output
    return study, out, url


def test_plot_command_writes_every_figure(tmp_path):
    study, out, url = _plotted(tmp_path)
    for name in ("learning_curves", "optimization_history", "slice", "timeline"):
        assert (out / f"{name}.html").stat().st_size > 2000
    assert "trial 0 lr=0.1" in (out / "learning_curves.html").read_text()
    assert 'href="learning_curves.html"' in (out / "index.html").read_text()
    # the learning curves are also attached to the study for optuna-dashboard
    storage = make_storage(url, heartbeat=False)
    attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(study.study_name))
    assert any("learning-curves" in k for k in attrs)


def test_weights_round_trip_through_the_artifact_store(tmp_path, tiny_splits, monkeypatch):
    store = open_store(tmp_path / "artifacts")
    spec = StudySpec(epochs=2, batch_size=32, lr_min=0.02, lr_max=0.1)
    obj = TrialContext(spec, tiny_splits, torch.device("cpu"), artifact_store=store)
    study = optuna.create_study(direction="maximize")
    models = []
    real_build = lifecycle_mod.build_model

    def spy(*args):
        built = real_build(*args)
        models.append(built.module)  # the module the trial trains
        return built

    monkeypatch.setattr(lifecycle_mod, "build_model", spy)
    optimize(study, obj, 1)
    t = study.trials[0]
    name, loaded, _ = load_weights(store, TrialRecord.of(t).weights_artifact)
    assert name == "lenet"
    # optuna-dashboard serves it as a download: binary, not the ".pt" guess ("snesdev-page-table")
    (meta,) = [json.loads(v) for k, v in t.system_attrs.items() if k.startswith("artifacts:")]
    assert meta["mimetype"] == "application/octet-stream" and meta["filename"].endswith(".pt")
    x = obj.val[0]
    assert torch.allclose(predict_proba(loaded, x), predict_proba(models[0], x), atol=1e-6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, real_data):
    """A small real LeNet study whose best trial has saved weights."""
    root = tmp_path_factory.mktemp("trained")
    url = f"sqlite:///{root}/t.db"
    args = [
        "run",
        "--model",
        "lenet",
        "--trials",
        "2",
        "--storage",
        url,
        "--epochs",
        "2",
        "--train-size",
        "8192",
        "--val-size",
        "2000",
        "--batch-size",
        "64",
        "--lr-min",
        "0.03",
        "--lr-max",
        "0.1",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (root / "t-artifacts").is_dir()
    return root, url


def test_evaluate_prints_per_class_accuracy_and_writes_confusion_html(trained, tmp_path):
    _, url = trained
    result = runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", url, "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    accuracy = float(re.search(r"test_accuracy=([0-9.]+)", result.stdout).group(1))
    assert accuracy > 0.6  # chance is 0.1
    for name in ("Trouser", "Sandal", "Bag"):
        assert name in result.stdout
    (html,) = tmp_path.glob("confusion-*.html")
    assert "heatmap" in html.read_text()


def test_evaluate_reproduces_a_bf16_trials_stored_test_accuracy(tmp_path, real_data):
    """Trained under bf16 autocast, evaluated in fp32 by both the trial and `evaluate`: the same figure."""
    url = f"sqlite:///{tmp_path}/bf.db"
    args = [
        "run",
        "--model",
        "lenet",
        "--trials",
        "1",
        "--storage",
        url,
        "--epochs",
        "1",
        "--train-size",
        "2048",
        "--val-size",
        "1000",
        "--batch-size",
        "64",
        "--precision",
        "bf16",
        "--lr-min",
        "0.05",
        "--lr-max",
        "0.1",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (trial,) = optuna.load_study(study_name="lenet", storage=url).trials
    assert trial.user_attrs["precision"] == "bf16"
    result = runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", url, "--output-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    printed = re.search(r"test accuracy ([0-9.]+) on 10000 images", result.stdout).group(1)
    assert printed == f"{trial.user_attrs['test_accuracy']:.4f}"
    # Exactly: 10,000 test images, so accuracies are multiples of 1e-4.
    evaluated = float(re.search(r"test_accuracy=([0-9.]+)", result.stdout).group(1))
    assert round(evaluated * 10_000) == round(trial.user_attrs["test_accuracy"] * 10_000)


def _save_png(img: torch.Tensor, path: Path) -> Path:
    Image.fromarray(img.numpy()).save(path)
    return path


def test_predict_real_test_images_from_png(trained, tmp_path, real_data):
    _, url = trained
    idx = list(range(30))
    paths = [_save_png(real_data.test_images[i], tmp_path / f"{i}.png") for i in idx]
    inverted = _save_png(255 - real_data.test_images[0], tmp_path / "inverted.png")
    result = runner.invoke(app, ["predict", "--study", "lenet", "--storage", url, *map(str, paths), str(inverted)])
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(str(tmp_path))]
    assert len(lines) == 31
    predicted = [ln.split(": ", 1)[1].rsplit(" ", 1)[0] for ln in lines[:30]]
    truth = [data.CLASSES[int(real_data.test_labels[i])] for i in idx]
    correct = sum(p == t for p, t in zip(predicted, truth, strict=True))
    assert correct >= 15, (predicted, truth)  # chance would be ~3 of 30
    probs = [float(ln.rsplit(" ", 1)[1].split()[0]) for ln in lines[:30]]
    assert all(0.1 <= p <= 1 for p in probs)
    assert "(inverted" in lines[30] and lines[30].split(": ")[1].split(" 0.")[0] == predicted[0]


def test_predict_and_evaluate_errors(trained, tmp_path):
    _, url = trained
    junk = tmp_path / "junk.png"
    junk.write_text("not an image")
    result = runner.invoke(app, ["predict", "--study", "lenet", "--storage", url, str(junk)])
    assert result.exit_code == 2 and "cannot read image" in result.output
    result = runner.invoke(app, ["predict", "--study", "lenet", "--storage", url, str(tmp_path / "none.png")])
    assert result.exit_code == 2 and "not found" in result.output
    result = runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", url, "--artifacts", str(tmp_path / "x")])
    assert result.exit_code == 2 and "artifact folder" in result.output
    result = runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", url, "--trial", "99"])
    assert result.exit_code == 2 and "no trial 99" in result.output
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 2 and "--study NAME" in result.output


def test_trial_without_weights(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/n.db"
    args = [
        "run",
        "--model",
        "lenet",
        "--trials",
        "1",
        "--storage",
        url,
        "--epochs",
        "1",
        "--train-size",
        "512",
        "--val-size",
        "500",
        "--no-save-weights",
    ]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["evaluate", "--study", "lenet", "--storage", url])
    assert result.exit_code == 2 and "has no saved weights" in result.output
    assert math.isfinite(optuna.load_study(study_name="lenet", storage=url).best_value)
    assert optuna.load_study(study_name="lenet", storage=url).trials[0].state == TrialState.COMPLETE


def test_each_trial_keeps_one_colour_across_panels(tmp_path):
    fig = learning_curves("s", curves_data(_grid_study(tmp_path)))
    by_trial: dict[str, set[str]] = {}
    for trace in fig.data:
        by_trial.setdefault(trace.name, set()).add(trace.line.color)
    assert len(by_trial) == 3 and all(len(colours) == 1 for colours in by_trial.values())
    assert len({next(iter(c)) for c in by_trial.values()}) == 3


def test_plot_index_is_the_study_on_one_page_and_works_offline(tmp_path):
    from html.parser import HTMLParser

    study, out, _ = _plotted(tmp_path)

    class Page(HTMLParser):
        def __init__(self):
            super().__init__()
            self.ids, self.scripts, self.cells, self.headings, self._tag = [], [], [], [], None

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            self._tag = tag
            if "id" in a:
                self.ids.append(a["id"])
            if tag == "script" and a.get("src"):
                self.scripts.append(a["src"])

        def handle_data(self, data):
            if self._tag in ("td", "th") and data.strip():
                self.cells.append(data.strip())
            if self._tag in ("h2", "h3"):
                self.headings.append(data.strip())

    page = Page()
    page.feed((out / "index.html").read_text())
    # settings, counts, best trial, the report's table, then the figures, learning curves first
    assert [i for i in page.ids if not i.startswith("figure-")][:4] == ["settings", "counts", "best", "report"]
    figures = [i for i in page.ids if i.startswith("figure-")]
    assert figures[0] == "figure-learning_curves" and "figure-optimization_history" in figures
    assert "seed-report-lenet" in (out / "index.html").read_text()
    best = max(study.trials, key=lambda t: t.value)
    assert str(best.number) in page.cells and "test cpu" in page.cells  # the best trial and its hardware
    assert "89.4%" in page.cells  # the report's own figure for lr 0.1, beside ours
    # Offline: the only script is plotly.js, loaded from the folder itself.
    assert page.scripts == ["plotly.min.js"] and (out / "plotly.min.js").stat().st_size > 1_000_000
    assert 'href="learning_curves.html"' in (out / "index.html").read_text()


def test_the_trials_table_is_optunas_with_our_column_names():
    """export's table comes from ``study.trials_dataframe``: one column per param (a comparison's
    ``model`` param and attr are one column), counts as integers beside a trial that lacks them,
    the objective of an unfinished trial from what it measured, completed trials first."""
    study = optuna.create_study(direction="maximize")
    dist = {"model": optuna.distributions.CategoricalDistribution(["lenet", "airbench"])}
    for value, state, attrs in [
        (0.8, TrialState.COMPLETE, {"model": "lenet", "epochs_completed": 3, "num_params": 61706}),
        (None, TrialState.FAIL, {"fail_reason": "boom"}),
        (None, TrialState.PRUNED, {"model": "airbench", "val_accuracy": 0.5, "epochs_completed": 1}),
        (0.9, TrialState.COMPLETE, {"model": "airbench", "epochs_completed": 3}),
    ]:
        study.add_trial(
            create_trial(
                state=state,
                value=value,
                params={"model": attrs.get("model", "lenet")},
                distributions=dist,
                user_attrs=attrs,
            )
        )
    frame = trials_frame(study, include_all=True)
    assert frame["trial"].tolist() == [3, 0, 2, 1]
    assert frame["val_accuracy"].tolist()[:3] == [0.9, 0.8, 0.5]
    assert list(frame.columns).count("model") == 1 and frame["model"].tolist()[:3] == ["airbench", "lenet", "airbench"]
    lines = frame.to_csv(index=False).splitlines()
    header = lines[0].split(",")
    assert [line.split(",")[header.index("epochs_completed")] for line in lines[1:]] == ["3", "3", "1", ""]
    assert lines[-1].split(",")[header.index("fail_reason")] == "boom"
    assert trials_frame(study)["trial"].tolist() == [3, 0]
