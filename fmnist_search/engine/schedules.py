"""Learning-rate schedules, stepped once per SGD step: each is a factor of the peak lr per step
(LambdaLR), so one table of factors serves every lr and every model of a population."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from ..core.rules import SCHEDULE_NAMES as SCHEDULES  # the names live with the rules that check them

ONECYCLE_DEFAULT_WARMUP = 0.25  # fraction of steps rising to the peak when warmup_frac is 0
ONECYCLE_START = 1 / 25  # torch OneCycleLR's div_factor: the first step's lr, of the peak
ONECYCLE_END = ONECYCLE_START / 1e4  # and its final_div_factor: the last step's


def _warmup_cosine(total: int, warmup: int, cosine: bool) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup  # linear warm-up to the peak lr
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))  # peak -> 0 just after the last step

    return factor


def _anneal(start: float, end: float, progress: float) -> float:
    return end + (start - end) / 2 * (math.cos(math.pi * progress) + 1)


def _onecycle(total: int, warmup_frac: float) -> Callable[[int], float]:
    """torch's OneCycleLR (two phases, cosine, cycle_momentum off) as a factor of its max_lr: a
    cosine rise from 1/25 of the peak over ``warmup_frac`` of the steps, then a cosine fall to
    1/25e4 of it at the last step. Its phases are float step counts; where torch divides by a
    phase of zero length (warmup_frac x steps = 1; 1 step in all) the phase is skipped here."""
    rise_end = (warmup_frac or ONECYCLE_DEFAULT_WARMUP) * total - 1  # torch's phase boundary (a float)
    fall_end = total - 1

    def factor(step: int) -> float:
        if rise_end > 0 and step <= rise_end:
            return _anneal(ONECYCLE_START, 1.0, step / rise_end)
        if fall_end <= max(rise_end, 0.0):
            return 1.0  # a single step: the peak (torch's would be 1/25e4 of it)
        return _anneal(1.0, ONECYCLE_END, (step - rise_end) / (fall_end - rise_end))

    return factor


def _factor(schedule: str, total_steps: int, warmup_frac: float) -> Callable[[int], float]:
    if schedule == "onecycle":
        return _onecycle(total_steps, warmup_frac)
    if schedule in ("constant", "cosine"):
        return _warmup_cosine(total_steps, round(warmup_frac * total_steps), schedule == "cosine")
    raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


def lr_factors(schedule: str, total_steps: int, warmup_frac: float) -> list[float]:
    """Each step's lr as a factor of the peak lr, as ``make_scheduler`` gives it, without building
    an optimizer (torch.optim imports torch._dynamo, ~0.9 s of a worker's start-up)."""
    factor = _factor(schedule, total_steps, warmup_frac)
    return [factor(step) for step in range(total_steps)]


def lr_factor_at(schedule: str, total_steps: int, warmup_frac: float, step: int) -> float:
    """Step ``step``'s lr as a factor of the peak lr (one value of ``lr_factors``)."""
    return _factor(schedule, total_steps, warmup_frac)(step)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int, warmup_frac: float) -> LambdaLR:
    """``constant`` (optional linear warm-up), ``cosine`` (warm-up, then cosine decay to 0),
    ``onecycle`` (torch's OneCycleLR's curve: cosine warm-up to ``lr``, cosine annealing far below
    it), of the optimizer's lr (the peak)."""
    return LambdaLR(optimizer, _factor(schedule, total_steps, warmup_frac))
