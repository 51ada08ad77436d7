"""The report's Table 1, rebuilt from studies, with the report's own figures alongside."""

from __future__ import annotations

import math

import optuna
import pandas as pd
from optuna.trial import TrialState

from .study import stored_spec

# The course report's Table 1: (model, lr) -> (train acc, test acc, samples/s on an RTX 4060 Laptop)
REPORT_TABLE: dict[tuple[str, float], tuple[float, float, float]] = {
    ("lenet", 0.1): (0.894, 0.835, 50_245),
    ("lenet", 0.05): (0.882, 0.866, 48_436),
    ("lenet", 0.01): (0.830, 0.821, 46_412),
    ("resnet18", 0.1): (0.954, 0.812, 19_705),
    ("resnet18", 0.05): (0.962, 0.892, 19_990),
    ("resnet18", 0.01): (0.970, 0.876, 20_480),
    ("resnet34", 0.1): (0.942, 0.840, 11_838),
    ("resnet34", 0.05): (0.949, 0.884, 12_002),
    ("resnet34", 0.01): (0.954, 0.873, 11_866),
}
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
            a = t.user_attrs
            lr = t.params.get("lr", a.get("config", {}).get("lr", math.nan))
            rows.append(
                [study.study_name, spec.model, t.number, lr, a.get("train_accuracy"), t.value, a.get("test_accuracy"),
                 a.get("throughput"), a.get("device_name") or a.get("device"), *_report_row(spec.model, lr, recipe)]
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
