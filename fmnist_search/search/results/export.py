"""Trials as a table (pandas): one row per trial, best first."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState

from ...engine.schedules import lr_factor_at
from ..trials.coordination import census
from ..trials.objectives import ACCURACY, objectives_of, scored_trials, values_of
from ..trials.record import TrialRecord

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
INT_COLUMNS = ("epochs_completed", "num_params", "population")


def trials_frame(
    study: optuna.Study, *, include_all: bool = False, top: int | None = None, front_only: bool = False
) -> pd.DataFrame:
    """Completed trials (or every trial with ``include_all``, or the Pareto front with
    ``front_only``), best validation accuracy first: Optuna's ``trials_dataframe`` with its
    columns named as the CLI prints them. A study with several objectives adds a column per other
    objective (``objective_NAME``) and ``on_front``."""
    from .front import front, rank_key

    objectives = objectives_of(study)
    others = [n for n in objectives if n != ACCURACY]
    states = None if include_all else (TrialState.COMPLETE,)
    on_front = {t.number for t in front(study)} if others or front_only else set()
    kept = [t for t in scored_trials(study, states=states) if not front_only or t.number in on_front]
    # The objective values of a completed trial; what it last measured otherwise (values_of).
    values = pd.DataFrame(
        [{"trial": t.number, **{_column(n): v for n, v in values_of(t, objectives).items()}} for t in kept],
        columns=["trial", *(_column(n) for n in objectives)],
    )
    table = study.trials_dataframe(attrs=("number", "state", "duration", "params", "user_attrs"), multi_index=False)
    for name in ("number", "state", "duration", *(f"user_attrs_{k}" for k in ("model", *ATTR_COLUMNS))):
        if name not in table:  # an empty study has no columns; a trial's attrs may all be missing
            table[name] = None
    table = table.rename(columns={"number": "trial"})
    table = table[table["trial"].isin(values["trial"])]
    params = sorted(c for c in table.columns if c.startswith("params_"))
    table = table.assign(
        duration_s=pd.to_timedelta(table["duration"]).dt.total_seconds(),
        on_front=table["trial"].isin(on_front),
    ).rename(columns={c: c.removeprefix("user_attrs_") for c in table.columns if c.startswith("user_attrs_")})
    for param in params:  # a comparison's "model" param is also a user attr: one column, the param's value
        name = param.removeprefix("params_")
        table[name] = table[param].combine_first(table[name]) if name in table else table[param]
    table = table.drop(columns=params)
    extra = ["model", *(_column(n) for n in others), "on_front"] if others else []
    columns = ["trial", "state", "val_accuracy", *extra, *ATTR_COLUMNS, "duration_s"]
    frame = values.merge(table.drop(columns="val_accuracy", errors="ignore"), on="trial", how="left")
    frame = frame.rename(columns={_column(ACCURACY): "val_accuracy"})
    frame = frame[columns + sorted({p.removeprefix("params_") for p in params} - set(columns))]
    # Counts stay integers where a trial lacks them (pandas' nullable Int64: 7, not 7.0).
    frame = frame.astype({name: "Int64" for name in INT_COLUMNS})
    # Completed trials in the one order of "best" (front.rank_key), then the others by accuracy.
    complete = sorted((t for t in kept if t.state == TrialState.COMPLETE), key=lambda t: rank_key(t, objectives))
    rank = {t.number: i for i, t in enumerate(complete)}
    frame = (
        frame.assign(_rank=frame["trial"].map(rank).fillna(len(complete)))
        .sort_values(["_rank", "val_accuracy", "trial"], ascending=[True, False, True], na_position="last")
        .drop(columns="_rank")
        .reset_index(drop=True)
    )
    return frame.head(top) if top is not None else frame


def _column(objective: str) -> str:
    return f"objective_{objective}"


HISTORY_COLUMNS = (
    "trial",
    "state",
    "epoch",
    "train_loss",
    "train_accuracy",
    "val_accuracy",
    "val_loss",
    "lr",
    "train_time_s",
)


def history_frame(study: optuna.Study) -> pd.DataFrame:
    """Every trial's learning curve: one row per trial and epoch (``HISTORY_COLUMNS``), with the lr
    its schedule gave the epoch's last step (from the trial's recipe, ``config``)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        record = TrialRecord.of(t)
        cfg = record.config or {}
        for h in record.history:
            rows.append(
                {
                    "trial": t.number,
                    "state": t.state.name,
                    **{k: h.get(k) for k in HISTORY_COLUMNS[2:] if k != "lr"},
                    "lr": _lr_after(cfg, h),
                }
            )
    return pd.DataFrame(rows, columns=list(HISTORY_COLUMNS))


def _lr_after(cfg: dict[str, Any], epoch: dict[str, Any]) -> float | None:
    """The lr of the epoch's last SGD step, as the recipe's schedule gives it."""
    if not {"lr", "epochs", "batch_size"} <= set(cfg) or not epoch.get("samples"):
        return None
    steps = math.ceil(epoch["samples"] / cfg["batch_size"])
    total = cfg["epochs"] * steps
    factor = lr_factor_at(
        cfg.get("schedule", "constant"), total, cfg.get("warmup_frac", 0.0), epoch["epoch"] * steps - 1
    )
    return float(cfg["lr"]) * factor


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, by the one rule the budget counts them with (``coordination.census``): a failed
    trial that was re-queued is RETRIED (its retry is counted), not FAIL."""
    c = census(study)
    counts = {"COMPLETE": c.complete, "PRUNED": c.pruned, "FAIL": c.fail, "RUNNING": c.running}
    extra = {"WAITING": c.waiting, "RETRIED": c.retried}
    return {**counts, **{k: v for k, v in extra.items() if v}}


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The completed trial with the best validation accuracy (on the front), or None."""
    from .front import best_or_none

    return best_or_none(study)
