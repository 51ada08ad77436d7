"""The Optuna adapter: suggest -> fit -> report/prune -> user attrs.

The trainer knows nothing about Optuna; this module turns its per-epoch callback into
``trial.report`` / ``should_prune`` and its results into trial user attrs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna
import torch
import torch.nn as nn

from . import interrupts
from .artifacts import WEIGHTS_ATTR, save_model
from .config import StudySpec
from .data import Splits
from .devices import device_name, tune_backend
from .errors import StorageError
from .models import create_model, num_params
from .space import suggest
from .teachers import teacher_for
from .train import Diverged, EpochMetrics, FitResult, TrainConfig, evaluate, fit, to_device

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
        self._compiled: dict[str, tuple[nn.Module, nn.Module]] = {}  # model name -> (module, compiled)
        self.train = to_device(*splits.train, device)
        self.val = to_device(*splits.val, device)
        self.test = to_device(*splits.test, device)
        tune_backend(device)
        # Not sampled, so one teacher serves the whole study; trained (or loaded) once per process.
        name = spec.fixed.get("teacher")
        self.teacher = teacher_for(name, self.train, spec.seed, precision, say) if name else None

    def build(self, name: str, seed: int) -> nn.Module:
        """A freshly initialised model on the device (seeded), compiled at most once per process.

        With ``compile``, the compiled module is reused across trials: the fresh weights are
        copied into it, so there is no recompilation per trial.
        """
        torch.manual_seed(seed)
        # channels_last: faster convolutions in cuDNN, and in oneDNN on the CPU (~10-25% for
        # LeNet on this project's 2-core CPU, benchmarks/results/).
        fresh = create_model(name).to(memory_format=torch.channels_last)
        if not self.compile:
            return fresh.to(self.device)
        if name not in self._compiled:
            module = fresh.to(self.device)
            self._compiled[name] = (module, torch.compile(module))
        module, compiled = self._compiled[name]
        module.load_state_dict(fresh.state_dict())  # weights and BatchNorm statistics
        return compiled

    def __call__(self, trial: optuna.Trial) -> float:
        interrupts.check()  # a signal deferred while Optuna created this trial
        params = suggest(trial, self.spec)
        cfg = TrainConfig(
            **params,
            seed=self.spec.seed + trial.number,  # reproducible per trial, different across trials
            precision=self.precision,
        )
        for key, value in self.extra_attrs.items():  # at the start: who runs a RUNNING trial
            trial.set_user_attr(key, value)
        model = self.build(self.spec.model, cfg.seed)
        attrs: dict[str, Any] = {
            "device": str(self.device),
            "device_name": device_name(self.device),
            "torch_version": torch.__version__,
            "precision": cfg.precision,
            "compiled": self.compile,
            "num_params": num_params(model),
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("precision", "eval_batch_size")},
        }
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
            fit(model, self.train, self.val, cfg, on_epoch_end=on_epoch_end, teacher=self.teacher)
            attrs["test_accuracy"], _ = evaluate(model, *self.test, tta_flip=cfg.tta_flip)  # fp32: see train.fit
            if self.artifact_store is not None:
                module = self._compiled[self.spec.model][0] if self.compile else model
                attrs[WEIGHTS_ATTR] = save_model(self.artifact_store, trial, module, self.spec.model)
            return result.history[-1].val_accuracy
        except Diverged as e:
            attrs["fail_reason"] = str(e)
            raise
        except (interrupts.Stop, StorageError) as e:
            # Not the trial's doing: the worker re-queues it (SIGTERM, a lost store) or marks it FAIL (Ctrl-C).
            attrs["fail_reason"] = f"{interrupts.INTERRUPTED}: {e}"
            raise
        finally:
            # Runs for completed, pruned, diverged and interrupted trials alike, so every
            # trial keeps what it measured.
            attrs.update(summarize(result))
            for key, value in attrs.items():
                trial.set_user_attr(key, value)
            del model
            _release(self.device)


def summarize(result: FitResult) -> dict[str, Any]:
    if not result.history:
        return {"epochs_completed": 0}
    last = result.history[-1]
    return {
        "val_accuracy": last.val_accuracy,
        "train_accuracy": last.train_accuracy,
        "train_loss": last.train_loss,
        "throughput": result.throughput,
        "train_time_s": result.train_time_s,
        "epochs_completed": last.epoch,
        "history": [asdict(m) for m in result.history],
    }


def _release(device: torch.device) -> None:
    # Models and optimizers of finished trials must not pile up on the GPU. (A full
    # gc.collect() costs ~0.2 s; study.optimize(gc_after_trial=True) does it once per trial.)
    if device.type == "cuda":
        torch.cuda.empty_cache()
