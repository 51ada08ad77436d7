"""The report's Table 1, rebuilt from studies, with the report's own figures alongside."""

from __future__ import annotations

import csv
import math
from importlib import resources

import optuna
import pandas as pd
from optuna.trial import TrialState

from .record import TrialRecord
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
    "study", "model", "trial", "lr", "train_accuracy", "val_accuracy", "test_accuracy", "samples_per_s", "device",
    "report_train_accuracy", "report_test_accuracy", "report_samples_per_s",
]  # fmt: skip


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
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            a = TrialRecord.of(t)
            lr = t.params.get("lr", (a.config or {}).get("lr", math.nan))
            rows.append(
                [study.study_name, spec.model, t.number, lr, a.train_accuracy, t.value, a.test_accuracy,
                 a.throughput, a.device_name or a.device, *_report_row(spec.model, lr, recipe)]
            )  # fmt: skip
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.sort_values(["model", "lr", "trial"], ascending=[True, False, True]).reset_index(drop=True)


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
