"""Preset files: TOML study settings and training recipes, shipped with the package or the user's own.

A preset (fmnist_search/presets/NAME.toml, or studies/NAME.toml, or any .toml path) holds
study settings (``StudySpec`` fields, ``[fixed]``), which models and how many trials, and a
``[train]`` recipe for ``fmnist-search train``. A model's base preset (``BASE_PRESETS``) is
what a new study of that model without a preset gets under its flags (``with_base_recipe``).
Reading a preset reads a file: the pure checks live in ``config``.
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from .config import SPEC_FIELDS, StudySpec
from .errors import ConfigError
from .rules import RECIPE_SETTINGS, check_fixed

BASE_PRESETS = {"lenet": "lenet-base"}  # model -> the preset a new study of it starts from (lr space)
BASE_KEYS = ("lr_min", "lr_max", "momentum", "batch_size", "fixed")  # what a base preset gives a study


PRESET_KEYS = frozenset({"description", "models", "study", "trials", "train"})
USER_PRESETS = Path("studies")  # the user's own presets, relative to the working directory


def shipped_presets() -> Traversable:
    """The presets installed with the package (package data, wheels included)."""
    return resources.files("fmnist_search") / "presets"


@dataclass(frozen=True)
class Preset:
    """A TOML file (shipped in fmnist_search/presets/, or the user's own in studies/): study
    settings, which models, how many trials.

    Keys: ``description``; ``models`` (list; one study per model); ``study`` (name, may use
    ``{model}``); ``trials``; any StudySpec field (``epochs``, ``space``, ``[fixed]``, ...);
    and ``[train]``, the configuration ``fmnist-search train --preset`` trains. Unknown keys
    are errors.
    """

    name: str
    description: str = ""
    models: tuple[str, ...] = ()
    study: str = "{model}"
    trials: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # StudySpec fields
    train: dict[str, Any] = field(default_factory=dict)  # fixed hyperparameters for `train`


def preset_path(name: str) -> Path | Traversable:
    """A .toml path as given, else studies/NAME.toml (the user's), else the shipped preset NAME."""
    candidate = Path(name)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise ConfigError(f"preset file {name} not found")
        return candidate
    for found in (USER_PRESETS / f"{name}.toml", shipped_presets() / f"{name}.toml"):
        if found.is_file():
            return found
    raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())} or give a .toml path")


def preset_names() -> list[str]:
    shipped = {Path(p.name).stem for p in shipped_presets().iterdir() if p.name.endswith(".toml")}
    own = {p.stem for p in USER_PRESETS.glob("*.toml")} if USER_PRESETS.is_dir() else set()
    return sorted(shipped | own)


# A preset's [train] keys that say how `train` runs rather than the recipe: the network, and
# whether the final fit uses the validation images too (after the recipe was chosen on them).
TRAIN_RUN_KEYS = ("model", "full_train")


def load_preset(name: str) -> Preset:
    path = preset_path(name)
    raw = _read_preset(path)
    unknown = set(raw) - PRESET_KEYS - SPEC_FIELDS
    if unknown:
        raise ConfigError(f"preset {path}: unknown key(s) {', '.join(sorted(unknown))}")
    if "model" in raw and "models" in raw:
        raise ConfigError(f"preset {path}: give model or models, not both")
    models = tuple(raw.get("models") or ([raw["model"]] if "model" in raw else ()))
    settings = {k: v for k, v in raw.items() if k in SPEC_FIELDS and k != "model"}
    preset = Preset(
        name=Path(path.name).stem,
        description=raw.get("description", ""),
        models=models,
        study=raw.get("study", "{model}"),
        trials=raw.get("trials"),
        settings=settings,
        train=raw.get("train", {}),
    )
    for model in models or ("lenet",):  # every study it makes must be valid
        try:
            StudySpec(**{**settings, "model": model})
            check_recipe(settings.get("fixed", {}))
        except (TypeError, ConfigError) as e:
            raise ConfigError(f"preset {path}: {e}") from None
    try:
        check_recipe({k: v for k, v in preset.train.items() if k not in TRAIN_RUN_KEYS})
        if not isinstance(preset.train.get("full_train", False), bool):
            raise ConfigError("full_train must be true or false")
    except ConfigError as e:
        raise ConfigError(f"preset {path} [train]: {e}") from None
    return preset


def _read_preset(path: Path | Traversable) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"preset {path} is not valid TOML: {e}") from None


@functools.cache
def base_recipe(model: str) -> dict[str, Any]:
    """The study settings a new ``model`` study starts from ({} for a model without a base preset)."""
    if model not in BASE_PRESETS:
        return {}
    settings = load_preset(str(shipped_presets() / f"{BASE_PRESETS[model]}.toml")).settings
    return {k: v for k, v in settings.items() if k in BASE_KEYS}


