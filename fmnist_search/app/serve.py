"""optuna-dashboard on a study store, stopped cleanly by Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer, make_server

from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard import wsgi

from ..core.errors import FmnistSearchError, Stopped
from ..core.interrupts import EXIT_CODES
from ..search.store import mask_url

if TYPE_CHECKING:  # annotations only
    from optuna.storages import RDBStorage


def serve_dashboard(
    store: RDBStorage, url: str, host: str, port: int, artifacts: Path, say: Callable[[str], None]
) -> None:
    """Serve until Ctrl-C or SIGTERM (then ``Stopped`` with exit 130 or 143, as every command
    a signal stops) or until the server fails (one-line error).

    The address is bound before anything is said, so a port in use is the only line printed.
    The server (optuna-dashboard's WSGI app on the standard library's server, as its own
    ``run_server`` does through bottle) runs in a thread, and the main thread only waits for a
    signal or for the server to fail, so the signal never lands inside a request (where one
    could be swallowed, as in the worker loop).
    """
    # The folder is read, never created: a dashboard on a study without weights shows none.
    app = wsgi(store, artifact_store=FileSystemArtifactStore(str(artifacts)))
    try:
        server = make_server(host, port, app, server_class=_server_class(host))
    except OSError as e:
        raise FmnistSearchError(f"cannot listen on {host}:{port}: {e.strerror}; try --port or --host") from None
    stop = threading.Event()
    received: list[int] = []
    failed: list[Exception] = []

    def serve() -> None:
        try:
            server.serve_forever(poll_interval=0.5)
        except Exception as e:  # reported by the main thread in one line; the thread never dies with a traceback
            failed.append(e)
        finally:
            stop.set()

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in EXIT_CODES}
    thread = threading.Thread(target=serve, name="optuna-dashboard", daemon=True)
    try:
        thread.start()
        say(f"optuna-dashboard for {mask_url(url)} on http://{host}:{port}/ (Ctrl-C to stop)")
        while not stop.wait(0.5):  # a timeout, so the signal handler gets to run
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if thread.is_alive():  # (a shutdown asked before serve_forever starts ends it at once)
            server.shutdown()
        server.server_close()
    if failed:
        e = failed[0]
        raise FmnistSearchError(f"optuna-dashboard stopped: {type(e).__name__}: {e}")
    name = signal.Signals(received[0]).name
    raise Stopped(f"optuna-dashboard stopped by {name}", EXIT_CODES[received[0]])


def _server_class(host: str) -> type[WSGIServer]:
    """The standard library's WSGI server, on IPv6 for an IPv6 address (``--host ::``)."""
    if ":" not in host:
        return WSGIServer
    return type("WSGIServerV6", (WSGIServer,), {"address_family": socket.AF_INET6})
