"""Frozen settings and presets. Config flows one way: defaults < preset < flags (< stored, on resume).

``StudySpec`` defines a study's experiment and is stored with it (study user attrs);
resuming with a different value is refused. ``TrainConfig`` is one training recipe (what
``train.fit`` runs). Their checks are pure: no torch, no Optuna, no files. A recipe that
names a distillation teacher is checked against the teacher's preset by ``check_recipe``
(it reads that preset's TOML), where a study is opened or a recipe trained.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

HEARTBEAT_INTERVAL_S = 10  # a running trial's liveness write, seconds
GRACE_PERIOD_S = 60  # a RUNNING trial silent this long belongs to a dead process: FAIL it, retry it
PATIENCE_S = 300.0  # how long a storage call keeps retrying a lost database, seconds
FULL_TRAIN_SIZE = 60_000  # Fashion-MNIST training images (validation is carved out of these)
DEFAULT_STORAGE = "sqlite:///studies/fmnist.db"  # relative to the working directory
# The registries' names, so settings are checked (and --help written) without importing
# torch or Optuna; the tests check each registry has exactly these.
MODEL_NAMES = ("airbench", "lenet", "resnet18", "resnet34")  # fmnist_search.models
SAMPLER_NAMES = ("cmaes", "gp", "grid", "qmc", "random", "tpe")  # fmnist_search.study.SAMPLERS
PRUNER_NAMES = ("hyperband", "median", "none", "sha")  # fmnist_search.study.PRUNERS
SPACE_NAMES = ("full", "lr")  # fmnist_search.space.SPACES
SCHEDULE_NAMES = ("constant", "cosine", "onecycle")  # fmnist_search.engine.schedules.SCHEDULES
PRECISION_NAMES = ("bf16", "fp16", "fp32")  # fmnist_search.engine.devices.PRECISIONS (resolved, never "auto")
OBJECTIVE_NAMES = ("accuracy", "latency", "params", "throughput")  # fmnist_search.search.criteria.CRITERIA


# --- what each setting may hold: one rule per field, checked wherever a value enters ---
# (flags, --fix, --params, presets, stored studies), so a refused value is one line that names
# the setting and what it allows. Plain dataclass checks rather than pydantic or msgspec: the
# settings are ~30 scalar fields with ranges, the messages are ours, --help stays import-light,
# and no dependency joins the core for it.


@dataclass(frozen=True)
class Rule:
    kind: type  # bool, int, float or str; an int is accepted (and kept) where a float is asked
    allowed: str  # what the message says is allowed
    ok: Callable[[Any], bool] = lambda v: True
    optional: bool = False  # None allowed
    choices: tuple[str, ...] = ()  # a name from a registry


def _num(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    kind: type = float,
) -> Rule:
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    noun = "a number" if kind is float else "an integer"
    if low is not None and high is not None:
        allowed = f"{noun} in {lo}, {hi}"
    elif low is not None:
        allowed = f"{noun} {'>' if low_open else '>='} {low:g}"
    else:
        allowed = noun

    def ok(v: float) -> bool:
        if not math.isfinite(v):
            return False
        if low is not None and (v <= low if low_open else v < low):
            return False
        return high is None or (v < high if high_open else v <= high)

    return Rule(kind, allowed, ok)


def _one_of(names: tuple[str, ...]) -> Rule:
    return Rule(str, f"one of: {', '.join(names)}", lambda v: v in names, choices=names)


def _names(value: str | tuple[str, ...]) -> list[str]:
    return [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)


def _some_of(names: tuple[str, ...], what: str) -> Rule:
    """One name of ``names``, or several distinct ones (comma-separated, or a tuple)."""

    def ok(value: str | tuple[str, ...]) -> bool:
        chosen = _names(value)
        return bool(chosen) and len(set(chosen)) == len(chosen) and all(n in names for n in chosen)

    return Rule(object, f"{what} of: {', '.join(names)}", ok, choices=names)


_BOOL = Rule(bool, "true or false")
_PROBABILITY = _num(0, 1)
_POSITIVE_INT = _num(1, kind=int)

# TrainConfig's fields: one training recipe.
RECIPE_RULES: dict[str, Rule] = {
    "lr": _num(0, low_open=True),
    "epochs": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "momentum": _num(0, 1, high_open=True),
    "nesterov": _BOOL,
    "weight_decay": _num(0),
    "label_smoothing": _num(0, 1, high_open=True),
    "schedule": _one_of(SCHEDULE_NAMES),
    "warmup_frac": _num(0, 1, high_open=True),
    "crop": _num(0, kind=int),
    "flip": _BOOL,
    "erasing": _PROBABILITY,
    "tta_flip": _BOOL,
    "teacher": Rule(str, "a preset name (or empty: none)"),
    "distill": _PROBABILITY,
    "distill_temp": _num(0, low_open=True),
    "seed": _num(0, kind=int),
    "data_seed": dataclasses.replace(_num(0, kind=int), optional=True),
    "precision": _one_of(PRECISION_NAMES),
    "eval_batch_size": _POSITIVE_INT,
}

# StudySpec's own fields (``fixed`` holds RECIPE_RULES values).
SPEC_RULES: dict[str, Rule] = {
    # several models (comma-separated) are compared in one study: the model is then a parameter
    "model": dataclasses.replace(_some_of(MODEL_NAMES, "one or more (comma-separated, distinct)"), kind=str),
    "epochs": _POSITIVE_INT,
    "batch_size": _POSITIVE_INT,
    "lr_min": _num(0, low_open=True),
    "lr_max": _num(0, low_open=True),
    "momentum": _num(0, 1, high_open=True),
    "sampler": _one_of(SAMPLER_NAMES),
    "pruner": _one_of(PRUNER_NAMES),
    "seed": _num(0, kind=int),
    "val_size": _num(1, FULL_TRAIN_SIZE - 1, kind=int),
    "train_size": dataclasses.replace(_POSITIVE_INT, optional=True),
    "space": _one_of(SPACE_NAMES),
    "objectives": dataclasses.replace(_some_of(OBJECTIVE_NAMES, "distinct names"), kind=tuple),
}

# Study settings a recipe also has. A fixed value of one of these is the study's value: `--fix
# epochs=5` makes a 5-epoch study (what Hyperband reads), holding the full space's sampled
# epochs there; with `--epochs 10` too, or a stored study of 10, it is refused, never silently
# one or the other.
SHARED_KEYS = ("epochs", "batch_size", "momentum")

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _has_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is tuple:  # a list of names (a list from TOML or JSON)
        return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    return isinstance(value, kind)


def check_value(name: str, value: Any, rule: Rule) -> None:
    """``value`` as ``rule`` allows, or a ConfigError naming ``name`` and what it allows."""
    if value is None and rule.optional:
        return
    if not _has_kind(value, rule.kind) or not rule.ok(value):
        if rule.choices:
            shown = ",".join(value) if isinstance(value, tuple) and all(isinstance(v, str) for v in value) else value
            raise ConfigError(f"unknown {name} {shown!r}; choose {rule.allowed}")
        raise ConfigError(f"{name} must be {rule.allowed}, got {value!r}")


def parse_value(name: str, raw: str) -> Any:
    """A recipe value typed on the command line (``--fix NAME=VALUE``) as its field's type:
    booleans as true/false, yes/no, on/off or 1/0 in any case; then checked."""
    if name not in RECIPE_RULES or name not in RECIPE_KEYS:
        raise ConfigError(f"unknown fixed parameter {name}; known: {', '.join(sorted(RECIPE_KEYS))}")
    rule = RECIPE_RULES[name]
    text = raw.strip()
    value: Any = text
    if rule.kind is bool:
        word = text.lower()
        value = True if word in _TRUE else False if word in _FALSE else text
    elif rule.kind in (int, float):
        try:
            value = rule.kind(text)
        except ValueError:
            value = text
    check_value(name, value, rule)
    return value


def parse_fixed(items: list[str] | None) -> dict[str, Any] | None:
    """``["momentum=0.9", "schedule=cosine"]`` -> {"momentum": 0.9, "schedule": "cosine"}, each typed and checked."""
    if not items:
        return None
    fixed = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--fix takes NAME=VALUE, got {item!r}")
        fixed[key.strip()] = parse_value(key.strip(), raw)
    return fixed


def with_fixed_settings(requested: dict[str, Any]) -> dict[str, Any]:
    """``requested`` with each fixed study setting (SHARED_KEYS) as the study's own, where not given."""
    fixed = requested.get("fixed") or {}
    shared = {k: fixed[k] for k in SHARED_KEYS if k in fixed and k not in requested}
    return {**requested, **shared} if shared else requested


