"""The study store: Optuna's RDBStorage, made to survive a database that goes away for a moment.

A study runs for hours on many machines; a database restart, a failover or a network blip
is routine. ``ResilientStorage`` runs every call through a ``retry.Retrier`` (shielded from
Ctrl-C, retried with a bounded back-off, one line when it gives up) on connections that are
checked before use (``pool_pre_ping``), so one killed by a restart is replaced. It also
writes many trials' attrs, reports and heartbeats in one transaction (multi-row upserts).

A call whose connection drops after the server committed it is retried too, so a replay must
be safe to repeat. Reads, upserts (attrs, reports, heartbeats) and ``set_trial_param`` are
idempotent by nature. The writes that are not check before replaying (``_REPLAYS``): a study
creation finds the study it made; a tell (``set_trial_state_values`` to a finished state) finds
the trial already in that state with those values; a retry's creation (a trial copied from a
template naming its ``failed_trial``) finds the copy it made. Asking a fresh trial is the one
call left without a key (Optuna's ask carries none): a replay after its commit leaves one
RUNNING trial without a heartbeat, which the stale check adopts, fails after the grace period
and re-queues: the one window in which a study can run one trial more than asked.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from ...core.config import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, PATIENCE_S
from ...core.errors import StorageError
from ..trials.requeue import RequeueStale
from . import internals
from .internals import PRIVATE_STORAGE_CALLS, rdb_models, rdb_session
from .retry import Retrier, Unreachable, reason
from .urls import dialect, mask_url, missing_driver, not_a_url, read_only_url, sqlite_path, writable

SQLITE_BUSY_TIMEOUT_S = 300  # how long a writer waits for SQLite's single write lock
CONNECT_TIMEOUT_S = 10  # a TCP connect to the database that hangs longer counts as a failed attempt

T = TypeVar("T")
Say = Callable[[str], None]


# What Optuna's Study and _CachedStorage call on an RDBStorage (public API and the private
# methods the cache uses, internals.PRIVATE_STORAGE_CALLS). Helpers that take an open session run inside these.
_CALLS = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number",
    "get_trial",
    "get_all_trials",
    "get_best_trial",
    "record_heartbeat",
    *PRIVATE_STORAGE_CALLS,
)


class ResilientStorage(RDBStorage):
    """RDBStorage whose every call goes through a ``Retrier`` (see the module docstring)."""

    retrier: Retrier
    read_only: bool = False  # a SQLite file opened read-only (make_storage's read_only)

    def record_heartbeat(self, trial_id: int) -> None:
        self.record_heartbeats([trial_id])

    # --- batched writes: one transaction for what Optuna writes one call (one commit) at a time ---
    # A population of K trials reports K values per epoch and ends with K records of ~20 attrs:
    # one commit each costs ~1.3 ms on SQLite here and a round trip to a database server.
    # Every write is an upsert (idempotent), so the batch retries like any call.

    def write_trials(
        self,
        *,
        user_attrs: dict[int, dict[str, Any]] | None = None,
        intermediate: list[tuple[int, int, float]] | None = None,
        system_attrs: list[tuple[int, str, Any]] | None = None,
    ) -> None:
        """Trial user attrs ({trial_id: {key: value}}), intermediate values ((trial_id, step,
        value)) and system attrs ((trial_id, key, value)) in one transaction: one check that
        the trials are still running, then one multi-row upsert per table (Optuna's own
        calls run two ORM statements per value, ~0.7 ms each here)."""
        import json

        models = rdb_models()

        user = [
            {"trial_id": i, "key": k, "value_json": json.dumps(v)}
            for i, a in (user_attrs or {}).items()
            for k, v in a.items()
        ]
        system = [{"trial_id": i, "key": k, "value_json": json.dumps(v)} for i, k, v in system_attrs or ()]
        values = []
        for trial_id, step, value in intermediate or ():
            stored, kind = models.TrialIntermediateValueModel.intermediate_value_to_stored_repr(value)
            values.append(
                {"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind}
            )
        ids = {row["trial_id"] for row in (*user, *system, *values)}
        if not ids:
            return

        def write() -> None:
            with rdb_session(self) as session:
                states = session.query(models.TrialModel.trial_id, models.TrialModel.state)
                for trial_id, state in states.filter(models.TrialModel.trial_id.in_(ids)):
                    self.check_trial_is_updatable(trial_id, state)  # as each of Optuna's writes does
                _upsert(session, models.TrialUserAttributeModel, user, ("trial_id", "key"), ("value_json",))
                _upsert(session, models.TrialSystemAttributeModel, system, ("trial_id", "key"), ("value_json",))
                _upsert(
                    session,
                    models.TrialIntermediateValueModel,
                    values,
                    ("trial_id", "step"),
                    ("intermediate_value", "intermediate_value_type"),
                )

        self.retrier(write, "batched write")

    def record_heartbeats(self, trial_ids: list[int]) -> None:
        """Optuna's ``record_heartbeat`` for many trials in one transaction (a worker's heartbeat
        thread; one trial's is the same with one id), as one upsert: a trial's first beat may meet
        another worker's adoption of it (``stale_trial_ids``). A missed beat is harmless (the
        grace period is 6 beats), a traceback from a dying thread is not: the main thread
        reports a lasting outage."""
        import sqlalchemy

        models = rdb_models()

        def beat() -> None:
            with rdb_session(self) as session:
                now = session.execute(sqlalchemy.func.now()).scalar()
                rows = [{"trial_id": i, "heartbeat": now} for i in trial_ids]
                _upsert(session, models.TrialHeartbeatModel, rows, ("trial_id",), ("heartbeat",))

        try:
            self.retrier(beat, "heartbeat")
        except StorageError as e:
            self.retrier.say(f"heartbeat skipped: {e}")

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials, after adopting the RUNNING trials that never beat: Optuna skips
        a trial with no heartbeat, so a worker killed between creating a trial and its first beat
        would leave it RUNNING for ever. Each such trial is given a heartbeat now (database time;
        its owner's first beat overwrites it), so it goes stale after the grace period like any
        other if no one beats for it."""
        import sqlalchemy

        models = rdb_models()
        with rdb_session(self) as session:
            beating = sqlalchemy.select(models.TrialHeartbeatModel.trial_id)
            orphans = session.query(models.TrialModel.trial_id).filter(
                models.TrialModel.study_id == study_id,
                models.TrialModel.state == TrialState.RUNNING,
                models.TrialModel.trial_id.not_in(beating),
            )
            now = session.execute(sqlalchemy.func.now()).scalar()
            rows = [{"trial_id": i, "heartbeat": now} for (i,) in orphans]
            _upsert(session, models.TrialHeartbeatModel, rows, ("trial_id",), ())  # an owner's beat wins
        return internals.optunas_stale_trials(self, study_id)


