"""The lines a run prints about itself: its search space, its populations, where its files go."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..search.store import sqlite_path

if TYPE_CHECKING:  # annotations only
    from ..core.config import StudySpec
    from .options import WorkOptions


def space_text(spec: StudySpec) -> str:
    lr = f"lr grid {list(spec.lr_grid)}" if spec.sampler == "grid" else f"lr {spec.lr_min:g}..{spec.lr_max:g}"
    fixed = f", fixed {spec.fixed}" if spec.fixed else ""
    own = "".join(f"; {m}: {r}" for m, r in spec.recipes.items())  # a comparison's per-model recipes
    scored = f"; objectives {','.join(spec.objectives)}" if len(spec.objectives) > 1 else ""
    return f"space {spec.space} ({lr}{fixed}{own}){scored}"


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
