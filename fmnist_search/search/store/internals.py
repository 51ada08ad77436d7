"""Optuna's private names that fmnist-search uses: here, and nowhere else.

Each is used because no public API does the job (the reason is given with it). ``optuna`` is
pinned to the minor version they are tested with (``OPTUNA_TESTED``, pyproject.toml), and
``check()`` (run by tests/test_internals.py) looks every one of them up on real objects, so
an upgrade that moves one fails there, in one place, with one message naming what moved.
A test also refuses these names anywhere else in the package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.pruners import HyperbandPruner, PercentilePruner, SuccessiveHalvingPruner

OPTUNA_TESTED = "5.0"  # the minor version these names are tested with (pyproject.toml pins it)


# --- studies and trials: their ids and storage (Optuna exposes no public accessor) ---


def storage_of(study: optuna.Study) -> Any:
    """The study's storage (Optuna's cache around ours): batched writes go to the same store."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    return study._study_id


def set_study_system_attr(study: optuna.Study, key: str, value: Any) -> None:
    """A study-wide value the workers share (Study's own system attrs were removed from its API)."""
    storage_of(study).set_study_system_attr(study_id(study), key, value)


def study_system_attrs(study: optuna.Study) -> dict[str, Any]:
    return dict(storage_of(study).get_study_system_attrs(study_id(study)))


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's storage id: what storage calls take (a trial's number is per study)."""
    return trial._trial_id


def backend(storage: Any) -> Any:
    """The storage under Optuna's ``_CachedStorage`` (``study._storage`` of an RDB study)."""
    return getattr(storage, "_backend", storage)


def store_folder(store: Any) -> str:
    """The folder of a FileSystemArtifactStore (for messages naming where a write failed)."""
    return str(getattr(store, "_base_path", "the artifact store"))


# --- RDBStorage: its ORM models and sessions, for batched upserts and heartbeats ---
# (Optuna writes one commit per value; a population of K writes K values per epoch.)

# What Optuna's Study and _CachedStorage call on an RDBStorage besides its public API: a
# storage that wraps every call (ResilientStorage's retries) must wrap these too.
CREATE_TRIAL = "_create_new_trial"  # what the cache calls to create a trial (it returns the FrozenTrial)
STALE_TRIALS = "_get_stale_trial_ids"  # what fail_stale_trials asks the storage for its stale trials
PRIVATE_STORAGE_CALLS = (
    CREATE_TRIAL,
    "_set_trial_param",
    "_get_trials",
    "_get_best_trial_id",
    STALE_TRIALS,
)


def optunas_stale_trials(storage: Any, study_id: int) -> list[int]:
    """RDBStorage's own query for a study's stale trials (heartbeat older than the grace period)."""
    from optuna.storages import RDBStorage

    return list(RDBStorage._get_stale_trial_ids(storage, study_id))


def install_stale_trials(cls: type, method: Any) -> None:
    """Make ``method`` what ``optuna.storages.fail_stale_trials`` calls on storages of ``cls``:
    it asks for stale trials by this private name only."""
    setattr(cls, STALE_TRIALS, method)


def rdb_models() -> Any:
    """``optuna.storages._rdb.models``: the tables (TrialModel, TrialUserAttributeModel, ...)."""
    from optuna.storages._rdb import models

    return models


@contextlib.contextmanager
def rdb_session(storage: Any) -> Iterator[Any]:
    """One transaction on an RDBStorage, as its own methods open one (commit, or roll back)."""
    from optuna.storages._rdb.storage import _create_scoped_session

    with _create_scoped_session(storage.scoped_session, True) as session:
        yield session


# --- pruners: their settings, read to decide K trials at once (search/trials/pruning.py) ---


def percentile_settings(p: PercentilePruner) -> dict[str, Any]:
    return {
        "warmup": p._n_warmup_steps,
        "interval": p._interval_steps,
        "startup": p._n_startup_trials,
        "min_trials": p._n_min_trials,
        "percentile": p._percentile,
    }


