"""Requested settings -> a study's spec: checked before a store is opened, then built for a new
study or compared with a stored one (a resume that asks for another value is refused).

``requested`` holds only the values a user gave (flags or a preset), never defaults, so
resuming with a bare command works and only a real disagreement is refused.
"""

from __future__ import annotations

from typing import Any

from .config import SPEC_FIELDS, StudySpec
from .errors import ConfigError
from .rules import (
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
            raise ConfigError(disagreement(key, fixed[key], requested[key]))
    for key, value in requested.items():
        if key in SPEC_RULES:
            check_value(key, value, SPEC_RULES[key])
    if "lr_min" in requested and "lr_max" in requested:
        check_lr_range(requested["lr_min"], requested["lr_max"])
    if requested.get("train_size") is not None:  # (a stored study's val_size is checked again when resolved)
        check_train_size(requested["train_size"], requested.get("val_size", StudySpec.val_size))
    if "lr_grid" in requested:
        check_lr_grid(requested["lr_grid"])
    if "fixed" in requested:
        check_fixed(requested["fixed"])
    if "objectives" in requested:
        check_objectives(tuple(requested["objectives"]))
    if "recipes" in requested:
        check_recipes(requested["recipes"], names_of(requested.get("model", ",".join(requested["recipes"]))))


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
            stored_values, asked = zip(*_differences(key, getattr(spec, key), value), strict=True)
            raise ConfigError(
                f"study {study_name!r} was created with {', '.join(stored_values)}, "
                f"this run asks for {', '.join(asked)}; drop that option to resume, "
                f"or use --study NEW_NAME for a new study"
            )
    return spec


def _differences(key: str, stored: Any, asked: Any) -> list[tuple[str, str]]:
    """The settings that differ, stored and asked (``fixed.weight_decay=0.00018``), down into the
    tables (fixed values, per-model recipes) rather than the whole table."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        out = []
        for k in sorted(set(stored) | set(asked), key=str):
            if stored.get(k, _MISSING) != asked.get(k, _MISSING):
                out += _differences(f"{key}.{k}", stored.get(k, _MISSING), asked.get(k, _MISSING))
        return out
    return [(f"{key}={stored!r}", f"{key}={asked!r}")]


class _Missing:
    def __repr__(self) -> str:
        return "(unset)"


_MISSING = _Missing()
