"""The report's Table 1, rebuilt from studies, with the report's own figures alongside."""

from __future__ import annotations

import csv
import math
from importlib import resources

import optuna
import pandas as pd
from optuna.trial import TrialState

from ..study import stored_spec
from ..trials.objectives import ACCURACY, CRITERIA, objectives_of, values_of
from ..trials.record import TrialRecord, lr_of
from ..trials.space import model_of


def _published() -> dict[tuple[str, float], tuple[float, float, float]]:
    """The course report's Table 1 (package data): (model, lr) -> (train acc, test acc, samples/s)."""
    text = (resources.files("fmnist_search") / "published" / "report-table1.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return {
        (r["model"], float(r["lr"])): (float(r["train_accuracy"]), float(r["test_accuracy"]), float(r["samples_per_s"]))
        for r in rows
    }


REPORT_TABLE = _published()
REPORT_RECIPE = {"epochs": 10, "batch_size": 256, "momentum": 0.0}  # the report's fixed settings

COLUMNS = [
    "study",
    "model",
    "trial",
    "lr",
    "train_accuracy",
    "val_accuracy",
    "test_accuracy",
    "samples_per_s",
    "device",
    "report_train_accuracy",
    "report_test_accuracy",
    "report_samples_per_s",
]


def _report_row(model: str, lr: float, recipe_matches: bool) -> tuple[float, float, float]:
    if recipe_matches:
        for (m, r), figures in REPORT_TABLE.items():
            if m == model and math.isclose(r, lr, rel_tol=1e-9):
                return figures
    return (math.nan, math.nan, math.nan)


def report_frame(studies: list[optuna.Study]) -> pd.DataFrame:
    """One row per completed trial: model, lr, accuracies, samples/s, device; the report's figures
    where the study used the report's recipe (10 epochs, batch 256, momentum 0) and the same lr."""
    rows = []
    for study in studies:
        spec = stored_spec(study)
        recipe = all(getattr(spec, k) == v for k, v in REPORT_RECIPE.items()) and spec.space == "lr"
        objectives = objectives_of(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = TrialRecord.of(t)
            lr = lr_of(t)
            model = model_of(t.params, spec)
            rows.append(
                [
                    study.study_name,
                    model,
                    t.number,
                    lr,
                    a.train_accuracy,
                    values_of(t, objectives)[ACCURACY],
                    a.test_accuracy,
                    a.throughput,
                    a.device_name or a.device,
                    *_report_row(model, lr, recipe),
                ]
            )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["model", "lr", "trial"], ascending=[True, False, True]).reset_index(drop=True)


def front_frame(study: optuna.Study) -> pd.DataFrame:
    """The study's Pareto front, most accurate first: the trial, its model and size, lr,
    validation and test accuracy, each other objective, its own measured training samples/s."""
    from .front import front

    spec, objectives = stored_spec(study), objectives_of(study)
    others = [n for n in objectives if n != ACCURACY]
    rows = []
    for t in front(study):
        a, values = TrialRecord.of(t), values_of(t, objectives)
        rows.append(
            {
                "study": study.study_name,
                "trial": t.number,
                "model": model_of(t.params, spec),
                "num_params": a.num_params,
                "lr": lr_of(t),
                "val_accuracy": values[ACCURACY],
                "test_accuracy": a.test_accuracy,
                **{n: values.get(n) for n in others},
                "samples_per_s": a.throughput,
                "device": a.device_name or a.device,
            }
        )
    return pd.DataFrame(rows)


def _missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _pct(v: float) -> str:
    return "—" if _missing(v) else f"{100 * v:.1f}%"


def _figure(name: str, v: float) -> str:
    if _missing(v):
        return "—"
    return _pct(v) if name == ACCURACY else f"{v:,.4g}" if name == "latency" else f"{v:,.0f}"


def front_table(frame: pd.DataFrame, objectives: tuple[str, ...]) -> pd.DataFrame:
    """The front as shown (one formatted string per cell, the shown headers): rendered to
    Markdown by ``report`` and to HTML by ``plot``'s page."""
    others = [n for n in objectives if n not in (ACCURACY, "params")]  # parameters have their own column
    rows = [
        {
            "trial": str(r["trial"]),
            "model": r["model"],
            "parameters": _figure("params", r["num_params"]),
            "lr": f"{r['lr']:.3g}",
            "val acc": _pct(r["val_accuracy"]),
            "test acc": _pct(r["test_accuracy"]),
            **{f"{n} ({CRITERIA[n].unit})": _figure(n, r[n]) for n in others},
            "trained at (samples/s)": _figure("throughput", r["samples_per_s"]),
            "device": str(r["device"]),
        }
        for r in frame.to_dict("records")
    ]
    columns = [
        "trial",
        "model",
        "parameters",
        "lr",
        "val acc",
        "test acc",
        *(f"{n} ({CRITERIA[n].unit})" for n in others),
        "trained at (samples/s)",
        "device",
    ]
    return pd.DataFrame(rows, columns=columns)


PUBLISHED_TITLE = "The report's Table 1 for these models (plain SGD, batch 256, 10 epochs; RTX 4060 Laptop):"


def published_table(models: list[str]) -> pd.DataFrame:
    """The report's own Table 1 rows of ``models``, as shown."""
    rows = [
        {"model": m, "lr": f"{lr:g}", "train acc": _pct(f[0]), "test acc": _pct(f[1]), "samples/s": f"{f[2]:,.0f}"}
        for (m, lr), f in sorted(REPORT_TABLE.items())
        if m in models
    ]
    return pd.DataFrame(rows, columns=["model", "lr", "train acc", "test acc", "samples/s"])


def report_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The report's table as shown: accuracies in %, speeds rounded, the report's figures beside ours."""
    speed = _figure  # a speed is shown as throughput is
    rows = [
        {
            "model": r.model,
            "lr": f"{r.lr:g}",
            "trial": str(r.trial),
            "train acc": _pct(r.train_accuracy),
            "val acc": _pct(r.val_accuracy),
            "test acc": _pct(r.test_accuracy),
            "samples/s": speed("throughput", r.samples_per_s),
            "device": str(r.device),
            "report train acc": _pct(r.report_train_accuracy),
            "report test acc": _pct(r.report_test_accuracy),
            "report samples/s (RTX 4060 Laptop)": speed("throughput", r.report_samples_per_s),
        }
        for r in frame.itertuples()
    ]
    columns = [
        "model",
        "lr",
        "trial",
        "train acc",
        "val acc",
        "test acc",
        "samples/s",
        "device",
        "report train acc",
        "report test acc",
        "report samples/s (RTX 4060 Laptop)",
    ]
    return pd.DataFrame(rows, columns=columns)


def markdown(table: pd.DataFrame) -> str:
    """A shown table as a Markdown pipe table (pandas' own ``to_markdown`` needs tabulate)."""
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table.astype(str).itertuples(index=False)]
    return "\n".join(lines) + "\n"


def front_markdown(frame: pd.DataFrame, objectives: tuple[str, ...]) -> str:
    """The front as Markdown, then the report's Table 1 rows of the same models beside it."""
    text = markdown(front_table(frame, objectives))
    published = published_table(list(dict.fromkeys(frame["model"])) if not frame.empty else [])
    return text + (f"\n{PUBLISHED_TITLE}\n\n{markdown(published)}" if not published.empty else "")


def to_markdown(frame: pd.DataFrame) -> str:
    """The report's table as Markdown."""
    return markdown(report_table(frame))