def check_settings(requested: dict[str, Any]) -> None:
    """Requested study settings (flags or a preset, before defaults), each against its rule:
    what can be refused before a store is opened."""
    unknown = set(requested) - SPEC_FIELDS
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    fixed = requested.get("fixed") or {}
    for key in SHARED_KEYS:
        if key in fixed and key in requested and fixed[key] != requested[key]:
            raise ConfigError(_disagree(key, fixed[key], requested[key]))
    for key, value in requested.items():
        if key in SPEC_RULES:
            check_value(key, value, SPEC_RULES[key])
    if "lr_min" in requested and "lr_max" in requested:
        _lr_range(requested["lr_min"], requested["lr_max"])
    if "lr_grid" in requested:
        _lr_grid(requested["lr_grid"])
    if "fixed" in requested:
        check_fixed(requested["fixed"])
    if "objectives" in requested:
        _objectives(tuple(requested["objectives"]))
    if "recipes" in requested:
        _recipes(requested["recipes"], _names(requested.get("model", ",".join(requested["recipes"]))))


def _objectives(objectives: tuple[str, ...]) -> None:
    if "accuracy" not in objectives:
        raise ConfigError(
            "objectives must include accuracy (the validation accuracy every trial reports and is pruned on), "
            "e.g. accuracy,throughput"
        )


