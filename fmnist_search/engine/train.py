"""The training engine: pure PyTorch, knows nothing about Optuna.

Like airbench, the whole dataset lives on the training device as one normalized tensor,
moved there once per process; a batch is an index slice of a per-epoch permutation made
on the device. No DataLoader, no per-sample Python, no host<->device copy per batch, and
no host synchronisation inside the epoch loop: loss and accuracy accumulate on the
device and are read once per epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import TrainConfig
from . import augment
from .devices import PRECISIONS, synchronize
from .models import create_model
from .schedules import make_scheduler

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training pixels on [0, 1]


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy over the epoch's training steps
    train_accuracy: float  # fraction correct during the epoch's training steps
    val_accuracy: float
    val_loss: float
    train_time_s: float  # this epoch's training steps only (no evaluation), device-synchronised
    samples: int  # training samples seen this epoch


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def train_time_s(self) -> float:
        return sum(m.train_time_s for m in self.history)

    @property
    def throughput(self) -> float:
        """Training samples per second over training steps only, from the second epoch on
        when there is one: the first pays one-time costs (cuDNN autotuning, compilation,
        allocator warm-up) that say nothing about the recipe's speed."""
        timed = self.history[1:] or self.history
        t = sum(m.train_time_s for m in timed)
        return sum(m.samples for m in timed) / t if t > 0 else 0.0


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite."""


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 28, 28) -> normalized float32 (N, 1, 28, 28) on ``device``, once per process."""
    x = images.to(device, non_blocking=True).unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return x, labels.to(device, non_blocking=True)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _epoch_stop(n: int, batch_size: int) -> int:
    return n - 1 if n % batch_size == 1 and n > 1 else n