def halving_settings(p: SuccessiveHalvingPruner) -> dict[str, Any]:
    return {
        "min_resource": p._min_resource,
        "reduction_factor": p._reduction_factor,
        "min_early_stopping_rate": p._min_early_stopping_rate,
        "bootstrap_count": p._bootstrap_count,
    }


def hyperband_bracket(
    p: HyperbandPruner, study: optuna.Study, trial: optuna.trial.FrozenTrial
) -> tuple[int, SuccessiveHalvingPruner, optuna.Study]:
    """(bracket id, its SuccessiveHalvingPruner, the bracket's view of the study) for ``trial``,
    as HyperbandPruner.prune finds them (initialising its brackets on first use)."""
    if not p._pruners:
        p._try_initialization(study)
    bracket = p._get_bracket_id(study, trial)
    return bracket, p._pruners[bracket], p._create_bracket_study(study, bracket)


# --- fronts: non-dominated sorting and hypervolume (Optuna computes both for its own
# samplers and plots, and exports neither) ---


def nondomination_ranks(losses: Any) -> Any:
    """Each row's front (0: non-dominated), every column minimised: Optuna's NSGA-II sorting."""
    from optuna.study._multi_objective import _fast_non_domination_rank

    return _fast_non_domination_rank(losses)


def hypervolume(losses: Any, reference: Any) -> float:
    """The volume dominated by ``losses`` (rows, every column minimised) up to ``reference``."""
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(losses, reference))


# --- the check an upgrade runs into ---

_ATTRS: dict[str, tuple[str, ...]] = {  # object kind -> private attributes read above
    "study": ("_storage", "_study_id"),
    "trial": ("_trial_id",),
    "frozen trial": ("_trial_id",),
    "cached storage": ("_backend",),
    "percentile pruner": ("_n_warmup_steps", "_interval_steps", "_n_startup_trials", "_n_min_trials", "_percentile"),
    "halving pruner": ("_min_resource", "_reduction_factor", "_min_early_stopping_rate", "_bootstrap_count"),
    "hyperband pruner": ("_pruners", "_try_initialization", "_get_bracket_id", "_create_bracket_study"),
    "rdb storage": (*PRIVATE_STORAGE_CALLS, "scoped_session"),
    "artifact store": ("_base_path",),
}


def check(url: str = "sqlite:///:memory:") -> None:
    """Look up every private name above on real Optuna objects; one error naming all that moved."""
    import importlib

    from optuna.storages import RDBStorage

    missing = []
    for module, name in (
        ("optuna.storages._rdb.models", "TrialModel"),
        ("optuna.storages._rdb.storage", "_create_scoped_session"),
        ("optuna.study._multi_objective", "_fast_non_domination_rank"),
        ("optuna._hypervolume", "compute_hypervolume"),
    ):
        try:
            getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            missing.append(f"{module}.{name}")
    storage = RDBStorage(url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    hyperband = HyperbandPruner(min_resource=1, max_resource=3)
    objects = {
        "study": study,
        "trial": trial,
        "frozen trial": study.trials[0],
        "cached storage": study._storage,
        "percentile pruner": optuna.pruners.MedianPruner(),
        "halving pruner": SuccessiveHalvingPruner(),
        "hyperband pruner": hyperband,
        "rdb storage": storage,
        "artifact store": optuna.artifacts.FileSystemArtifactStore("."),
    }
    for kind, names in _ATTRS.items():
        missing += [f"{kind}.{n}" for n in names if not hasattr(objects[kind], n)]
    if not missing:
        hyperband_bracket(hyperband, study, study.trials[0])  # the bracket calls, as pruning makes them
    if missing:
        raise RuntimeError(
            f"optuna {optuna.__version__} lacks private names fmnist-search uses (tested with {OPTUNA_TESTED}.x): "
            f"{', '.join(missing)}; see fmnist_search/search/store/internals.py"
        )