# What one model's recipe in a comparison study may set (the study's own values otherwise).
RECIPE_SETTINGS = ("lr_min", "lr_max", "momentum", "fixed")


def _recipes(recipes: Any, models: list[str]) -> None:
    """Per-model recipes of a comparison study: {model: {lr_min, lr_max, momentum, fixed}}."""
    if not isinstance(recipes, dict):
        raise ConfigError(f"recipes must be a table of models, got {recipes!r}")
    if recipes and len(models) < 2:
        raise ConfigError("recipes are per model of a study that compares models; give several models")
    for model, recipe in recipes.items():
        if model not in models:
            raise ConfigError(f"recipes names {model!r}, which the study does not compare ({', '.join(models)})")
        if isinstance(recipe, str):  # a preset's recipe, read where the study is opened (presets.expand_recipes)
            continue
        if not isinstance(recipe, dict):
            raise ConfigError(f"recipes.{model} must be a table or a preset name, got {recipe!r}")
        unknown = set(recipe) - set(RECIPE_SETTINGS)
        if unknown:
            raise ConfigError(
                f"recipes.{model}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(RECIPE_SETTINGS)}"
            )
        try:
            for key, value in recipe.items():
                if key == "fixed":
                    check_fixed(value)
                else:
                    check_value(key, value, SPEC_RULES[key])
            if "lr_min" in recipe or "lr_max" in recipe:
                if "lr_min" not in recipe or "lr_max" not in recipe:
                    raise ConfigError("give lr_min and lr_max together")
                _lr_range(recipe["lr_min"], recipe["lr_max"])
        except ConfigError as e:
            raise ConfigError(f"recipes.{model}: {e}") from None


def _disagree(key: str, fixed: Any, study: Any) -> str:
    return (
        f"fixed {key}={fixed!r} disagrees with the study's {key}={study!r}; give one of them "
        f"(--fix {key}=N sets the study's --{key.replace('_', '-')})"
    )


def _lr_range(lr_min: float, lr_max: float) -> None:
    if lr_min >= lr_max:
        raise ConfigError(f"lr_min ({lr_min}) must be below lr_max ({lr_max})")


