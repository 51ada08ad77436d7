"""Storage calls that survive a database going away for a moment: a bounded, logged back-off.

A call on a lost, refused or timed-out connection is retried (tenacity) for up to ``patience``
seconds (300 by default) with a back-off, saying so once, then raises ``StorageError``: one line,
never a traceback. Errors that waiting cannot fix (SQLite's "database or disk is full", a
read-only file) raise ``StorageError`` at once, naming the store and the cause. Every call
runs ``interrupts.shielded()``, so Ctrl-C/SIGTERM never cut a transaction in half.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity
from sqlalchemy import exc as sa_exc

from ...core import interrupts
from ...core.config import PATIENCE_S
from ...core.errors import StorageError
from .urls import mask_url

BACKOFF_S = (0.5, 15)  # seconds between attempts: the first wait, doubling up to the last, which repeats

T = TypeVar("T")
Say = Callable[[str], None]


def transient(e: BaseException) -> bool:
    """A lost, refused or timed-out database connection: worth waiting for."""
    for x in interrupts.causes(e):
        if isinstance(x, sa_exc.DBAPIError) and x.connection_invalidated:
            return True
        if isinstance(x, sa_exc.OperationalError | sa_exc.InterfaceError | sa_exc.DisconnectionError):
            return not isinstance(x.orig, sqlite3.Error)  # SQLite is a local file: no connection to lose
    return False


def reason(e: BaseException) -> str:
    """The database's own words for ``e``, on one line."""
    for x in interrupts.causes(e):
        orig = getattr(x, "orig", None)
        if orig is not None:
            e = orig
            break
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


class Unreachable(StorageError):
    """The database stayed unreachable for the whole patience."""

    def __init__(self, url: str, why: str, waited: float) -> None:
        super().__init__(f"storage {mask_url(url)} unreachable for {waited:.0f} s ({why})")
        self.why = why


class Retrier:
    """Runs storage calls with a bounded, logged back-off on transient errors."""

    def __init__(self, url: str, patience: float = PATIENCE_S, say: Say | None = None) -> None:
        self.url = url
        self.patience = patience
        self.say = say or (lambda _: None)
        self._local = threading.local()  # per-thread nesting depth: only the outermost call retries

    def __call__(self, fn: Callable[[], T], what: str = "storage call") -> T:
        depth = getattr(self._local, "depth", 0)
        if depth:
            return fn()
        self._local.depth = 1
        try:
            return self._retry(fn, what)
        finally:
            self._local.depth = 0

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        """tenacity's loop: transient errors retried with the back-off until ``patience`` runs out
        (or, while the process stops, at once); each attempt shielded from Ctrl-C."""
        start = time.monotonic()

        def attempt() -> T:
            try:
                with interrupts.shielded():
                    return fn()
            except Exception as e:
                if _is_fatal_sqlite(e):
                    raise fatal(e, self.url) from None
                raise

        def stopping(state: tenacity.RetryCallState) -> bool:
            # While cleaning up after Ctrl-C, or in a thread of a process that is stopping, do not
            # wait: the heartbeat recovers what cannot be written now.
            stopping_thread = threading.current_thread() is not threading.main_thread() and interrupts.received()
            return interrupts.cleaning_up() or bool(stopping_thread)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            if state.attempt_number == 1:
                e = state.outcome.exception() if state.outcome else None
                self.say(
                    f"storage {mask_url(self.url)} unreachable during {what} ({reason(e) if e else '?'}); "
                    f"retrying for up to {self.patience:g} s"
                )
            if threading.current_thread() is threading.main_thread():
                interrupts.check()  # a Ctrl-C during the failed attempt: stop rather than wait

        backoff = tenacity.wait_exponential(multiplier=BACKOFF_S[0], max=BACKOFF_S[-1])  # never past the patience
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            stop=tenacity.stop_after_delay(self.patience) | stopping,
            wait=lambda state: max(min(backoff(state), self.patience - state.seconds_since_start), 0.05),
            before_sleep=before_sleep,
            reraise=False,
        )
        try:
            result = retrying(attempt)  # a Ctrl-C during the wait raises Stop: no transaction is open
        except tenacity.RetryError as e:
            error = e.last_attempt.exception()
            raise Unreachable(self.url, reason(error) if error else "?", time.monotonic() - start) from None
        if retrying.statistics.get("attempt_number", 1) > 1:
            self.say(f"storage {mask_url(self.url)} reachable again after {time.monotonic() - start:.0f} s")
        return result


def _is_fatal_sqlite(e: BaseException) -> bool:
    return any(isinstance(getattr(x, "orig", None), sqlite3.Error) for x in interrupts.causes(e)) and any(
        s in reason(e).lower() for s in ("disk is full", "disk i/o error", "readonly database", "unable to open")
    )


def fatal(e: BaseException, url: str) -> StorageError:
    """A write that waiting cannot fix, as one line naming the store."""
    return StorageError(f"cannot write to the store {mask_url(url)}: {reason(e)}")
