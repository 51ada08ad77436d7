"""What a trial stores beyond Optuna's own columns: one record type, written by the objective, read by the rest.

Each field is a trial user attr of the same name (Optuna's ``trial_user_attributes`` table,
which optuna-dashboard shows). ``None`` fields are not written, so a trial stopped early
carries only what it measured. Readers (export, report, plots, show, the progress line)
go through ``TrialRecord.of(trial)`` instead of spelling keys.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import optuna


@dataclass
class TrialRecord:
    # Who runs it: written when the trial starts, so a RUNNING trial names its worker.
    worker: str | None = None
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES of the worker process
    # How it runs: written when the model is built.
    device: str | None = None
    device_name: str | None = None
    torch_version: str | None = None
    precision: str | None = None
    compiled: bool | None = None
    num_params: int | None = None
    population: int | None = None  # rows of the population it trained in (1: alone)
    population_id: int | None = None  # that population: the number of its first trial
    joined_epoch: int | None = None  # the population's epoch it started at (1: with the first; later: a refill)
    population_throughput: float | None = None  # all those models' training samples/s together
    config: dict[str, Any] | None = None  # the full TrainConfig: what `train --from-study` replays
    model: str | None = None  # the network it trains (a comparison study samples it)
    # Its objectives other than accuracy, measured before it trains ({name: value}; search/trials/objectives.py).
    measured: dict[str, float] | None = None
    # Where each of those figures lives in the study ({name: study system attr}): readers score the
    # trial on the study's current figure (objectives.rescored), not on the one it was told.
    figures: dict[str, str] | None = None
    # What it measured: written when it ends, however it ends.
    val_accuracy: float | None = None
    train_accuracy: float | None = None
    train_loss: float | None = None
    throughput: float | None = None  # this trial's training samples/s (its own images, not the population's)
    train_time_s: float | None = None
    epochs_completed: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # one EpochMetrics dict per epoch
    test_accuracy: float | None = None
    weights_artifact: str | None = None  # the artifact id of its weights (Optuna's artifact store)
    # Its last checkpoint while it may still resume ({artifact, epoch, bytes}; {} once removed),
    # and the stopped trial whose checkpoint it continued ({trial, epoch}): search/trials/checkpoints.py.
    checkpoint: dict[str, Any] | None = None
    resumed_from: dict[str, Any] | None = None
    fail_reason: str | None = None

    def attrs(self, *names: str) -> dict[str, Any]:
        """The set fields (all of them, or those named) as user attrs."""
        chosen = names or tuple(f.name for f in dataclasses.fields(self))
        out = {name: getattr(self, name) for name in chosen}
        return {k: v for k, v in out.items() if v is not None and v != []}

    @classmethod
    def of(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord:
        """The record of a stored trial; keys this version does not know are ignored."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in trial.user_attrs.items() if k in known})


FIELDS = tuple(f.name for f in dataclasses.fields(TrialRecord))


def lr_of(trial: optuna.trial.FrozenTrial) -> float:
    """A trial's learning rate: its ``lr`` param, else its recipe's (a comparison samples
    ``lr_MODEL``; a fixed lr is in the recipe only); NaN when neither has one."""
    return float(trial.params.get("lr", (TrialRecord.of(trial).config or {}).get("lr", math.nan)))
