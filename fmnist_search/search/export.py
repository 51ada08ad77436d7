"""Trials as a table (pandas): one row per trial, best first."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from .record import TrialRecord

ATTR_COLUMNS = (
    "test_accuracy",
    "train_accuracy",
    "train_loss",
    "throughput",
    "train_time_s",
    "epochs_completed",
    "device",
    "device_name",
    "precision",
    "num_params",
    "population",
    "fail_reason",
)  # fmt: skip (TrialRecord fields)


def trials_frame(study: optuna.Study, *, include_all: bool = False, top: int | None = None) -> pd.DataFrame:
    """Completed trials (or every trial with ``include_all``), best validation accuracy first."""
    states = None if include_all else (TrialState.COMPLETE,)
    rows = []
    for t in study.get_trials(deepcopy=False, states=states):
        duration = t.duration.total_seconds() if t.duration is not None else None
        record = TrialRecord.of(t)
        row = {
            "trial": t.number,
            "state": t.state.name,
            # The objective value of a completed trial; the last measured one otherwise.
            "val_accuracy": t.value if t.value is not None else record.val_accuracy,
        }
        row.update({k: getattr(record, k) for k in ATTR_COLUMNS})
        row["duration_s"] = duration
        row.update(t.params)
        rows.append(row)
    columns = ["trial", "state", "val_accuracy", *ATTR_COLUMNS, "duration_s"]
    frame = pd.DataFrame(rows, columns=columns + sorted({p for r in rows for p in r} - set(columns)))
    complete_first = frame["state"].ne("COMPLETE")
    frame = (
        frame.assign(_incomplete=complete_first)
        .sort_values(["_incomplete", "val_accuracy", "trial"], ascending=[True, False, True], na_position="last")
        .drop(columns="_incomplete")
        .reset_index(drop=True)
    )
    return frame.head(top) if top is not None else frame


def state_counts(study: optuna.Study) -> dict[str, int]:
    counts = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the best validation accuracy, or None."""
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None
