"""What a population is made of and measures: its members, their epochs, results and snapshots."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ...core.config import TrainConfig


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy over the epoch's training steps
    train_accuracy: float  # fraction correct during the epoch's training steps
    val_accuracy: float
    val_loss: float
    train_time_s: float  # this epoch's training steps only (no evaluation), device-synchronised
    samples: int  # training samples seen this epoch
    # validation accuracy of other figures measured beside val_accuracy (benchmarks/fidelity.py):
    # "ema0.5" is the weights' average with a half-life of 0.5 epochs
    figures: dict[str, float] = field(default_factory=dict)


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


@dataclass
class Member:
    """One model of the population: its recipe, what it measured, how it ended."""

    cfg: TrainConfig
    result: FitResult = field(default_factory=FitResult)
    status: str = "training"  # training | done | stopped | diverged
    error: str = ""
    module: nn.Module | None = None  # the trained weights (eval mode), for members that are done


@dataclass
class PopulationStats:
    """The population's own throughput (every member's training samples over the epochs' time)
    and how full it stayed: rows trained per step out of its ``capacity``, members that joined."""

    samples: int = 0
    train_time_s: float = 0.0
    kind: str = ""  # plain | fused | vmap: how the models were stacked
    capacity: int = 0  # rows it started with (K)
    steps: int = 0  # SGD steps taken
    row_steps: int = 0  # rows trained, summed over those steps
    refills: int = 0  # members that joined after the first epoch

    @property
    def throughput(self) -> float:
        return self.samples / self.train_time_s if self.train_time_s > 0 else 0.0

    @property
    def occupancy(self) -> float:
        """Mean filled rows / K over all steps (1.0: full throughout)."""
        return self.row_steps / (self.steps * self.capacity) if self.steps and self.capacity else 0.0


# (the population's epoch, metrics by member: each at its own epoch) -> members to stop
EpochHook = Callable[[int, dict[int, EpochMetrics]], Iterable[int]]


@dataclass
class Snapshot:
    """One member's training state at the end of an epoch: what it needs to continue exactly.

    Weights and BatchNorm statistics, SGD momentum (per parameter, so a member of a stacked
    population can continue alone and back), the lr table's position, the data-order and
    augmentation generator, the history so far, fp16's loss scale. Tensors are on the CPU;
    ``payload`` is plain tensors and values (``torch.load(weights_only=True)`` reads it).
    """

    epoch: int  # the member's own epochs trained
    steps: int  # the member's own SGD steps: its lr table's position
    state_dict: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    order: torch.Tensor  # the population's data-order generator state
    device_type: str  # where that generator ran (a CPU state cannot drive a CUDA generator)
    history: list[EpochMetrics]
    loss_scale: list[float] | None = None  # fp16: [scale, growth tracker]
    round: int | None = None  # the population's epochs so far (None: written before refills, = epoch)
    augment: torch.Tensor | None = None  # the generator state of the member's augmentation (its view)
    average: dict[str, torch.Tensor] | None = None  # the weights' average (recipes with ema), as a state dict

    @property
    def at_round(self) -> int:
        return self.epoch if self.round is None else self.round

    @property
    def point(self) -> tuple[int, str, bytes]:
        """Where in one run it was taken: members resume together only from the same point
        (the same population epoch and data order; each at its own epoch)."""
        return (self.at_round, self.device_type, bytes(self.order.numpy()))

    def payload(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "history": [dataclasses.asdict(m) for m in self.history],
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Snapshot:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in payload.items() if k in names}
        values["history"] = [EpochMetrics(**m) for m in payload["history"]]
        return cls(**values)


SnapshotHook = Callable[[int, dict[int, Snapshot]], None]  # (epoch, snapshots by member)