def _lr_grid(grid: Any) -> None:
    if grid is None:
        return
    if not isinstance(grid, list | tuple) or not grid:
        raise ConfigError(f"lr_grid must be a list of learning rates, got {grid!r}")
    for lr in grid:
        check_value("lr_grid", lr, RECIPE_RULES["lr"])


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
    schedule: str = "constant"  # constant | cosine | onecycle (fmnist_search.schedules)
    warmup_frac: float = 0.0  # fraction of all steps spent warming the lr up
    crop: int = 0  # random-crop padding in pixels (0: off)
    flip: bool = False  # random horizontal flips
    erasing: float = 0.0  # random-erasing probability per sample
    tta_flip: bool = False  # evaluate on each image and its mirror image, averaging the probabilities
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
    model: str = "lenet"  # registry name (fmnist_search.models); several, comma-separated, are compared
    epochs: int = 10  # training epochs per trial
    batch_size: int = 256  # samples per SGD step
    lr_min: float = 1e-3  # learning-rate search range, sampled log-uniformly
    lr_max: float = 0.5
    momentum: float = 0.9  # fixed SGD momentum (the report used 0)
    sampler: str = "tpe"  # SAMPLER_NAMES (fmnist_search.study.SAMPLERS)
    pruner: str = "median"  # PRUNER_NAMES (fmnist_search.study.PRUNERS)
    seed: int = 0  # sampler seed, split seed, and base of every trial's training seed
    val_size: int = 10_000  # stratified validation images held out of the training set
    train_size: int | None = None  # optional stratified subset of the remaining training images
    space: str = "lr"  # fmnist_search.space.SPACES: which hyperparameters trials sample
    fixed: dict[str, Any] = field(default_factory=dict)  # hyperparameters held fixed (not sampled)
    lr_grid: tuple[float, ...] | None = None  # learning rates for the grid sampler
    # What a trial is scored on (search/criteria.py); more than one makes a multi-objective study.
    objectives: tuple[str, ...] = ("accuracy",)
    # Per model of a comparison study (model = "lenet,airbench"): what its recipe sets over the
    # study's own values (RECIPE_SETTINGS); study-level fixed values override these.
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("lr_grid", "objectives"):  # from JSON (study attrs) or TOML
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.model, str):  # "lenet, airbench" is stored as "lenet,airbench"
            object.__setattr__(self, "model", ",".join(_names(self.model)))
        for name, rule in SPEC_RULES.items():
            check_value(name, getattr(self, name), rule)
        _lr_range(self.lr_min, self.lr_max)
        _lr_grid(self.lr_grid)
        if not isinstance(self.fixed, dict):
            raise ConfigError(f"fixed must be a table of recipe values, got {self.fixed!r}")
        check_fixed(self.fixed)
        for key in SHARED_KEYS:
            if key in self.fixed and self.fixed[key] != getattr(self, key):
                raise ConfigError(_disagree(key, self.fixed[key], getattr(self, key)))
        if self.sampler == "grid" and not self.lr_grid:
            raise ConfigError("the grid sampler needs lr_grid (a list of learning rates)")
        if self.sampler == "grid" and self.space != "lr":
            raise ConfigError("the grid sampler searches lr_grid only; use space = 'lr'")
        _objectives(self.objectives)
        _recipes(self.recipes, list(self.models))
        if self.sampler == "grid" and len(self.models) > 1:
            raise ConfigError("the grid sampler searches one model's lr_grid; give one model, or another sampler")
        if self.sampler == "cmaes" and len(self.objectives) > 1:
            raise ConfigError("the cmaes sampler optimises one objective; use tpe, gp, random or qmc")

    @property
    def models(self) -> tuple[str, ...]:
        """The models a trial may train: one, or several compared in this study."""
        return tuple(_names(self.model))

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
# --- recipes: the hyperparameters of one training run (TrainConfig fields) ---

_RUN_KEYS = {"seed", "data_seed", "precision", "eval_batch_size"}  # how a recipe is run, not the recipe
RECIPE_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - _RUN_KEYS


def check_fixed(fixed: dict[str, Any]) -> None:
    """Pure checks of a recipe's values: known keys, each value as its rule allows, a consistent distillation."""
    unknown = set(fixed) - RECIPE_KEYS
    if unknown:
        raise ConfigError(
            f"unknown fixed parameter(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(RECIPE_KEYS))}"
        )
    for key, value in fixed.items():
        check_value(key, value, RECIPE_RULES[key])
    check_distill(fixed)


def check_distill(values: dict[str, Any]) -> None:
    """``teacher`` and ``distill`` come together (neither is sampled, so a study's fixed values hold both)."""
    teacher, distill = values.get("teacher", ""), values.get("distill", 0.0)
    if distill > 0 and not teacher:
        raise ConfigError(f"distill={distill} needs a teacher: add teacher=PRESET, e.g. teacher=airbench-tuned")
    if teacher and distill == 0:
        raise ConfigError(f"teacher {teacher!r} is unused with distill=0; set distill, e.g. distill=0.9")


def resolve(requested: dict[str, Any], stored: dict[str, Any] | None, study_name: str) -> StudySpec:
    """Build the spec of a new study, or check ``requested`` against a stored one.

    ``requested`` holds only values the user gave (flags or preset), never defaults, so
    resuming with a bare command works and only a real disagreement is refused.
    """
    unknown = set(requested) - SPEC_FIELDS
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    if stored is None:
        return StudySpec(**requested)
    spec = StudySpec.from_attrs(stored)
    for key, value in requested.items():
        if key in ("lr_grid", "objectives") and value is not None:
            value = tuple(value)
        if key == "fixed":  # the values asked for must be the stored ones; others stay as stored
            value = {**spec.fixed, **value}  # (a base recipe under --fix values, a preset's [fixed])
        if key == "recipes":  # likewise per model (a model's base recipe was added to the stored ones)
            value = {**spec.recipes, **value}
        if getattr(spec, key) != value:
            raise ConfigError(
                f"study {study_name!r} was created with {key}={getattr(spec, key)!r}, "
                f"this run asks for {key}={value!r}; drop that option to resume, "
                f"or use --study NEW_NAME for a new study"
            )
    return spec
