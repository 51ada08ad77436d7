"""Optuna plumbing: storage / sampler / pruner factories and create-or-resume.

Optuna owns the storage: trials, params, intermediate values and attrs live in its
tables; the resolved ``StudySpec`` is stored as study user attrs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import RDBStorage

from ..core.config import StudySpec
from ..core.errors import StorageError
from ..core.presets import check_recipe, expand_recipes, with_base_recipe, with_model_recipes
from ..core.resolution import resolve
from .store.storage import make_storage  # noqa: F401 - re-exported
from .store.urls import mask_url  # noqa: F401 - re-exported
from .trials.objectives import directions, metric_names
from .trials.pruning import ParetoHalvingPruner

SAMPLERS: dict[str, Callable[[StudySpec, int], optuna.samplers.BaseSampler]] = {
    # constant_liar (Optuna 5's default, set for clarity): RUNNING trials count as poor ones, so trials
    # asked together (--population, many workers) spread out instead of sampling the same point.
    "tpe": lambda spec, seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
    "random": lambda spec, seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda spec, seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    "gp": lambda spec, seed: optuna.samplers.GPSampler(seed=seed),
    "qmc": lambda spec, seed: optuna.samplers.QMCSampler(seed=seed, warn_independent_sampling=False),
    # Every lr of the grid once (the report's protocol); the study's trial target is the grid size.
    "grid": lambda spec, seed: optuna.samplers.GridSampler({"lr": list(spec.lr_grid or ())}, seed=seed),
}

PRUNERS: dict[str, Callable[[StudySpec], optuna.pruners.BasePruner]] = {
    # Median: stop a trial whose epoch-k accuracy is below the median of earlier trials at k,
    # once 5 trials finished, and never at epoch 1: one epoch mostly rewards a high lr.
    "median": lambda spec: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2),
    "sha": lambda spec: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
    "hyperband": lambda spec: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=spec.epochs),
    # Several objectives: Syne Tune's MOASHA (its defaults, grace period 1 and eta 3), search/trials/pruning.py
    "moasha": lambda spec: ParetoHalvingPruner(min_resource=1, reduction_factor=3),
    "none": lambda spec: optuna.pruners.NopPruner(),
}


def study_names(storage: RDBStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(storage: RDBStorage, name: str) -> optuna.Study:
    """An existing study, or an error listing the ones that exist."""
    names = study_names(storage)
    if name not in names:
        raise StorageError(f"no study named {name!r} in this storage ({known_studies(name, names)})")
    return optuna.load_study(study_name=name, storage=storage)


def known_studies(name: str, names: list[str]) -> str:
    """``studies: lenet, lenet-2, airbench``: the store's studies, the closest to ``name`` first."""
    import difflib

    if not names:
        return "no studies yet; create one with `fmnist-search run --model lenet`"
    close = difflib.get_close_matches(name, names, n=len(names), cutoff=0.0)
    return "studies: " + ", ".join(close + [n for n in names if n not in close])


def find_trial(study: optuna.Study, number: int | None = None, where: tuple[str, ...] = ()) -> optuna.trial.FrozenTrial:
    """Trial ``number`` of ``study``, or its best: the most accurate completed trial on validation
    (on the Pareto front, within the ``where`` floors and ceilings: search/results/front.py)."""
    from .results.front import pick

    if number is None:
        return pick(study, where)
    if where:
        raise StorageError("give a trial number or --where conditions, not both")
    for t in study.get_trials(deepcopy=False):
        if t.number == number:
            return t
    raise StorageError(f"study {study.study_name!r} has no trial {number}")


def stored_spec(study: optuna.Study) -> StudySpec:
    return StudySpec.from_attrs(study.user_attrs)


def open_study(
    storage: RDBStorage, name: str, requested: dict[str, Any], base: bool = False
) -> tuple[optuna.Study, StudySpec]:
    """Create study ``name`` from ``requested`` settings (over its model's base recipe if
    ``base``), or resume it if they agree with the stored ones."""
    names = study_names(storage)
    exists = name in names
    if not exists and "model" not in requested:  # a typo of a study's name must not start a new study
        raise StorageError(
            f"no study named {name!r} in this storage ({known_studies(name, names)}); "
            "give --model (or --preset) to create it"
        )
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs if exists else None
    if stored is not None and "model" not in stored:
        raise StorageError(f"study {name!r} exists but was not created by fmnist-search; use another --study name")
    if stored is None and base:
        requested = with_base_recipe(requested)
    requested = with_model_recipes(requested) if stored is None else expand_recipes(requested)
    spec = resolve(requested, stored, name)
    if stored is None:
        for fixed in [spec.fixed, *(r.get("fixed", {}) for r in spec.recipes.values())]:
            check_recipe(fixed)  # a new study's teacher must be able to teach
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions(spec.objectives),
        sampler=SAMPLERS[spec.sampler](spec, spec.seed),
        pruner=PRUNERS[spec.pruner](spec),
        load_if_exists=True,
    )
    if not exists:
        with warnings.catch_warnings():  # experimental in name only since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(metric_names(spec.objectives))  # the dashboard's labels, not "TrialContext 0"
        for key, value in spec.to_attrs().items():
            study.set_user_attr(key, value)
        study.set_user_attr("created_by", f"fmnist-search {_version()}")
    return study, spec


def _version() -> str:
    from .. import __version__

    return __version__
