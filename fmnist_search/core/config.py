"""The frozen settings, and the runtime constants. Config flows one way: defaults < preset <
flags (< stored, on resume: core/resolution.py).

``StudySpec`` defines a study's experiment and is stored with it (study user attrs);
resuming with a different value is refused. ``TrainConfig`` is one training recipe (what
``train.fit`` runs). Each checks its fields against their rules (core/rules.py) when built.
A recipe that names a distillation teacher is checked against the teacher's preset by
``check_recipe`` (it reads that preset's TOML), where a study is opened or a recipe trained.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .rules import (
    RECIPE_RULES,
    SHARED_KEYS,
    SPEC_RULES,
    check_fixed,
    check_lr_grid,
    check_lr_range,
    check_objectives,
    check_recipes,
    check_train_size,
    check_value,
    disagreement,
    names_of,
)

HEARTBEAT_INTERVAL_S = 10  # a running trial's liveness write, seconds
GRACE_PERIOD_S = 60  # a RUNNING trial silent this long belongs to a dead process: FAIL it, retry it
PATIENCE_S = 300.0  # how long a storage call keeps retrying a lost database, seconds
DEFAULT_STORAGE = "sqlite:///studies/fmnist.db"  # relative to the working directory


def setting_text(value: Any) -> str:
    """A setting as people read it (the run's header, `show`, index.html): ``nesterov, weight_decay
    0.00018, schedule cosine`` for ``{'nesterov': True, 'weight_decay': 0.00018, 'schedule': 'cosine'}``;
    a switched-off flag is ``no NAME``, a nested recipe is in parentheses, nothing is ``—``."""
    if isinstance(value, dict):
        parts = []
        for k, v in value.items():
            if v is True or v is False:
                parts.append(k if v else f"no {k}")
            elif isinstance(v, dict):
                parts.append(f"{k} ({setting_text(v)})")
            else:
                parts.append(f"{k} {setting_text(v)}")
        return ", ".join(parts) or "—"
    if isinstance(value, list | tuple):
        return ", ".join(setting_text(v) for v in value) or "—"
    if isinstance(value, float):
        return f"{value:g}"
    return "—" if value is None else str(value)


def cache_root() -> Path:
    """This tool's cache: downloads, decompressed files, worker locks, distillation teachers."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fmnist-search"


@dataclass(frozen=True)
class TrainConfig:
    lr: float  # SGD learning rate
    epochs: int = 10  # passes over the training split
    batch_size: int = 256  # samples per SGD step
    momentum: float = 0.9  # SGD momentum (0 = the report's plain SGD)
    nesterov: bool = False  # Nesterov momentum (needs momentum > 0)
    weight_decay: float = 0.0  # L2 penalty, SGD's weight_decay
    label_smoothing: float = 0.0  # cross-entropy label smoothing
    schedule: str = "constant"  # constant | cosine | onecycle (engine.schedules)
    warmup_frac: float = 0.0  # fraction of all steps spent warming the lr up
    crop: int = 0  # random-crop padding in pixels (0: off)
    flip: bool = False  # random horizontal flips
    erasing: float = 0.0  # random-erasing probability per sample
    tta_flip: bool = False  # evaluate on each image and its mirror image, averaging the probabilities
    # Half-life, in epochs, of an exponential moving average of the weights (and BatchNorm
    # statistics) that is what the trial evaluates, reports, is pruned on and saves (0: the raw
    # weights). benchmarks/fidelity.py measured how well each half-life's mid-run accuracy ranks
    # trials as they end (docs/results.md).
    ema: float = 0.0
    teacher: str = ""  # preset whose network, trained on the same images, gives soft targets ("": none)
    distill: float = 0.0  # weight of the teacher's soft targets in the loss (0: labels only, 1: teacher only)
    distill_temp: float = 4.0  # softmax temperature of both networks in the distillation term
    seed: int = 0  # seeds batch order and augmentation (weights are seeded by the caller)
    data_seed: int | None = None  # seeds batch order and augmentation instead, when set (a population shares one)
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (resolved, never "auto")
    eval_batch_size: int = 2048  # samples per forward pass when evaluating

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), RECIPE_RULES[f.name])
        if self.distill > 0 and not self.teacher:  # (a teacher at weight 0 is a population member's choice)
            raise ConfigError(
                f"distill={self.distill} needs a teacher: add teacher=PRESET, e.g. teacher=airbench-tuned"
            )


