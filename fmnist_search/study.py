"""Optuna plumbing: storage / sampler / pruner factories and create-or-resume.

Optuna owns the storage: trials, params, intermediate values and attrs live in its
tables; the resolved ``StudySpec`` is stored as study user attrs.
"""

from __future__ import annotations

import re
import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from sqlalchemy import event
from sqlalchemy.engine import Engine

from .config import DEFAULT_STORAGE, StudySpec, resolve  # noqa: F401 - re-exported
from .errors import StorageError

SQLITE_BUSY_TIMEOUT_S = 300  # how long a writer waits for SQLite's single write lock
HEARTBEAT_INTERVAL_S = 10  # a running trial's liveness write, seconds
GRACE_PERIOD_S = 60  # a RUNNING trial silent this long belongs to a dead process: FAIL it, retry it

SAMPLERS: dict[str, Callable[[StudySpec, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda spec, seed: optuna.samplers.TPESampler(seed=seed),
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
    "none": lambda spec: optuna.pruners.NopPruner(),
}


# SQLite shared by several processes (``run --jobs``, workers, the dashboard): WAL lets
# readers go on while one process writes, and a writer waits up to the busy timeout for
# the single write lock instead of failing with "database is locked". pysqlite's default
# transaction handling is kept on purpose: it runs SELECTs outside transactions and opens
# a write transaction only at the first write, so no process holds a read lock while
# waiting to write (the classic SQLite deadlock). tests/test_parallel.py hammers this.
@event.listens_for(Engine, "connect")
def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        dbapi_connection.execute("PRAGMA journal_mode = WAL")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for every message and table."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def make_storage(
    url: str,
    *,
    heartbeat: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
) -> RDBStorage:
    """An RDB storage on any SQLAlchemy URL; SQLite parent folders are created.

    With ``heartbeat``, a trial of a process that died (SIGKILL, power loss) is marked
    FAIL once it has been silent for ``grace_period`` seconds and is retried once.
    """
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.exists():
            try:
                path.parent.mkdir(parents=True)
            except OSError as e:
                raise StorageError(f"cannot create the folder for {mask_url(url)}: {e.strerror}") from None
    engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if url.startswith("sqlite") else {}
    try:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental but are Optuna's documented way to recover
            # trials of dead workers; the warning would only confuse users.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat_kwargs: dict[str, Any] = {}
            if heartbeat:
                heartbeat_kwargs = dict(
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                )
            return RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat_kwargs)
    except ImportError:
        raise StorageError(f"cannot open storage {mask_url(url)}: {_missing_driver(url)}") from None
    except Exception as e:  # SQLAlchemy raises many types: bad URL, refused connection, bad database
        reason = _missing_driver(url) if "DB access module" in str(e) else _reason(e)
        raise StorageError(f"cannot open storage {mask_url(url)}: {reason}") from None


# URL scheme -> the optional dependency that brings its driver
_DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql"}


def _missing_driver(url: str) -> str:
    dialect = url.split(":", 1)[0].split("+", 1)[0]
    extra = _DRIVER_EXTRAS.get(dialect)
    if extra is None:
        return f"no database driver for {dialect!r}"
    return f"its database driver is not installed; pip install 'fmnist-search[{extra}]'"


def _reason(e: Exception) -> str:
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def study_names(storage: RDBStorage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


def load_study(storage: RDBStorage, name: str) -> optuna.Study:
    """An existing study, or an error listing the ones that exist."""
    names = study_names(storage)
    if name not in names:
        known = ", ".join(names) if names else "none yet; create one with `fmnist-search run`"
        raise StorageError(f"no study named {name!r} in this storage (studies: {known})")
    return optuna.load_study(study_name=name, storage=storage)


def stored_spec(study: optuna.Study) -> StudySpec:
    return StudySpec.from_attrs(study.user_attrs)


def open_study(storage: RDBStorage, name: str, requested: dict[str, Any]) -> tuple[optuna.Study, StudySpec]:
    """Create study ``name`` from ``requested`` settings, or resume it if they agree with the stored ones."""
    exists = name in study_names(storage)
    stored = optuna.load_study(study_name=name, storage=storage).user_attrs if exists else None
    if stored is not None and "model" not in stored:
        raise StorageError(f"study {name!r} exists but was not created by fmnist-search; use another --study name")
    spec = resolve(requested, stored, name)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=SAMPLERS[spec.sampler](spec, spec.seed),
        pruner=PRUNERS[spec.pruner](spec),
        load_if_exists=True,
    )
    if not exists:
        with warnings.catch_warnings():  # experimental in name only since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_accuracy"])  # the dashboard's label, not "Objective 0"
        for key, value in spec.to_attrs().items():
            study.set_user_attr(key, value)
        study.set_user_attr("created_by", f"fmnist-search {_version()}")
    return study, spec


def _version() -> str:
    from . import __version__

    return __version__
