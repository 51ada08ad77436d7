"""Trials as a table (pandas): one row per trial, best first."""

from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from .budget import census
from .criteria import ACCURACY, objectives_of, values_of
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
)  # TrialRecord fields


def trials_frame(
    study: optuna.Study, *, include_all: bool = False, top: int | None = None, front_only: bool = False
) -> pd.DataFrame:
    """Completed trials (or every trial with ``include_all``, or the Pareto front with
    ``front_only``), best validation accuracy first. A study with several objectives adds a
    column per other objective (``objective_NAME``) and ``on_front``."""
    from .front import front

    objectives = objectives_of(study)
    others = [n for n in objectives if n != ACCURACY]
    states = None if include_all else (TrialState.COMPLETE,)
    on_front = {t.number for t in front(study)} if others or front_only else set()
    rows = []
    for t in study.get_trials(deepcopy=False, states=states):
        if front_only and t.number not in on_front:
            continue
        duration = t.duration.total_seconds() if t.duration is not None else None
        record = TrialRecord.of(t)
        values = values_of(t, objectives)
        # The objective value of a completed trial; the last measured one otherwise.
        row = {"trial": t.number, "state": t.state.name, "val_accuracy": values.get(ACCURACY, record.val_accuracy)}
        if others:
            row["model"] = record.model
            row.update({f"objective_{n}": values.get(n) for n in others})
            row["on_front"] = t.number in on_front
        row.update({k: getattr(record, k) for k in ATTR_COLUMNS})
        row["duration_s"] = duration
        row.update(t.params)
        rows.append(row)
    extra = ["model", *(f"objective_{n}" for n in others), "on_front"] if others else []
    columns = ["trial", "state", "val_accuracy", *extra, *ATTR_COLUMNS, "duration_s"]
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
    """Trials by state, by the one rule the budget counts them with (``budget.census``): a failed
    trial that was re-queued is RETRIED (its retry is counted), not FAIL."""
    c = census(study)
    counts = {"COMPLETE": c.complete, "PRUNED": c.pruned, "FAIL": c.fail, "RUNNING": c.running}
    extra = {"WAITING": c.waiting, "RETRIED": c.retried}
    return {**counts, **{k: v for k, v in extra.items() if v}}


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the best validation accuracy (on the front), or None."""
    from .front import best_or_none

    return best_or_none(study)