@dataclass(frozen=True)
class StudySpec:
    model: str = "lenet"  # registry name (engine.models); several, comma-separated, are compared
    epochs: int = 10  # training epochs per trial
    batch_size: int = 256  # samples per SGD step
    lr_min: float = 1e-3  # learning-rate search range, sampled log-uniformly
    lr_max: float = 0.5
    momentum: float = 0.9  # fixed SGD momentum (the report used 0)
    sampler: str = "tpe"  # SAMPLER_NAMES (search.study.SAMPLERS)
    pruner: str = "median"  # PRUNER_NAMES (search.study.PRUNERS)
    seed: int = 0  # sampler seed, split seed, and base of every trial's training seed
    val_size: int = 10_000  # stratified validation images held out of the training set
    train_size: int | None = None  # optional stratified subset of the remaining training images
    space: str = "lr"  # search.space.SPACES: which hyperparameters trials sample
    fixed: dict[str, Any] = field(default_factory=dict)  # hyperparameters held fixed (not sampled)
    lr_grid: tuple[float, ...] | None = None  # learning rates for the grid sampler
    # What a trial is scored on (search/trials/objectives.py); more than one makes a multi-objective study.
    objectives: tuple[str, ...] = ("accuracy",)
    # Per model of a comparison study (model = "lenet,airbench"): what its recipe sets over the
    # study's own values (RECIPE_SETTINGS); study-level fixed values override these.
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("lr_grid", "objectives"):  # from JSON (study attrs) or TOML
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.model, str):  # "lenet, airbench" is stored as "lenet,airbench"
            object.__setattr__(self, "model", ",".join(names_of(self.model)))
        for name, rule in SPEC_RULES.items():
            check_value(name, getattr(self, name), rule)
        check_lr_range(self.lr_min, self.lr_max)
        check_train_size(self.train_size, self.val_size)
        check_lr_grid(self.lr_grid)
        if not isinstance(self.fixed, dict):
            raise ConfigError(f"fixed must be a table of recipe values, got {self.fixed!r}")
        check_fixed(self.fixed)
        for key in SHARED_KEYS:
            if key in self.fixed and self.fixed[key] != getattr(self, key):
                raise ConfigError(disagreement(key, self.fixed[key], getattr(self, key)))
        if self.sampler == "grid" and not self.lr_grid:
            raise ConfigError("the grid sampler needs lr_grid (a list of learning rates)")
        if self.sampler == "grid" and self.space != "lr":
            raise ConfigError("the grid sampler searches lr_grid only; use space = 'lr'")
        check_objectives(self.objectives)
        check_recipes(self.recipes, list(self.models))
        if self.sampler == "grid" and len(self.models) > 1:
            raise ConfigError("the grid sampler searches one model's lr_grid; give one model, or another sampler")
        if self.sampler == "cmaes" and len(self.objectives) > 1:
            raise ConfigError("the cmaes sampler optimises one objective; use tpe, gp, random or qmc")

    @property
    def models(self) -> tuple[str, ...]:
        """The models a trial may train: one, or several compared in this study."""
        return tuple(names_of(self.model))

    def to_attrs(self) -> dict[str, Any]:
        attrs = dataclasses.asdict(self)
        attrs["lr_grid"] = list(self.lr_grid) if self.lr_grid else None
        attrs["objectives"] = list(self.objectives)
        return attrs

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudySpec:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in attrs.items() if k in names})


SPEC_FIELDS = frozenset(f.name for f in dataclasses.fields(StudySpec))
