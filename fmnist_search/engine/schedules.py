"""Learning-rate schedules, stepped once per SGD step (torch's LR schedulers)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from ..core.config import SCHEDULE_NAMES as SCHEDULES  # the names live with the settings that check them

ONECYCLE_DEFAULT_WARMUP = 0.25  # fraction of steps rising to the peak when warmup_frac is 0


def _warmup_cosine(total: int, warmup: int, cosine: bool) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # linear warm-up to the peak lr
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # peak -> 0 just after the last step

    return factor


def lr_factors(schedule: str, total_steps: int, warmup_frac: float) -> list[float] | None:
    """Each step's lr as a factor of the peak lr, as ``make_scheduler``'s LambdaLR gives it
    (constant, cosine), without building an optimizer (torch.optim imports torch._dynamo, ~0.9 s
    of a worker's start-up); None for onecycle, whose lr is not a product of the peak."""
    if schedule not in ("constant", "cosine"):
        return None
    factor = _warmup_cosine(total_steps, round(warmup_frac * total_steps), schedule == "cosine")
    return [factor(step) for step in range(total_steps)]


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_frac: float, lr: float
) -> LRScheduler:
    """``constant`` (optional linear warm-up), ``cosine`` (warm-up, then cosine decay to 0),
    ``onecycle`` (torch's OneCycleLR: warm-up to ``lr``, cosine annealing far below it)."""
    warmup = round(warmup_frac * total_steps)
    if schedule == "onecycle":
        pct = warmup_frac if warmup_frac > 0 else ONECYCLE_DEFAULT_WARMUP
        # cycle_momentum=False: momentum is a hyperparameter of its own here.
        return OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=pct, cycle_momentum=False)
    if schedule in ("constant", "cosine"):
        return LambdaLR(optimizer, _warmup_cosine(total_steps, warmup, schedule == "cosine"))
    raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