def epoch_batches(perm: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Index slices of one epoch's permutation: every sample once.

    A trailing batch of one sample breaks BatchNorm in training mode; only that one is dropped.
    """
    stop = _epoch_stop(len(perm), batch_size)
    for start in range(0, stop, batch_size):
        yield perm[start : min(start + batch_size, stop)]


BACKGROUND = (0.0 - MEAN) / STD  # a black pixel, normalized: the fill for crop padding


def augment_batch(xb: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    if cfg.crop:
        xb = augment.random_crop(xb, cfg.crop, BACKGROUND, g)
    if cfg.flip:
        xb = augment.random_flip(xb, g)
    if cfg.erasing > 0:
        xb = augment.random_erasing(xb, cfg.erasing, g)
    return xb


def augmented(
    xb: torch.Tensor, cfg: TrainConfig, g: torch.Generator, lookup: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A training batch, augmented; with looked-up soft targets (no crops, no erasing: flips
    at most), also which images were mirrored, drawn from ``g`` as ``augment_batch`` draws it."""
    if not (cfg.crop > 0 or cfg.flip or cfg.erasing > 0):
        return xb, None
    if not lookup:
        return augment_batch(xb, cfg, g), None
    mirrored = augment.flip_mask(len(xb), xb.device, g) if cfg.flip else None
    return (xb if mirrored is None else augment.flipped(xb, mirrored)), mirrored


class Teacher:
    """A frozen distillation teacher, and its logits of every training image looked up by index.

    Without crops or random erasing a training batch is its images, some mirrored; so the
    teacher's logits of each image and of its mirror are computed once (two passes over the
    split, kept for the process's later trials) and a batch's soft targets are an index
    lookup instead of a teacher forward pass per step (~5x the step's cost for LeNet under
    airbench). With crops or erasing every batch is new: the teacher runs on it.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self._tables: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = self.net(xb)
        return out

    def tables(self, x: torch.Tensor, precision: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of each image of ``x``, logits of its mirror), computed once per (x, precision)."""
        key = (x.data_ptr(), x.shape, x.device, precision)
        if key not in self._tables:
            with torch.no_grad(), _autocast(x.device, precision):
                # the batch size training uses, so each image's logits come from the same kernels
                plain = torch.cat([self.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
                mirror = torch.cat([self.net(x[i : i + batch_size].flip(-1)) for i in range(0, len(x), batch_size)])
            self._tables[key] = (plain, mirror)
        return self._tables[key]


def as_teacher(teacher: nn.Module | Teacher | None) -> Teacher | None:
    return teacher if teacher is None or isinstance(teacher, Teacher) else Teacher(teacher)


def looks_up(cfg: TrainConfig) -> bool:
    """Whether a recipe's batches are its images, some mirrored (no crops, no erasing), so a
    teacher's soft targets can be looked up."""
    return cfg.crop == 0 and cfg.erasing == 0


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    cfg: TrainConfig,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
    teacher: nn.Module | Teacher | None = None,
    lookup: bool = True,
) -> FitResult:
    """Train ``model`` (already on the data's device) with SGD; evaluate on ``val`` each epoch.

    With ``cfg.distill > 0`` the loss mixes the labels' cross-entropy with ``teacher``'s
    soft targets on the same augmented batch (knowledge distillation; the teacher is
    frozen, in eval mode, on the same device).
    ``on_epoch_end`` may raise to stop training (the Optuna adapter prunes this way).
    Raises ``Diverged`` when an epoch's loss is not finite. With ``val=None`` (training on
    train+validation) the validation metrics are NaN.
    """
    x, y = train
    device = x.device
    n = len(x)
    if cfg.distill > 0 and teacher is None:
        raise ValueError(f"distill={cfg.distill} needs a teacher network")
    teacher = as_teacher(teacher)
    lookup = lookup and teacher is not None and cfg.distill > 0 and looks_up(cfg)
    tables = teacher.tables(x, cfg.precision, cfg.batch_size) if teacher and lookup else None
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,  # torch rejects Nesterov without momentum
        weight_decay=cfg.weight_decay,
        # CUDA: one fused kernel for the whole update, and with fp16 the GradScaler hands it
        # its inf check on the device instead of syncing the host every step.
        fused=True if device.type == "cuda" else None,
    )
    steps_per_epoch = len(range(0, _epoch_stop(n, cfg.batch_size), cfg.batch_size))
    scheduler = make_scheduler(optimizer, cfg.schedule, cfg.epochs * steps_per_epoch, cfg.warmup_frac, cfg.lr)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    order = torch.Generator(device=device).manual_seed(cfg.seed if cfg.data_seed is None else cfg.data_seed)
    result = FitResult()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(n, device=device, generator=order)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        synchronize(device)
        t0 = time.perf_counter()
        for idx in epoch_batches(perm, cfg.batch_size):
            xb, mirrored = augmented(x[idx], cfg, order, tables is not None)
            yb = y[idx]
            with _autocast(device, cfg.precision):
                out = model(xb)
                loss = F.cross_entropy(out, yb, label_smoothing=cfg.label_smoothing)
                if cfg.distill > 0:
                    assert teacher is not None  # checked above
                    soft = teacher(xb) if tables is None else soft_targets(tables, idx, mirrored)
                    loss = (1 - cfg.distill) * loss + cfg.distill * distillation_loss(out, soft, cfg.distill_temp)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            loss_sum += loss.detach().float() * len(idx)
            correct += (out.argmax(1) == yb).sum()
            seen += len(idx)
        synchronize(device)
        elapsed = time.perf_counter() - t0
        train_loss, train_correct = torch.stack([loss_sum, correct.float()]).tolist()  # the epoch's one sync
        train_loss /= seen
        if not math.isfinite(train_loss):
            raise Diverged(f"training loss became {train_loss} in epoch {epoch} (lr={cfg.lr:.4g})")
        # Evaluation runs in fp32 whatever the training precision: it costs little, and the
        # stored accuracies are then exactly what `fmnist-search evaluate` (fp32) reproduces.
        val_accuracy, val_loss = (
            evaluate(model, *val, batch_size=cfg.eval_batch_size, tta_flip=cfg.tta_flip)
            if val is not None
            else (math.nan, math.nan)
        )
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_accuracy=train_correct / seen,
            val_accuracy=val_accuracy,
            val_loss=val_loss,
            train_time_s=elapsed,
            samples=seen,
        )
        result.history.append(metrics)
        if on_epoch_end is not None:
            on_epoch_end(metrics)
    return result