internals.install_stale_trials(ResilientStorage, ResilientStorage.stale_trial_ids)  # before the retries wrap it


def _upsert(
    session: Any, model: Any, rows: list[dict[str, Any]], keys: tuple[str, ...], update: tuple[str, ...]
) -> None:
    """INSERT ... ON CONFLICT (keys) DO UPDATE (DO NOTHING without ``update``), many rows in one
    statement, in each dialect's syntax."""
    if not rows:
        return
    name = session.get_bind().dialect.name
    if name in ("sqlite", "postgresql"):
        from sqlalchemy.dialects import postgresql, sqlite

        insert = (sqlite if name == "sqlite" else postgresql).insert(model).values(rows)
        if not update:
            session.execute(insert.on_conflict_do_nothing(index_elements=list(keys)))
            return
        session.execute(
            insert.on_conflict_do_update(index_elements=list(keys), set_={c: insert.excluded[c] for c in update})
        )
    elif name in ("mysql", "mariadb"):
        from sqlalchemy.dialects import mysql

        insert = mysql.insert(model).values(rows)
        if not update:
            session.execute(insert.prefix_with("IGNORE"))
            return
        session.execute(insert.on_duplicate_key_update({c: insert.inserted[c] for c in update}))
    else:  # any other database: row by row, as Optuna does it
        for row in rows:
            found = session.query(model).filter_by(**{k: row[k] for k in keys}).one_or_none()
            if found is None:
                session.add(model(**row))
            else:
                for c in update:
                    setattr(found, c, row[c])


