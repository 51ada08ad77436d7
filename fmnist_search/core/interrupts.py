"""Ctrl-C and SIGTERM, recorded as well as raised, so that neither is ever lost.

A handler that only raises ``KeyboardInterrupt`` can lose it: when the signal lands in a
finalizer or weakref callback (``gc.collect()`` after a trial, SQLAlchemy's connection
pool), Python prints "Exception ignored in ..." and carries on. Here the handler records
the signal and then raises ``Stop``; the worker loop calls ``check()`` between trials and
the objective between epochs, so a swallowed signal still stops the run moments later.

Storage calls run ``shielded()``: a signal that arrives inside one is recorded, not raised
halfway through a transaction, and acted on at the next ``check()``. Once a ``Stop`` has been
raised, further signals are recorded only: a second Ctrl-C 20 ms after the first lands while
the first unwinds (in a ``finally``, before the run reaches its cleanup) and would cut that
short, leaving a trial RUNNING; the same holds while the run cleans up (``cleaning()``).

Ctrl-C and SIGTERM (``docker stop``, Kubernetes eviction, spot preemption) both re-queue the
running trial, which continues from its last checkpoint when work on the study resumes: a
stopped worker loses nothing but time. They differ only in the exit code (130, 143).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number, as shells report them
INTERRUPTED = "interrupted"  # fail_reason prefix of a trial stopped from outside (context -> coordination.release)


def stopped_reason(why: str) -> str:
    """A stopped trial's fail_reason: ``why`` under the ``INTERRUPTED`` prefix, said once
    ("interrupted by SIGINT", not "interrupted: interrupted by SIGINT")."""
    return why if why.startswith(INTERRUPTED) else f"{INTERRUPTED}: {why}"


class Stop(KeyboardInterrupt):
    """Raised in the main thread when this process was asked to stop by ``signum``."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)


class _State:
    installed = False  # inside handled()
    received: int | None = None  # the first stopping signal, once one came
    raised = False  # a Stop was raised from the handler: the run is unwinding; later signals only recorded
    shield_depth = 0  # > 0 while the main thread is inside a storage call
    cleaning = False  # while cleaning up after a stop: record further signals, never raise


_state = _State()


def _handler(signum: int, _frame: object) -> None:
    if _state.received is None:
        _state.received = signum
    if _state.shield_depth == 0 and not _state.cleaning and not _state.raised:
        # (one swallowed by a finalizer is raised again by the next ``check()``)
        _state.raised = True
        raise Stop(_state.received)


@contextmanager
def handled() -> Iterator[None]:
    """Handle SIGINT and SIGTERM as above inside this block (main thread), then restore the
    previous handlers: a command run in-process (tests) leaves its caller as it was.
    Re-entrant: an inner block leaves the outer one's handling in place."""
    if _state.installed:
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in EXIT_CODES}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _unraisable
    reset()
    _state.installed = True
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = previous_hook
        reset()


def _unraisable(info: sys.UnraisableHookArgs) -> None:
    # A Stop raised in a finalizer is swallowed by Python, which would print it with a
    # traceback ("Exception ignored in ..."); it is recorded, so say nothing.
    if isinstance(info.exc_value, Stop):
        return
    sys.__unraisablehook__(info)


def causes(e: BaseException | None) -> Iterator[BaseException]:
    """``e``, then what it was raised from or during, as a traceback would show them."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)


def received() -> int | None:
    return _state.received


def stop_in(e: BaseException) -> Stop | None:
    """The ``Stop`` behind ``e``: Optuna turns one raised inside its trial bookkeeping into
    an unrelated error (an UnboundLocalError in ``_run_trial``), with ours as its context."""
    for x in causes(e):
        if isinstance(x, Stop):
            return x
        if isinstance(x, KeyboardInterrupt):
            return Stop(signal.SIGINT)
    return None


def check() -> None:
    """Raise ``Stop`` if a stopping signal came, even one whose exception was swallowed."""
    if _state.received is not None and not _state.cleaning:
        raise Stop(_state.received)


@contextmanager
def shielded() -> Iterator[None]:
    """Defer signals to the end of this block (main thread; other threads get no signals)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.shield_depth += 1
    try:
        yield
    finally:
        _state.shield_depth -= 1


@contextmanager
def cleaning() -> Iterator[None]:
    """Record, never raise, signals while the stopped run cleans up."""
    _state.cleaning = True
    try:
        yield
    finally:
        _state.cleaning = False


def cleaning_up() -> bool:
    return _state.cleaning


def reset() -> None:
    """Forget a received signal (tests; a long-lived process that handled one)."""
    _state.installed = False
    _state.received = None
    _state.raised = False
    _state.shield_depth = 0
    _state.cleaning = False