@dataclass
class Built:
    """A freshly initialised network: ``module`` holds the weights, ``runnable`` trains and
    evaluates (the module itself, or its ``torch.compile`` wrapper)."""

    module: nn.Module
    runnable: nn.Module


def build_model(name: str, seed: int, device: torch.device, compiled: dict[str, Built] | None = None) -> Built:
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
        return Built(module, module)
    if name not in compiled:
        module = fresh.to(device)
        compiled[name] = Built(module, cast(nn.Module, torch.compile(module)))
    else:
        compiled[name].module.load_state_dict(fresh.state_dict())  # weights and BatchNorm statistics
    return compiled[name]


def train_recipe(
    name: str,
    cfg: TrainConfig,
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    *,
    built: Built | None = None,
    compiled: dict[str, Built] | None = None,
    teacher: nn.Module | None = None,
    on_epoch_end: Callable[[EpochMetrics], None] | None = None,
) -> tuple[Built, FitResult]:
    """Train one recipe: build model ``name`` (seeded by ``cfg.seed``, on the data's device)
    unless ``built`` is given, then ``fit``. The one training path of trials, teachers and
    ``fmnist-search train``."""
    built = built or build_model(name, cfg.seed, train[0].device, compiled)
    return built, fit(built.runnable, train, val, cfg, on_epoch_end=on_epoch_end, teacher=teacher)


def soft_targets(
    tables: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor, mirrored: torch.Tensor | None
) -> torch.Tensor:
    """The teacher's logits of a batch, looked up: each image's, or its mirror's where it was flipped."""
    plain, mirror = tables
    return plain[idx] if mirrored is None else torch.where(mirrored.view(-1, 1), mirror[idx], plain[idx])


def widened(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits to fp32 for a loss, as autocast does for ``F.cross_entropy``; fp32/fp64 as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al.'s soft-target term: KL(teacher || student) at ``temperature``, times T^2.

    The T^2 keeps its gradients the size of the cross-entropy's whatever the temperature,
    so ``distill`` weighs the two terms alike.
    """
    t = temperature
    log_p_student = F.log_softmax(widened(student) / t, dim=1)
    log_p_teacher = F.log_softmax(widened(teacher) / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * t * t


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 2048,
    precision: str = "fp32",
    tta_flip: bool = False,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of ``model`` on device-resident ``x``, ``y``.

    With ``tta_flip`` the prediction is the mean of the probabilities for each image and
    its left-right mirror (the model has seen mirrored garments when trained with flips).
    """
    model.eval()
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    loss_sum = torch.zeros((), device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with _autocast(x.device, precision):
            logp = _log_probs(model, xb, tta_flip)
        loss_sum += F.nll_loss(logp, yb, reduction="sum")
        correct += (logp.argmax(1) == yb).sum()
    acc, loss = torch.stack([correct.float(), loss_sum]).tolist()
    return acc / len(x), loss / len(x)


@torch.inference_mode()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 2048, tta_flip: bool = False) -> torch.Tensor:
    """Class probabilities (N, 10) for normalized inputs; with ``tta_flip``, averaged with the mirror images'."""
    model.eval()
    return torch.cat([_log_probs(model, x[i : i + batch_size], tta_flip).exp() for i in range(0, len(x), batch_size)])


def _log_probs(model: nn.Module, xb: torch.Tensor, tta_flip: bool) -> torch.Tensor:
    """Log class probabilities; with ``tta_flip``, of the mean of the image's and its mirror's probabilities.

    The mean is taken in log space (logsumexp - log 2), so a confident wrong prediction
    gives a large finite loss rather than log(0).
    """
    logp = F.log_softmax(model(xb).float(), dim=1)
    if not tta_flip:
        return logp
    mirrored = F.log_softmax(model(xb.flip(-1)).float(), dim=1)
    return torch.logaddexp(logp, mirrored) - math.log(2)