def backend(storage: Any) -> ResilientStorage | None:
    """The ResilientStorage under a study's storage (Optuna wraps it in a cache), or None."""
    inner = internals.backend(storage)
    return inner if isinstance(inner, ResilientStorage) else None


def write_trials(
    storage: Any,
    *,
    user_attrs: dict[int, dict[str, Any]] | None = None,
    intermediate: list[tuple[int, int, float]] | None = None,
    system_attrs: list[tuple[int, str, Any]] | None = None,
) -> None:
    """``ResilientStorage.write_trials`` on a study's storage; on any other Optuna storage
    (an in-memory study), the same writes one call each."""
    store = backend(storage)
    if store is not None:
        store.write_trials(user_attrs=user_attrs, intermediate=intermediate, system_attrs=system_attrs)
        return
    for trial_id, attrs in (user_attrs or {}).items():
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
    for trial_id, step, value in intermediate or ():
        storage.set_trial_intermediate_value(trial_id, step, value)
    for trial_id, key, value in system_attrs or ():
        storage.set_trial_system_attr(trial_id, key, value)


_NOTHING = object()


def _study_made(self: ResilientStorage, directions: Any = None, study_name: str | None = None) -> Any:
    """A ``create_new_study`` replayed: the study it made, if its first attempt committed."""
    if study_name is None:
        return _NOTHING
    try:
        return RDBStorage.get_study_id_from_name(self, study_name)
    except KeyError:
        return _NOTHING


def _told(self: ResilientStorage, trial_id: int, state: TrialState, values: Any = None) -> Any:
    """A tell replayed: True if the trial is already in ``state`` with ``values`` (a claim of a
    WAITING trial, state RUNNING, has no such check: it is Optuna's own race, decided by the row)."""
    if not state.is_finished():
        return _NOTHING
    trial = RDBStorage.get_trial(self, trial_id)
    same = trial.state == state and (values is None or list(trial.values or []) == [float(v) for v in values])
    return True if same else _NOTHING


def _copy_made(self: ResilientStorage, study_id: int, template_trial: Any = None) -> Any:
    """A retry's creation replayed: the copy of ``failed_trial`` made by the first attempt."""
    failed = None if template_trial is None else template_trial.system_attrs.get("failed_trial")
    if failed is None:
        return _NOTHING
    for t in RDBStorage.get_all_trials(self, study_id, deepcopy=False, states=(TrialState.WAITING,)):
        if t.system_attrs.get("failed_trial") == failed:
            return t
    return _NOTHING


def _copy_id(self: ResilientStorage, study_id: int, template_trial: Any = None) -> Any:
    made = _copy_made(self, study_id, template_trial)
    return made if made is _NOTHING else internals.trial_id(made)


# A replay (an attempt after the first) of these asks first whether the first attempt committed.
_REPLAYS: dict[str, Callable[..., Any]] = {
    "create_new_study": _study_made,
    "set_trial_state_values": _told,
    "create_new_trial": _copy_id,
    internals.CREATE_TRIAL: _copy_made,  # what Optuna's cache calls: it returns the trial
}


def _resilient(name: str) -> Callable[..., Any]:
    own = ResilientStorage.__dict__.get(name)  # an override of ours, else RDBStorage's (looked up per call)
    check = _REPLAYS.get(name)

    @functools.wraps(getattr(ResilientStorage, name))
    def call(self: ResilientStorage, *args: Any, **kwargs: Any) -> Any:
        method = own or getattr(RDBStorage, name)
        attempts = 0

        def attempt() -> Any:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and check is not None:
                done = check(self, *args, **kwargs)
                if done is not _NOTHING:
                    return done
            return method(self, *args, **kwargs)

        return self.retrier(attempt, name.lstrip("_").replace("_", " "))

    return call


for _name in _CALLS:
    if _name != "record_heartbeat":
        setattr(ResilientStorage, _name, _resilient(_name))


