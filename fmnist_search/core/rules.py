"""What each setting may hold: one rule per field, checked wherever a value enters (flags,
--fix, --params, presets, stored studies), so a refused value is one line that names the
setting and what it allows; and the checks across fields (an lr range, a grid, a recipe's
distillation, a comparison's recipes). Pure: no torch, no Optuna, no files.

Plain dataclass checks rather than pydantic or msgspec: the settings are ~30 scalar fields
with ranges, the messages are ours, --help stays import-light, and no dependency joins the
core for it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

FULL_TRAIN_SIZE = 60_000  # Fashion-MNIST training images (validation is carved out of these)
CLASSES = 10  # Fashion-MNIST classes
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")  # how --fix spells booleans

# The registries' names, so settings are checked (and --help written) without importing
# torch or Optuna; the tests check each registry has exactly these.
MODEL_NAMES = ("airbench", "lenet", "resnet18", "resnet34")  # engine.models


SAMPLER_NAMES = ("cmaes", "gp", "grid", "qmc", "random", "tpe")  # search.study.SAMPLERS


PRUNER_NAMES = ("hyperband", "median", "moasha", "none", "sha")  # search.study.PRUNERS


SPACE_NAMES = ("full", "lr")  # search.space.SPACES


SCHEDULE_NAMES = ("constant", "cosine", "onecycle")  # engine.schedules.SCHEDULES


PRECISION_NAMES = ("bf16", "fp16", "fp32")  # engine.devices.PRECISIONS (resolved, never "auto")


OBJECTIVE_NAMES = ("accuracy", "latency", "params", "throughput")  # search.trials.objectives.CRITERIA


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


def names_of(value: str | tuple[str, ...]) -> list[str]:
    return [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)


def _some_of(names: tuple[str, ...], what: str) -> Rule:
    """One name of ``names``, or several distinct ones (comma-separated, or a tuple)."""

    def ok(value: str | tuple[str, ...]) -> bool:
        chosen = names_of(value)
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
    "ema": _num(0, 100),
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
            raise ConfigError(_choice_error(name, value, rule))
        raise ConfigError(f"{name} must be {rule.allowed}, got {value!r}")


def check_train_size(train_size: int | None, val_size: int) -> None:
    """A training subset has at least one image per class, and at most the images left after the
    validation split (a larger one is refused, not quietly clamped)."""
    if train_size is None:
        return
    if train_size < CLASSES:
        raise ConfigError(
            f"train_size={train_size} is fewer images than the {CLASSES} classes; give at least {CLASSES}"
        )
    left = FULL_TRAIN_SIZE - val_size
    if train_size > left:
        raise ConfigError(
            f"train_size={train_size:,} is more than the {left:,} training images left after val_size={val_size:,}; "
            f"give at most {left} (or leave it out: all of them)"
        )


def _choice_error(name: str, value: Any, rule: Rule) -> str:
    """What is wrong with a name (or names) chosen from ``rule.choices``: none, one named twice,
    or one that is not there."""
    names = [n for n in names_of(value) if n] if isinstance(value, str | tuple) else []
    if isinstance(value, str | tuple) and not names:
        return f"{name} is empty; choose {rule.allowed}"
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"{name} names {', '.join(twice)} more than once; give each once"
    unknown = [n for n in names if n not in rule.choices]
    shown = ", ".join(unknown) if unknown else (",".join(value) if isinstance(value, tuple) else value)
    return f"unknown {name} {shown!r}; choose {rule.allowed}"


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


def check_objectives(objectives: tuple[str, ...]) -> None:
    if "accuracy" not in objectives:
        raise ConfigError(
            "objectives must include accuracy (the validation accuracy every trial reports and is pruned on), "
            "e.g. accuracy,throughput"
        )


# What one model's recipe in a comparison study may set (the study's own values otherwise).
RECIPE_SETTINGS = ("lr_min", "lr_max", "momentum", "fixed")


def check_recipes(recipes: Any, models: list[str]) -> None:
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
                check_lr_range(recipe["lr_min"], recipe["lr_max"])
        except ConfigError as e:
            raise ConfigError(f"recipes.{model}: {e}") from None


def disagreement(key: str, fixed: Any, study: Any) -> str:
    return (
        f"fixed {key}={fixed!r} disagrees with the study's {key}={study!r}; give one of them "
        f"(--fix {key}=N sets the study's --{key.replace('_', '-')})"
    )


def check_lr_range(lr_min: float, lr_max: float) -> None:
    if lr_min >= lr_max:
        raise ConfigError(f"lr_min ({lr_min}) must be below lr_max ({lr_max})")


def check_lr_grid(grid: Any) -> None:
    if grid is None:
        return
    if not isinstance(grid, list | tuple) or not grid:
        raise ConfigError(f"lr_grid must be a list of learning rates, got {grid!r}")
    for lr in grid:
        check_value("lr_grid", lr, RECIPE_RULES["lr"])


_RUN_KEYS = {"seed", "data_seed", "precision", "eval_batch_size"}  # how a recipe is run, not the recipe


RECIPE_KEYS = frozenset(RECIPE_RULES) - _RUN_KEYS  # RECIPE_RULES: one rule per TrainConfig field (tested)


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
