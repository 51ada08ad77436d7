"""The report's Table 1, rebuilt from studies, with the report's own figures alongside."""

from __future__ import annotations

import csv
import math
from importlib import resources

import optuna
import pandas as pd
from optuna.trial import TrialState

from .criteria import ACCURACY, CRITERIA, objectives_of, values_of
from .record import TrialRecord, lr_of
from .space import model_of
from .study import stored_spec


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


def front_markdown(frame: pd.DataFrame, objectives: tuple[str, ...]) -> str:
    """The front as Markdown, then the report's Table 1 rows of the same models beside it."""
    others = [n for n in objectives if n not in (ACCURACY, "params")]  # parameters have their own column

    def fig(name: str, v: float) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "—"
        return f"{100 * v:.1f}%" if name == ACCURACY else f"{v:,.4g}" if name == "latency" else f"{v:,.0f}"

    head = [
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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in frame.to_dict("records"):
        cells = [
            str(r["trial"]),
            r["model"],
            fig("params", r["num_params"]),
            f"{r['lr']:.3g}",
            fig(ACCURACY, r["val_accuracy"]),
            fig(ACCURACY, r["test_accuracy"]),
            *(fig(n, r[n]) for n in others),
            fig("throughput", r["samples_per_s"]),
            str(r["device"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    models = list(dict.fromkeys(frame["model"])) if not frame.empty else []
    published = [(m, lr, f) for (m, lr), f in sorted(REPORT_TABLE.items()) if m in models]
    if published:
        lines += [
            "",
            "The report's Table 1 for these models (plain SGD, batch 256, 10 epochs; RTX 4060 Laptop):",
            "",
            "| model | lr | train acc | test acc | samples/s |",
            "|---|---|---|---|---|",
        ]
        lines += [f"| {m} | {lr:g} | {100 * f[0]:.1f}% | {100 * f[1]:.1f}% | {f[2]:,.0f} |" for m, lr, f in published]
    return "\n".join(lines) + "\n"


def to_markdown(frame: pd.DataFrame) -> str:
    """The table as Markdown: accuracies in %, speeds rounded, the report's figures beside ours."""

    def pct(v: float) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"

    def speed(v: float) -> str:
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.0f}"

    header = (
        "| model | lr | train acc | val acc | test acc | samples/s | device "
        "| report train acc | report test acc | report samples/s (RTX 4060 Laptop) |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in frame.itertuples():
        lines.append(
            f"| {r.model} | {r.lr:g} | {pct(r.train_accuracy)} | {pct(r.val_accuracy)} | {pct(r.test_accuracy)} "
            f"| {speed(r.samples_per_s)} | {r.device} | {pct(r.report_train_accuracy)} "
            f"| {pct(r.report_test_accuracy)} | {speed(r.report_samples_per_s)} |"
        )
    return "\n".join(lines) + "\n"
