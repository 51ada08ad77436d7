"""The lines a run prints about itself: its search space, its populations, where its files go."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.config import setting_text
from ..search.store import mask_url, sqlite_path

if TYPE_CHECKING:  # annotations only
    from ..core.config import StudySpec
    from .options import WorkOptions


def search_text(spec: StudySpec) -> str:
    """The run's second line: what it searches and how, what is fixed: ``searches lr 0.01..0.4
    (tpe sampler, median pruner); fixed: nesterov, weight_decay 0.00018, ...``."""
    lr = (
        f"lr grid {setting_text(list(spec.lr_grid))}"
        if spec.sampler == "grid"
        else f"lr {spec.lr_min:g}..{spec.lr_max:g}"
    )
    what = f"the {spec.space} space ({lr})" if spec.space != "lr" else lr
    parts = [f"searches {what} ({spec.sampler} sampler, {spec.pruner} pruner)"]
    if spec.fixed:
        parts.append(f"fixed: {setting_text(spec.fixed)}")
    parts += [f"{m}: {setting_text(r)}" for m, r in spec.recipes.items()]  # a comparison's per-model recipes
    if len(spec.objectives) > 1:
        parts.append(f"objectives {setting_text(list(spec.objectives))}")
    return "; ".join(parts)


def store_text(url: str) -> str:
    """The store a message names: its URL, and for a SQLite file the file itself (a relative
    URL, such as the default, is relative to the folder the command runs in)."""
    path = sqlite_path(url)
    masked = mask_url(url)
    return masked if path is None or path.is_absolute() else f"{masked} ({path.absolute()})"


def at_a_time(population: int, caps: dict[str, int]) -> str:
    if caps:  # a comparison: each model's own size
        return ", at a time: " + ", ".join(f"{m} {k}" for m, k in caps.items()) + " (--population)"
    return f", {population} at a time (--population)" if population > 1 else ""


def artifacts_note(url: str, work: WorkOptions) -> str:
    """Where a worker on a server store keeps trial files that no other machine can see."""

    if sqlite_path(url) is not None or work.artifacts is not None or not work.save_weights:
        return ""
    return (
        f"; checkpoints and weights in {work.artifact_dir(url).absolute()} on this machine only: give every worker "
        "one shared --artifacts (FMNIST_ARTIFACTS) so a re-queued trial resumes anywhere"
    )
