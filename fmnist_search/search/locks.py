"""The budget's lock: one per (store, study), held for the few milliseconds of a census + ask.

Keyed by the store's identity, not by how its URL is spelled (``urls.store_identity``): a
file lock beside a SQLite file, where every process and user that opens it can take it; a
PostgreSQL advisory lock or a MySQL named lock on a database server, across machines.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

from filelock import FileLock

from ..core import interrupts
from ..core.config import cache_root
from ..core.errors import StorageError
from .retry import Retrier
from .urls import dialect, sqlite_path, store_identity

_LOCKS: dict[str, Callable[[str, str, Retrier], AbstractContextManager]] = {}


def _register(*dialects: str) -> Callable:
    def deco(fn: Callable[[str, str, Retrier], AbstractContextManager]) -> Callable:
        for d in dialects:
            _LOCKS[d] = fn
        return fn

    return deco


def _key(url: str, study_name: str) -> str:
    """One key per store and study, however the store's URL is spelled (urls.store_identity)."""
    return hashlib.sha256(f"{store_identity(url)}\0{study_name}".encode()).hexdigest()


# A database lock lives as long as the connection that took it: taken on a fresh pooled
# connection (pre-pinged, so one killed by a database restart is replaced), retried like
# any storage call while the database is away; released on the same connection, where a
# connection that died meanwhile has released it already.
# pg_advisory_lock waits as long as it takes (and returns nothing). GET_LOCK waits at most
# its timeout and says 1 (taken), 0 (timed out) or NULL (error); MariaDB reads a negative
# timeout as an error, so "-1 = forever" took no lock there at all: ask again, 5 s at a time.
_SQL = {
    "postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
    "mysql": ("SELECT GET_LOCK(:k, 5)", "SELECT RELEASE_LOCK(:k)"),
}


def _lock_key(url: str, study_name: str) -> int | str:
    if dialect(url) == "postgresql":
        return int(_key(url, study_name)[:15], 16)  # fits PostgreSQL's signed 64-bit lock key
    return f"fmnist-search-{_key(url, study_name)[:40]}"  # MySQL caps lock names at 64 chars


@_register("postgresql", "mysql", "mariadb")
@contextmanager
def _database_lock(url: str, study_name: str, retry: Retrier) -> Iterator[None]:
    from sqlalchemy import exc, text

    take, give = _SQL["postgresql" if dialect(url) == "postgresql" else "mysql"]
    params = {"k": _lock_key(url, study_name)}

    def acquire() -> Any:
        conn = _engine(url).connect()
        try:
            while (got := conn.execute(text(take), params).scalar()) == 0:  # GET_LOCK timed out: again
                interrupts.check()
            if got is None and take.startswith("SELECT GET_LOCK"):
                raise StorageError(f"cannot take the study's budget lock: {take} returned NULL")
            conn.commit()
        except BaseException:
            conn.invalidate()
            conn.close()
            raise
        return conn

    conn = retry(acquire, "budget lock")
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
        return FileLock(str(root / f"{_key(url, study_name)[:32]}.lock"))
    return FileLock(str(path.resolve().with_name(f"{path.name}-budget.lock")), mode=0o666)


_ENGINES: dict[str, Any] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(url: str) -> Any:
    from sqlalchemy import create_engine

    with _ENGINES_LOCK:
        if url not in _ENGINES:
            _ENGINES[url] = create_engine(url, pool_size=1, max_overflow=0, pool_pre_ping=True)
        return _ENGINES[url]


def study_lock(url: str, study_name: str, retry: Retrier | None = None) -> AbstractContextManager:
    """A lock shared by every worker of this study that can reach the same lock service."""
    lock = _LOCKS.get(dialect(url))
    if lock is None:
        return _file_lock(url, study_name)
    retry = retry or Retrier(url)
    return _ReusableLock(lambda: lock(url, study_name, retry))


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
