"""A worker's heartbeats: every trial it holds beats from the moment it is asked.

Optuna fails a RUNNING trial whose heartbeat is older than the grace period, and its stale
callback queues it again (``requeue.RequeueStale``). So a worker killed at any moment must
leave only trials that have beaten at least once: ``hold`` records a trial's first beat
synchronously, right after the ask and before anything is sampled, loaded or trained, and
one thread then beats for every held trial in one transaction per interval. (A trial
created by a worker killed before even that first beat is adopted by the next stale check:
``storage.ResilientStorage.stale_trial_ids``.)
"""

from __future__ import annotations

import threading
from typing import Any

from .internals import trial_id
from .storage import backend


class Heartbeats:
    """Beats for the trials held (``hold``/``drop``) while the block runs (``with``)."""

    def __init__(self, storage: Any) -> None:
        store = backend(storage)
        interval = store.get_heartbeat_interval() if store is not None else None
        self._store = store if interval is not None else None
        self._interval = interval
        self._ids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, trials: list[Any]) -> None:
        """Beat for ``trials`` (Optuna trials) now, and every interval until they are dropped (a
        trial already held is not beaten again: the lifecycle holds what the worker's ask held)."""
        with self._lock:
            ids = [i for i in (trial_id(t) for t in trials) if i not in self._ids]  # held ones beat already
        if self._store is None or not ids:
            return
        self._store.record_heartbeats(ids)
        with self._lock:
            self._ids.update(ids)

    def drop(self, trials: list[Any]) -> None:
        with self._lock:
            self._ids.difference_update(trial_id(t) for t in trials)

    def __enter__(self) -> Heartbeats:
        if self._store is not None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="heartbeats", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        assert self._store is not None and self._interval is not None
        while not self._stop.wait(self._interval):
            with self._lock:
                ids = sorted(self._ids)
            if ids:
                self._store.record_heartbeats(ids)  # never raises: a lasting outage is the main thread's to report
