"""Training one model: pure PyTorch, knows nothing about Optuna.

One model trains as a population of one (``population.fit_population``): the same epoch
loop, batches, loss, distillation term, SGD update, lr table, divergence check and
evaluation serve a single trial and K fused ones, so the two cannot drift apart. The model
trains as itself (its own module, or its ``torch.compile`` wrapper), in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn

from ..core.config import TrainConfig
from .batches import BACKGROUND, MEAN, STD, augment_batch, epoch_batches, to_device
from .data import Splits
from .devices import tune_backend
from .distill import Teacher, distillation_loss, soft_targets
from .models import create_model
from .population import (
    Diverged,
    EpochMetrics,
    FitResult,
    Member,
    evaluate_all,
    fit_population,
    log_probs,
    plain_forward,
)

__all__ = [  # the engine's face for one model: what trials, teachers and `train` use
    "BACKGROUND",
    "MEAN",
    "STD",
    "BuiltModel",
    "Diverged",
    "EpochMetrics",
    "FitResult",
    "Teacher",
    "TrainConfig",
    "augment_batch",
    "build_model",
    "distillation_loss",
    "epoch_batches",
    "evaluate",
    "fit",
    "on_device",
    "predict_proba",
    "soft_targets",
    "to_device",
    "train_recipe",
]


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: TrainConfig,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    teacher: nn.Module | Teacher | None = None,
    lookup: bool = True,
    graphs: bool = False,
) -> FitResult:
    """Train ``model`` (already on the data's device) with SGD; evaluate on ``val`` each epoch.

    With ``cfg.distill > 0`` the loss mixes the labels' cross-entropy with ``teacher``'s
    soft targets on the same augmented batch (knowledge distillation; the teacher is
    frozen, in eval mode, on the same device).
    ``on_epoch_end`` may raise to stop training (an interrupt does).
    Raises ``Diverged`` when an epoch's loss is not finite. With ``val=None`` (training on
    train+validation) the validation metrics are NaN.
    """
    member = Member(cfg)

    def hook(epoch: int, metrics: dict[int, EpochMetrics]) -> tuple[int, ...]:
        if on_epoch_end is not None and 0 in metrics:
            on_epoch_end(metrics[0])
        return ()

    fit_population([model], [member], train, val, hook, teacher, lookup=lookup, graphs=graphs)
    if member.status == "diverged":
        raise Diverged(member.error)
    return member.result


@dataclass
class BuiltModel:
    """A freshly initialised network: ``module`` holds the weights, ``runnable`` trains and
    evaluates (the module itself, or its ``torch.compile`` wrapper)."""

    module: nn.Module
    runnable: nn.Module


def build_model(
    name: str, seed: int, device: torch.device, compiled: dict[str, BuiltModel] | None = None
) -> BuiltModel:
    """Model ``name`` with weights seeded by ``seed``, channels_last, on ``device``.

    With a ``compiled`` cache (one per process), the model is compiled once per name and
    later builds copy their fresh weights into it: no recompilation per trial.
    """
    torch.manual_seed(seed)
    # channels_last: faster convolutions in cuDNN, and in oneDNN on the CPU (~10-25% for
    # LeNet on this project's 2-core CPU, benchmarks/results/).
    fresh = create_model(name).to(memory_format=torch.channels_last)
    if compiled is None:
        module = fresh.to(device)
        return BuiltModel(module, module)
    if name not in compiled:
        module = fresh.to(device)
        compiled[name] = BuiltModel(module, cast(nn.Module, torch.compile(module)))
    else:
        compiled[name].module.load_state_dict(fresh.state_dict())  # weights and BatchNorm statistics
    return compiled[name]


def train_recipe(
    name: str,
    cfg: TrainConfig,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    built: BuiltModel | None = None,
    compiled: dict[str, BuiltModel] | None = None,
    teacher: nn.Module | Teacher | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
) -> tuple[BuiltModel, FitResult]:
    """Train one recipe outside a study: build model ``name`` (seeded by ``cfg.seed``, on the
    data's device) unless ``built`` is given, then ``fit``. Teachers and ``fmnist-search
    train`` use it; a study's trials train through ``search.trials.lifecycle`` on the same loop."""
    built = built or build_model(name, cfg.seed, train[0].device, compiled)
    return built, fit(built.runnable, train, val, cfg, on_epoch_end=on_epoch_end, teacher=teacher)


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048, tta_flip: bool = False
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on device-resident ``x``, ``y``, in the
    model's precision (fp32): what a trial's epochs report, for one model.

    With ``tta_flip`` the prediction is the mean of the probabilities for each image and
    its left-right mirror (the model has seen mirrored garments when trained with flips).
    """
    tta = torch.tensor([tta_flip], device=x.device)
    return evaluate_all(plain_forward(model), {}, (x, y), batch_size, tta)[0]


@torch.inference_mode()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 2048, tta_flip: bool = False) -> torch.Tensor:
    """Class probabilities (N, 10) for normalized inputs; with ``tta_flip``, averaged with the mirror images'."""
    forward, tta = plain_forward(model), torch.tensor([tta_flip], device=x.device)
    return torch.cat(
        [log_probs(forward, {}, x[i : i + batch_size], tta, tta_flip)[0].exp() for i in range(0, len(x), batch_size)]
    )


XY = tuple[torch.Tensor, torch.Tensor]


def on_device(splits: Splits, device: torch.device, full_train: bool = False) -> tuple[XY, XY, XY]:
    """A run's (train, val, test) normalised on ``device`` (with ``full_train``, train and
    validation as one training set), and the backend tuned: how a worker's trials and `train`
    (which retrains the best of them) both start."""
    train, val = splits.train, splits.val
    if full_train:
        train = (torch.cat([train[0], val[0]]), torch.cat([train[1], val[1]]))
    tune_backend(device)
    return to_device(*train, device), to_device(*val, device), to_device(*splits.test, device)
