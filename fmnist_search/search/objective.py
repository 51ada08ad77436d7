"""The Optuna adapter: suggest -> fit -> report/prune -> user attrs.

The trainer knows nothing about Optuna; this module turns its per-epoch callback into
``trial.report`` / ``should_prune`` and its results into trial user attrs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna
import torch

from ..core import interrupts
from ..core.config import StudySpec
from ..core.errors import StorageError
from ..engine.data import Splits
from ..engine.devices import device_name, tune_backend
from ..engine.models import num_params
from ..engine.teachers import teacher_for
from ..engine.train import (
    Built,
    Diverged,
    EpochMetrics,
    FitResult,
    Teacher,
    TrainConfig,
    build_model,
    evaluate,
    to_device,
    train_recipe,
)
from .artifacts import save_model
from .record import FIELDS, TrialRecord
from .space import suggest
from .storage import write_trials

EpochHook = Callable[[int, EpochMetrics], None]  # (trial number, metrics) -> None


class Objective:
    """Callable for ``study.optimize``; moves the splits to ``device`` once, at construction."""

    def __init__(
        self,
        spec: StudySpec,
        splits: Splits,
        device: torch.device,
        precision: str = "fp32",
        on_epoch: EpochHook | None = None,
        compile: bool = False,
        extra_attrs: dict[str, Any] | None = None,
        artifact_store: Any = None,
        say: Callable[[str], None] = lambda _: None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.on_epoch = on_epoch
        self.compile = compile
        self.extra_attrs = extra_attrs or {}  # constant per process, e.g. worker label and GPU
        self.artifact_store = artifact_store  # completed trials save their weights here (None: off)
        self._compiled: dict[str, Built] | None = {} if compile else None  # compiled once per process and model
        self.train = to_device(*splits.train, device)
        self.val = to_device(*splits.val, device)
        self.test = to_device(*splits.test, device)
        tune_backend(device)
        # Not sampled, so one teacher serves the whole study; trained (or loaded) once per process.
        name = spec.fixed.get("teacher")
        # Its logits of the training images are looked up once computed (train.Teacher).
        self.teacher = Teacher(teacher_for(name, self.train, spec.seed, precision, say)) if name else None

    def config(self, trial: optuna.Trial, data_seed: int | None = None) -> TrainConfig:
        """This trial's recipe: its sampled hyperparameters (``suggest`` asks the sampler)."""
        return TrainConfig(
            **suggest(trial, self.spec),
            seed=self.spec.seed + trial.number,  # reproducible per trial, different across trials
            data_seed=data_seed,
            precision=self.precision,
        )

    def describe(self, record: TrialRecord, cfg: TrainConfig, module: torch.nn.Module, population: int) -> TrialRecord:
        """``record`` with how the trial runs: device, versions, model size, its full recipe."""
        return dataclasses.replace(
            record,
            device=str(self.device),
            device_name=device_name(self.device),
            torch_version=torch.__version__,
            precision=cfg.precision,
            compiled=self.compile,
            num_params=num_params(module),
            population=population,
            config={k: v for k, v in asdict(cfg).items() if k not in ("precision", "eval_batch_size")},
        )

    def finish(self, trial: optuna.Trial, record: TrialRecord, runnable: torch.nn.Module, module: torch.nn.Module,
               cfg: TrainConfig) -> None:  # fmt: skip
        """Test accuracy (fp32, as ``fmnist-search evaluate`` computes it) and the weights artifact."""
        record.test_accuracy, _ = evaluate(runnable, *self.test, tta_flip=cfg.tta_flip)
        if self.artifact_store is not None:
            record.weights_artifact = save_model(self.artifact_store, trial, module, self.spec.model)

    def __call__(self, trial: optuna.Trial) -> float:
        interrupts.check()  # a signal deferred while Optuna created this trial
        cfg = self.config(trial)
        record = TrialRecord(**self.extra_attrs)
        write_attrs(trial, record.attrs())  # at the start: who runs a RUNNING trial
        built = build_model(self.spec.model, cfg.seed, self.device, self._compiled)
        record = self.describe(record, cfg, built.module, population=1)
        result = FitResult()

        def on_epoch_end(m: EpochMetrics) -> None:
            interrupts.check()  # a signal swallowed mid-epoch (a finalizer) stops the trial here
            result.history.append(m)
            if self.on_epoch is not None:
                self.on_epoch(trial.number, m)
            trial.report(m.val_accuracy, step=m.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {m.epoch}: val_accuracy {m.val_accuracy:.4f}")
            interrupts.check()  # one deferred while the report was written

        try:
            train_recipe(self.spec.model, cfg, self.train, self.val, built=built, teacher=self.teacher,
                         on_epoch_end=on_epoch_end)  # fmt: skip
            self.finish(trial, record, built.runnable, built.module, cfg)
            return result.history[-1].val_accuracy
        except Diverged as e:
            record.fail_reason = str(e)
            raise
        except (interrupts.Stop, StorageError) as e:
            # Not the trial's doing: the worker re-queues it (SIGTERM, a lost store) or marks it FAIL (Ctrl-C).
            record.fail_reason = f"{interrupts.INTERRUPTED}: {e}"
            raise
        finally:
            # Runs for completed, pruned, diverged and interrupted trials alike, so every
            # trial keeps what it measured.
            summarize(result, record)
            write_attrs(trial, record.attrs(*RUN_FIELDS))
            del built
            release_memory(self.device)


def summarize(result: FitResult, record: TrialRecord) -> None:
    """Copy what ``fit`` measured into ``record``."""
    record.epochs_completed = 0
    if not result.history:
        return
    last = result.history[-1]
    record.val_accuracy = last.val_accuracy
    record.train_accuracy = last.train_accuracy
    record.train_loss = last.train_loss
    record.throughput = result.throughput
    record.train_time_s = result.train_time_s
    record.epochs_completed = last.epoch
    record.history = [asdict(m) for m in result.history]


RUN_FIELDS = tuple(f for f in FIELDS if f not in ("worker", "gpu"))  # written at the end (the start wrote those)


def write_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """A trial's user attrs in one transaction where the store allows (Optuna writes one per call)."""
    write_trials(trial.storage, user_attrs={trial._trial_id: attrs})


def release_memory(device: torch.device) -> None:
    # Models and optimizers of finished trials must not pile up on the GPU. (A full
    # gc.collect() costs ~0.2 s; study.optimize(gc_after_trial=True) does it once per trial.)
    if device.type == "cuda":
        torch.cuda.empty_cache()