def make_storage(
    url: str,
    *,
    heartbeat: bool = True,
    heartbeat_interval: int = HEARTBEAT_INTERVAL_S,
    grace_period: int = GRACE_PERIOD_S,
    patience: float = PATIENCE_S,
    wait: bool = False,
    say: Say | None = None,
    read_only: bool = False,
    existing: bool = False,
) -> ResilientStorage:
    """A storage on any SQLAlchemy URL; SQLite parent folders are created.

    With ``heartbeat``, a trial of a process that died (SIGKILL, power loss) is marked
    FAIL once it has been silent for ``grace_period`` seconds and is retried once.
    With ``wait`` (workers), an unreachable database is waited for up to ``patience``
    seconds; without it (interactive commands), it is a one-line error at once.
    With ``read_only`` (commands that only read), a SQLite file that cannot be written (a
    read-only mount, a colleague's share) is opened read-only, and nothing is written there.
    With ``existing`` (commands that read or clean up), a store that is not there is a one-line
    error, and nothing is created: no SQLite file or folder, no tables in a server's database.
    """
    path = sqlite_path(url)
    if existing and path is not None and not path.is_file():
        raise StorageError(f"no study store at {path.absolute()}: {NO_STORE}")
    engine_url = url
    frozen = read_only and path is not None and path.is_file() and not writable(path)
    if frozen:
        assert path is not None
        engine_url = read_only_url(path)
    elif path is not None and not path.parent.exists():
        try:
            path.parent.mkdir(parents=True)
        except OSError as e:
            raise StorageError(f"cannot create the folder for {mask_url(url)}: {e.strerror}") from None
    if path is not None and not frozen:
        _wal(path, url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    elif dialect(url) == "postgresql":
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    retrier = Retrier(url, patience if wait else 0.0, say)

    def connect() -> ResilientStorage:
        with warnings.catch_warnings():
            # Heartbeats are marked experimental but are Optuna's documented way to recover
            # trials of dead workers; the warning would only confuse users.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            heartbeat_kwargs: dict[str, Any] = {}
            if heartbeat:
                heartbeat_kwargs = dict(
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                    heartbeat_stale_trial_callback=RequeueStale(max_retry=1),
                )
            if existing and path is None and not _has_tables(engine_url, engine_kwargs):
                raise StorageError(f"no study store in {mask_url(url)} (its database has no Optuna tables): {NO_STORE}")
            storage = ResilientStorage.__new__(ResilientStorage)
            storage.retrier = retrier
            storage.read_only = frozen
            RDBStorage.__init__(
                storage, engine_url, engine_kwargs=engine_kwargs, skip_table_creation=frozen, **heartbeat_kwargs
            )
            return storage

    try:
        storage = retrier(connect, "connect")
    except Unreachable as e:
        waited = "" if not wait else f" (waited {patience:g} s)"
        raise StorageError(f"cannot open storage {mask_url(url)}: {e.why}{waited}") from None
    except StorageError:
        raise
    except ImportError:
        raise StorageError(f"cannot open storage {mask_url(url)}: {missing_driver(url)}") from None
    except Exception as e:  # SQLAlchemy raises many types: bad URL, bad database, missing driver
        why = missing_driver(url) if "DB access module" in str(e) else not_a_url(url) or reason(e)
        raise StorageError(f"cannot open storage {mask_url(url)}: {why}") from None
    storage.retrier.patience = patience  # calls after a successful open wait for a lost database
    return storage


NO_STORE = (
    "a study is created with `fmnist-search run --model lenet`; name another store with --storage or FMNIST_STORAGE"
)


def _has_tables(url: str, engine_kwargs: dict[str, Any]) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _wal(path: Path, url: str) -> None:
    """SQLite shared by several processes (``run --jobs``, workers, the dashboard): WAL lets
    readers go on while one process writes, and a writer waits up to the busy timeout for
    the single write lock instead of failing with "database is locked". WAL is a property
    of the database file: set here, before the engine's first connection, it holds for all
    of them, and only our stores get it. pysqlite's default transaction handling is kept on
    purpose: it runs SELECTs outside transactions and opens a write transaction only at the
    first write, so no process holds a read lock while waiting to write (the classic SQLite
    deadlock). tests/test_parallel.py hammers this."""
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error as e:
        raise StorageError(f"cannot open storage {mask_url(url)}: {e}") from None
