"""optuna-dashboard on a study store, stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard import run_server

from ..core.errors import FmnistSearchError
from ..search.store import mask_url

if TYPE_CHECKING:  # annotations only
    from optuna.storages import RDBStorage


def serve_dashboard(
    store: RDBStorage, url: str, host: str, port: int, artifacts: Path, say: Callable[[str], None]
) -> None:
    """Serve until Ctrl-C or SIGTERM (then return) or until the server fails (one-line error).

    The server runs in a thread, and the main thread only waits for a signal or for the
    server to fail, so the signal never lands inside a request (where one could be
    swallowed, as in the worker loop).
    """

    stop = threading.Event()
    failed: list[Exception] = []
    # The folder is read, never created: a dashboard on a study without weights shows none.
    artifact_store = FileSystemArtifactStore(str(artifacts))

    def serve() -> None:
        try:
            run_server(store, host=host, port=port, artifact_store=artifact_store)
        except Exception as e:  # reported by the main thread in one line; the thread never dies with a traceback
            failed.append(e)
        finally:
            stop.set()

    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        threading.Thread(target=serve, name="optuna-dashboard", daemon=True).start()
        say(f"optuna-dashboard for {mask_url(url)} on http://{host}:{port}/ (Ctrl-C to stop)")
        while not stop.wait(0.5):  # a timeout, so the signal handler gets to run
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        e = failed[0]
        if isinstance(e, OSError):
            raise FmnistSearchError(f"cannot listen on {host}:{port}: {e.strerror}; try --port or --host")
        raise FmnistSearchError(f"optuna-dashboard stopped: {type(e).__name__}: {e}")
