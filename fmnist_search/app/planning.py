"""Which studies a command works on, and the settings each is created or resumed with.

Settings flow one way: a new study's model base recipe (without a preset) < the preset <
the flags; a resumed study's stored settings must agree (search/study.py checks them).
Refused values end here, before any store is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.errors import FmnistSearchError
from ..core.presets import load_preset
from ..core.resolution import check_settings, with_fixed_settings
from ..core.rules import SPEC_RULES, check_value


def plan_studies(
    preset: str | None,
    model: str | None,
    models: str | None,
    study: str | None,
    flags: dict[str, Any],
    trials: int | None,
) -> list[tuple[str, dict[str, Any], int, bool]]:
    """(study name, requested settings, trials, whether a new study gets its model's base
    recipe) for each study this command works on.

    Settings flow one way: base recipe (new studies without a preset) < preset < flags; a
    resumed study's stored settings must agree.
    """

    plan = _plan(preset, model, models, study, flags, trials, load_preset)
    planned = [(name, with_fixed_settings(requested), n, base) for name, requested, n, base in plan]
    for _, requested, _, _ in planned:  # refused values end here, before any store is opened
        check_settings(requested)
    return planned


def _plan(
    preset: str | None,
    model: str | None,
    models: str | None,
    study: str | None,
    flags: dict[str, Any],
    trials: int | None,
    load_preset: Callable[[str], Any],
) -> list[tuple[str, dict[str, Any], int, bool]]:
    if model is not None:  # an empty or repeated --model is its own mistake, not "no model given"
        check_value("model", model, SPEC_RULES["model"])
    if preset is None:
        if models is not None:
            raise FmnistSearchError("--models selects among a preset's models; use it with --preset")
        if model is None and study is None:
            raise FmnistSearchError("give --model (a new study), --study NAME (resume one) or --preset NAME")
        requested = {"model": model, **flags} if model else flags
        default_name = "+".join(m.strip() for m in model.split(",")) if model else None  # lenet+airbench
        return [(study or default_name, requested, trials or 30, True)]  # type: ignore[list-item]
    p = load_preset(preset)
    chosen = [model] if model else list(p.models)
    if models is not None:
        wanted = [m.strip() for m in models.split(",")]
        unknown = set(wanted) - set(p.models)
        if unknown:
            raise FmnistSearchError(
                f"preset {p.name} has no model {', '.join(sorted(unknown))}; it has {', '.join(p.models)}"
            )
        chosen = [m for m in p.models if m in wanted]
    if not chosen:
        raise FmnistSearchError(f"preset {p.name} names no model; give --model")
    if study is not None and len(chosen) > 1:
        raise FmnistSearchError("--study names one study, but the preset makes one per model; use --models to pick one")
    settings = {**p.settings, **flags}
    if "fixed" in p.settings and "fixed" in flags:  # --fix adds to (or overrides keys of) the preset's [fixed]
        settings["fixed"] = {**p.settings["fixed"], **flags["fixed"]}
    return [
        (study or p.study.format(model=m), _narrowed({**settings, "model": m}), trials or p.trials or 30, False)
        for m in chosen
    ]


def _narrowed(requested: dict[str, Any]) -> dict[str, Any]:
    """A comparison preset's settings for the models asked for (``--model lenet,airbench``
    over ``compare``): the other models' recipes dropped."""
    if "recipes" not in requested:
        return requested
    models = {m.strip() for m in str(requested["model"]).split(",")}
    return {**requested, "recipes": {m: r for m, r in requested["recipes"].items() if m in models}}
