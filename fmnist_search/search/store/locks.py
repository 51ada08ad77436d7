"""The study's lock: one per (store, study), held for the few milliseconds of a census + ask
or a target write (trials/coordination.py).

Keyed inside the store, never by how its URL is spelled: a file lock beside the SQLite file
(its real path), where every process and user that opens it can take it; on a database server
a PostgreSQL advisory lock (scoped to the database by PostgreSQL itself) keyed by the study's
name, or a MySQL named lock (server-wide) keyed by the database the server says it is
(``DATABASE()``) and the study: `localhost`, `127.0.0.1` and a Kubernetes service's full name
take the same lock.

Waiting stays interruptible and bounded: the lock is tried (``pg_try_advisory_lock``,
``GET_LOCK(k, 0)``) every ~0.1-1 s with a signal check between tries, for at most ``patience``
seconds, then a one-line error. A holder that freezes (SIGSTOP, a paused VM) or vanishes does
not stall the study for ever: its lock session is idle at most ``HOLDER_IDLE_S`` before the
server ends it (``idle_session_timeout``; MySQL's ``wait_timeout``), and TCP keepalives find a
vanished machine's connection.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from filelock import FileLock

from ...core import interrupts
from ...core.config import PATIENCE_S, cache_root
from ...core.errors import StorageError
from .retry import Retrier
from .urls import dialect, sqlite_path, store_identity

HOLDER_IDLE_S = 60  # a lock session idle this long (its holder frozen or gone) is ended by the server
_LOCKS: dict[str, Callable[[str, str, Retrier, float], AbstractContextManager]] = {}


def _register(*dialects: str) -> Callable:
    def deco(fn: Callable[[str, str, Retrier, float], AbstractContextManager]) -> Callable:
        for d in dialects:
            _LOCKS[d] = fn
        return fn

    return deco


# A database lock lives as long as the connection that took it: taken on a fresh pooled
# connection (pre-pinged, so one killed by a database restart is replaced), retried like
# any storage call while the database is away; released on the same connection, where a
# connection that died meanwhile has released it already.
_SQL = {  # (session settings, try, release): a try answers true/1 (taken) or false/0 (held elsewhere)
    "postgresql": (
        f"SET idle_session_timeout = '{HOLDER_IDLE_S}s'; SET tcp_keepalives_idle = 30; "
        "SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3",
        "SELECT pg_try_advisory_lock(:k)",
        "SELECT pg_advisory_unlock(:k)",
    ),
    "mysql": (f"SET SESSION wait_timeout = {HOLDER_IDLE_S}", "SELECT GET_LOCK(:k, 0)", "SELECT RELEASE_LOCK(:k)"),
}


def _server_key(conn: Any, kind: str, study_name: str) -> int | str:
    """The lock's key on this server: PostgreSQL's advisory locks are per database already;
    MySQL's named locks are server-wide, so its key names the database the server is on."""
    from sqlalchemy import text

    if kind == "postgresql":
        return int(hashlib.sha256(f"fmnist-search\0{study_name}".encode()).hexdigest()[:15], 16)  # signed 64-bit
    database = conn.execute(text("SELECT DATABASE()")).scalar()
    digest = hashlib.sha256(f"{database}\0{study_name}".encode()).hexdigest()
    return f"fmnist-search-{digest[:40]}"  # MySQL caps lock names at 64 characters


@_register("postgresql", "mysql", "mariadb")
@contextmanager
def _database_lock(url: str, study_name: str, retry: Retrier, patience: float) -> Iterator[None]:
    from sqlalchemy import exc, text

    kind = "postgresql" if dialect(url) == "postgresql" else "mysql"
    settings, take, give = _SQL[kind]
    params: dict[str, Any] = {}

    def acquire() -> Any:
        conn = _engine(url).connect()
        try:
            for statement in settings.split("; "):
                conn.execute(text(statement))
            params["k"] = _server_key(conn, kind, study_name)
            start, pause = time.monotonic(), 0.05
            while True:
                got = conn.execute(text(take), params).scalar()
                if got is None:
                    raise StorageError(f"cannot take the study's lock: {take} returned NULL")
                if got:
                    break
                waited = time.monotonic() - start
                if waited >= patience:
                    raise StorageError(
                        f"study {study_name!r} is locked by another worker for {waited:.0f} s (a frozen or "
                        f"paused process? the server ends its lock session after {HOLDER_IDLE_S} s idle); try again"
                    )
                # (the session's last statement stays the try: pg_stat_activity shows who waits)
                interrupts.check()
                time.sleep(min(pause, max(patience - waited, 0.0)))
                pause = min(pause * 2, 1.0)
            conn.commit()
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return conn

    conn = retry(acquire, "study lock")
    try:
        yield
    finally:
        try:
            with interrupts.shielded():
                conn.execute(text(give), params)
                conn.commit()
        except exc.DBAPIError:
            conn.invalidate()  # the connection died, and its lock with it
        finally:
            conn.close()


def _file_lock(url: str, study_name: str) -> AbstractContextManager:
    """Beside the SQLite file, where every process and user that opens it can take it (a per-user
    cache folder would give two users two locks); in the cache for an in-memory store."""
    path = sqlite_path(url)
    if path is None:
        root = cache_root() / "locks"
        root.mkdir(parents=True, exist_ok=True)
        key = hashlib.sha256(f"{store_identity(url)}\0{study_name}".encode()).hexdigest()
        return FileLock(str(root / f"{key[:32]}.lock"))
    return FileLock(str(path.resolve().with_name(f"{path.name}-budget.lock")), mode=0o666)


_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    with _ENGINES_LOCK:
        if url not in _ENGINES:
            _ENGINES[url] = create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        return _ENGINES[url]


def study_lock(
    url: str, study_name: str, retry: Retrier | None = None, patience: float = PATIENCE_S
) -> AbstractContextManager:
    """A lock shared by every worker of this study that can reach the same store; waiting for it
    gives up after ``patience`` seconds (a database server's; a file lock waits as the OS does)."""
    lock = _LOCKS.get(dialect(url))
    if lock is None:
        return _file_lock(url, study_name)
    retry = retry or Retrier(url)
    return _ReusableLock(lambda: lock(url, study_name, retry, patience))


class _ReusableLock:
    """Turns a one-shot context-manager factory into a reusable lock object."""

    def __init__(self, factory: Callable[[], AbstractContextManager]) -> None:
        self._factory = factory
        self._held: list[AbstractContextManager] = []

    def __enter__(self) -> None:
        cm = self._factory()
        cm.__enter__()
        self._held.append(cm)

    def __exit__(self, *exc: object) -> None:
        self._held.pop().__exit__(*exc)
