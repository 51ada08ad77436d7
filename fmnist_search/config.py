"""Frozen settings. Config flows one way: defaults < preset < flags (< stored, on resume).

``StudySpec`` defines a study's experiment and is stored with it (study user attrs);
resuming with a different value is refused. ``RunOptions`` are per-invocation knobs
(where, how fast) that never change what a trial means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

FULL_TRAIN_SIZE = 60_000  # Fashion-MNIST training images (validation is carved out of these)
DEFAULT_STORAGE = "sqlite:///studies/fmnist.db"  # relative to the working directory


@dataclass(frozen=True)
class StudySpec:
    model: str = "lenet"  # registry name (fmnist_search.models)
    epochs: int = 10  # training epochs per trial
    batch_size: int = 256  # samples per SGD step
    lr_min: float = 1e-3  # learning-rate search range, sampled log-uniformly
    lr_max: float = 0.5
    momentum: float = 0.9  # fixed SGD momentum (the report used 0)
    sampler: str = "tpe"  # fmnist_search.study.SAMPLERS
    pruner: str = "median"  # fmnist_search.study.PRUNERS
    seed: int = 0  # sampler seed, split seed, and base of every trial's training seed
    val_size: int = 10_000  # stratified validation images held out of the training set
    train_size: int | None = None  # optional stratified subset of the remaining training images

    def __post_init__(self) -> None:
        from .models import list_models
        from .study import PRUNERS, SAMPLERS

        _choice("model", self.model, list_models())
        _choice("sampler", self.sampler, SAMPLERS)
        _choice("pruner", self.pruner, PRUNERS)
        _at_least("epochs", self.epochs, 1)
        _at_least("batch_size", self.batch_size, 1)
        if not (self.lr_min > 0 and self.lr_max > 0):
            raise ConfigError(f"learning rates must be positive, got lr_min={self.lr_min}, lr_max={self.lr_max}")
        if self.lr_min >= self.lr_max:
            raise ConfigError(f"lr_min ({self.lr_min}) must be below lr_max ({self.lr_max})")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if not 0 < self.val_size < FULL_TRAIN_SIZE:
            raise ConfigError(f"val_size must be between 1 and {FULL_TRAIN_SIZE - 1}, got {self.val_size}")
        if self.train_size is not None:
            _at_least("train_size", self.train_size, 1)

    def to_attrs(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudySpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in attrs.items() if k in names})


@dataclass(frozen=True)
class RunOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 on a CUDA GPU that has it, else fp32)
    compile: bool = False  # torch.compile the model (once per process and model)


def resolve(requested: dict[str, Any], stored: dict[str, Any] | None, study_name: str) -> StudySpec:
    """Build the spec of a new study, or check ``requested`` against a stored one.

    ``requested`` holds only values the user gave (flags or preset), never defaults, so
    resuming with a bare command works and only a real disagreement is refused.
    """
    unknown = set(requested) - {f.name for f in dataclasses.fields(StudySpec)}
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    if stored is None:
        return StudySpec(**requested)
    spec = StudySpec.from_attrs(stored)
    for key, value in requested.items():
        if getattr(spec, key) != value:
            raise ConfigError(
                f"study {study_name!r} was created with {key}={getattr(spec, key)!r}, "
                f"this run asks for {key}={value!r}; drop that option to resume, "
                f"or use --study NEW_NAME for a new study"
            )
    return spec


def _choice(name: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of: {', '.join(sorted(choices))}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be at least {low}, got {value}")