def with_base_recipe(requested: dict[str, Any]) -> dict[str, Any]:
    """A new study's settings: the model's base recipe under what was requested (lr space only:
    a wider space samples those values itself)."""
    base = base_recipe(requested.get("model", ""))
    if not base or requested.get("space", "lr") != "lr" or requested.get("sampler") == "grid":
        return requested
    fixed = {**base.get("fixed", {}), **requested.get("fixed", {})}
    lr_given = "lr_min" in requested or "lr_max" in requested  # a range is the user's whole, or the base's
    settings = {k: v for k, v in base.items() if k != "fixed" and not (lr_given and k in ("lr_min", "lr_max"))}
    return {**settings, **requested, "fixed": fixed}


def model_recipe(name: str) -> dict[str, Any]:
    """Preset ``name`` as one model's recipe in a comparison study (``RECIPE_SETTINGS``): its lr
    range, its momentum, and as fixed values its [fixed] table and [train] recipe but for what the
    comparison sets itself (lr searched; epochs and batch size the study's)."""
    p = load_preset(name)
    recipe: dict[str, Any] = {k: p.settings[k] for k in ("lr_min", "lr_max", "momentum") if k in p.settings}
    if "momentum" in p.train:
        recipe["momentum"] = p.train["momentum"]
    study_level = {"lr", "epochs", "batch_size", "momentum", *TRAIN_RUN_KEYS}
    fixed = {k: v for k, v in {**p.settings.get("fixed", {}), **p.train}.items() if k not in study_level}
    return {**recipe, "fixed": fixed} if fixed else recipe


def expand_recipes(requested: dict[str, Any]) -> dict[str, Any]:
    """``recipes`` entries that name a preset (``airbench = "airbench-tuned"``) as that preset's
    recipe (``model_recipe``): what is stored, and what a resume is compared with."""
    given = requested.get("recipes") or {}
    if not any(isinstance(r, str) for r in given.values()):
        return requested
    try:
        recipes = {m: model_recipe(r) if isinstance(r, str) else r for m, r in given.items()}
    except ConfigError as e:
        raise ConfigError(f"recipes: {e}") from None
    return {**requested, "recipes": recipes}


def with_model_recipes(requested: dict[str, Any]) -> dict[str, Any]:
    """A new comparison study's settings (several models): each model's recipe is its base
    recipe (``BASE_PRESETS``, lr space only) under the one requested for it (``recipes``);
    an lr range or momentum requested for the study applies to every model instead."""
    requested = expand_recipes(requested)
    models = [m.strip() for m in str(requested.get("model", "")).split(",")]
    if len(models) < 2:
        return requested
    given = requested.get("recipes") or {}
    lr_space = requested.get("space", "lr") == "lr"
    study_level = {"lr_min", "lr_max"} if {"lr_min", "lr_max"} & set(requested) else set()
    study_level |= {"momentum"} & set(requested)
    recipes = {}
    for model in models:
        base = {k: v for k, v in base_recipe(model).items() if k in RECIPE_SETTINGS} if lr_space else {}
        recipe = {**base, **given.get(model, {})}
        if "fixed" in base and "fixed" in given.get(model, {}):
            recipe["fixed"] = {**base["fixed"], **given[model]["fixed"]}
        recipe = {k: v for k, v in recipe.items() if k not in study_level}
        if recipe:
            recipes[model] = recipe
    return {**requested, "recipes": recipes}


def check_recipe(values: dict[str, Any]) -> None:
    """``check_fixed``, and a teacher that can teach (reads the teacher preset's TOML)."""
    check_fixed(values)
    if values.get("teacher"):
        check_teacher(values["teacher"])


def check_teacher(name: str) -> Preset:
    """Preset ``name``, if it can teach: one model, a [train] recipe with an lr, no teacher of its own.

    The teacher's preset is read, not loaded (its own teacher is not followed), so a preset
    that names itself, or a cycle of presets, is an error here rather than a recursion.
    """
    try:
        path = preset_path(name)
    except ConfigError as e:
        raise ConfigError(f"teacher: {e}") from None
    raw = _read_preset(path)
    models = raw.get("models") or ([raw["model"]] if "model" in raw else [])
    train = dict(raw.get("train", {}))
    if len(models) != 1:
        raise ConfigError(f"teacher preset {name!r} must name one model, it names {len(models)}")
    if "lr" not in train:
        raise ConfigError(f"teacher preset {name!r} has no [train] table with an lr")
    if train.get("teacher") or raw.get("fixed", {}).get("teacher"):
        raise ConfigError(f"teacher preset {name!r} has a teacher of its own; chains are not supported")
    try:
        check_fixed({k: v for k, v in train.items() if k != "model"})
    except ConfigError as e:
        raise ConfigError(f"teacher preset {name!r} [train]: {e}") from None
    return Preset(name=Path(path.name).stem, models=(models[0],), settings={}, train=train)
