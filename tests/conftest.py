"""Shared fixtures: an isolated cache, tiny synthetic data, tiny IDX files, the real data, real database servers."""

from __future__ import annotations

import contextlib
import glob
import gzip
import hashlib
import json
import os
import queue
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from fmnist_search.engine import data


@pytest.fixture(autouse=True, scope="session")
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> None:
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))  # one per session: decompress once
    mp.delenv("FMNIST_DATA_DIR", raising=False)
    mp.delenv("FMNIST_STORAGE", raising=False)
    yield
    mp.undo()


# Tests that start database servers, mount filesystems or build a wheel are slow by nature; the
# default `pytest` leaves them out (pyproject.toml), `make test` and CI run them too.
_SLOW_FIXTURES = {"postgres_url", "database_url", "postgres_server", "database_server", "installed_wheel", "small_disk"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _in_a_folder_of_its_own(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty temporary folder: a relative default (the SQLite store, a
    server store's `studies/artifacts`, evaluate's report) never lands in the repository."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def synthetic(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images where class c is a bright 6x6 square at a class-specific spot, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.randint(0, 60, (n, 28, 28), generator=g, dtype=torch.uint8)
    for i, c in enumerate(labels.tolist()):
        r, col = 2 + (c // 5) * 14, 2 + (c % 5) * 5
        images[i, r : r + 6, col : col + 4] = 230
    return images, labels


@pytest.fixture
def tiny_splits() -> data.Splits:
    return data.Splits(train=synthetic(400, 0), val=synthetic(100, 1), test=synthetic(100, 2))


def write_idx(path: Path, tensor: torch.Tensor, compress: bool) -> tuple[str, int]:
    """Write an IDX (SN3) file as torchvision reads it; return (SHA-256, size) of its raw bytes."""
    magic = 0x0800 + tensor.dim()  # type 0x08 = uint8
    raw = struct.pack(f">I{tensor.dim()}I", magic, *tensor.shape) + tensor.to(torch.uint8).numpy().tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest(), len(raw)


@pytest.fixture
def tiny_idx(tmp_path: Path):
    """A folder with the four files (gz) of a tiny dataset, and their checksums."""

    def make(compress: bool = True) -> tuple[Path, dict[str, tuple[str, int]]]:
        folder = tmp_path / ("gz" if compress else "raw")
        folder.mkdir(exist_ok=True)
        train, test = synthetic(50, 0), synthetic(20, 1)
        parts = {
            "train-images-idx3-ubyte": train[0],
            "train-labels-idx1-ubyte": train[1],
            "t10k-images-idx3-ubyte": test[0],
            "t10k-labels-idx1-ubyte": test[1],
        }
        sums = {name: write_idx(folder / name, t, compress) for name, t in parts.items()}
        return folder, sums

    return make


@pytest.fixture(scope="session")
def real_data() -> data.FashionMNIST:
    """The real Fashion-MNIST (Debian's dataset-fashion-mnist; .ci/run installs it)."""
    return data.load(allow_download=False)


def _default_sigint() -> None:
    # A test runner started in the background (`nohup ... &`) ignores SIGINT, and children
    # inherit that; tests that press Ctrl-C need the CLI to get the default handling.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_process(*args: str, env: dict | None = None, merge_output: bool = True, **kw) -> subprocess.Popen:
    """`python -m fmnist_search ARGS` as a real process: text pipes (stderr into stdout unless
    ``merge_output=False``), one torch thread, Python's default Ctrl-C handling."""
    return subprocess.Popen(
        [sys.executable, "-m", "fmnist_search", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        **kw,
    )


class Lines:
    """What a process prints on one stream, read by a thread, so every wait has a real deadline:
    a process that hangs without printing fails the wait at its deadline (a plain ``for line
    in proc.stdout`` checks a deadline only when a line arrives)."""

    def __init__(self, proc: subprocess.Popen, stream: str = "stdout") -> None:
        self.proc, self.seen = proc, []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(getattr(proc, stream),), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self._lines.put(line)
        self._lines.put(None)  # end of the stream

    def until(self, needle: str, timeout: float = 300) -> str:
        """Wait for the first line holding ``needle``; return it. Fails at ``timeout`` or at the
        stream's end, showing what was printed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                self.proc.kill()
                pytest.fail(f"no {needle!r} line within {timeout:g} s:\n{''.join(self.seen)}")
            if line is None:
                self._lines.put(None)
                pytest.fail(f"the process ended before printing {needle!r}:\n{''.join(self.seen)}")
            self.seen.append(line)
            if needle in line:
                return line

    def finish(self, timeout: float = 300) -> str:
        """Wait for the process to end; everything it printed on this stream."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(timeout=30)
        while (line := self._lines.get_nowait() if not self._lines.empty() else None) is not None:
            self.seen.append(line)
        return "".join(self.seen)

    def after(self, needle: str) -> str:
        """What was printed after the first line holding ``needle``."""
        text = "".join(self.seen)
        return text[text.index(needle) + len(needle) :] if needle in text else ""


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.load(r)


@contextlib.contextmanager
def serving_dashboard(storage: str):
    """`fmnist-search dashboard` on a free port, once its API answers: yields (base URL, the
    study summaries it lists). Then Ctrl-C stops it, which must end it as every command a
    signal stops: exit 130 and one line saying so."""
    port = free_port()
    proc = cli_process("dashboard", "--storage", storage, "--port", str(port), merge_output=False)
    lines = Lines(proc, "stderr")
    try:
        base, summaries = f"http://127.0.0.1:{port}", None
        deadline = time.monotonic() + 120  # start-up imports torch; CI machines are busy
        while summaries is None and time.monotonic() < deadline and proc.poll() is None:
            try:  # the server starts listening a moment after it starts: a poll under a deadline
                summaries = get_json(f"{base}/api/studies")["study_summaries"]
            except OSError:
                time.sleep(0.25)
        assert summaries is not None, f"the dashboard did not come up:\n{lines.finish(5)}"
        yield base, summaries
        proc.send_signal(signal.SIGINT)  # Ctrl-C stops it, whatever request it is serving
        assert proc.wait(timeout=60) == 130
        assert lines.finish(5).strip().splitlines()[-1] == "error: optuna-dashboard stopped by SIGINT"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- real database servers (Debian's binaries, installed by `make test`), on free loopback ports ---


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``start``, ``stop``, ``restart`` keep the same port and URL."""

    def __init__(self) -> None:
        bindirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bindirs:
            raise RuntimeError("PostgreSQL binaries missing: `apt-get install postgresql` (make test does it)")
        self.bin = Path(bindirs[-1])
        self.root = Path(tempfile.mkdtemp(prefix="fmnist-pg-"))  # not under pytest's 0700 tmp: postgres must enter it
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.data, self.port = self.root / "data", free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "fmnist", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "fmnist", "fmnist")
        # trust auth ignores the password; it is here to check that it is never printed
        self.url = f"postgresql://fmnist:s3cret-pw@127.0.0.1:{self.port}/fmnist"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_postgres, str(self.bin / tool), *args], check=True, capture_output=True, text=True)

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``, as two steps: pg_ctl's own restart forgets the log file,
        and a server writing to our captured output would never let the pipe close."""
        self.stop("fast")
        self.start()

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class MariaDBServer:
    """A throwaway MariaDB server (Debian's mariadb-server), same interface as PostgresServer."""

    def __init__(self) -> None:
        if shutil.which("mariadbd", path="/usr/sbin:/usr/bin") is None:
            raise RuntimeError("MariaDB binaries missing: `apt-get install mariadb-server` (make test does it)")
        self.root = Path(tempfile.mkdtemp(prefix="fmnist-maria-"))
        self.data, self.socket, self.port = self.root / "data", self.root / "sock", free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "mysql", "mysql")
        user = ["--user=mysql"] if self.as_root else []
        subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--skip-test-db", *user],
            check=True,
            capture_output=True,
        )
        self.proc: subprocess.Popen | None = None
        self.start()
        sql = (
            "CREATE DATABASE fmnist; CREATE USER 'fmnist'@'%' IDENTIFIED BY 's3cret-pw'; "
            "GRANT ALL ON fmnist.* TO 'fmnist'@'%';"
        )
        subprocess.run(["mariadb", f"--socket={self.socket}", "-uroot", "-e", sql], check=True, capture_output=True)
        self.url = f"mysql+pymysql://fmnist:s3cret-pw@127.0.0.1:{self.port}/fmnist"

    def start(self) -> None:
        user = ["--user=mysql"] if self.as_root else []
        self.proc = subprocess.Popen(
            [
                "/usr/sbin/mariadbd",
                "--no-defaults",
                f"--datadir={self.data}",
                f"--socket={self.socket}",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.root / 'pid'}",
                "--skip-name-resolve",
                "--innodb-flush-log-at-trx-commit=0",
                *user,
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "log").open("ab"),
        )
        ping = ["mariadb-admin", f"--socket={self.socket}", "-uroot", "--wait=60", "--connect-timeout=2", "ping"]
        subprocess.run(ping, check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: MariaDB's clean shutdown
            self.proc.wait(timeout=60)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


DATABASES = {"postgresql": PostgresServer, "mariadb": MariaDBServer}


@pytest.fixture(scope="module")
def postgres_url():
    """A PostgreSQL server shared by a test module."""
    server = PostgresServer()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="module", params=list(DATABASES))
def database_url(request):
    """A PostgreSQL, then a MariaDB server, shared by a test module."""
    server = DATABASES[request.param]()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def postgres_server():
    """A PostgreSQL server of this test's own, to stop and restart."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=list(DATABASES))
def database_server(request):
    """A PostgreSQL, then a MariaDB server of this test's own, to stop and restart."""
    server = DATABASES[request.param]()
    try:
        yield server
    finally:
        server.close()


def finish_command(output: str) -> list[str]:
    """The command an interrupted run names to finish what was asked, as argv for the CLI."""
    line = output.strip().splitlines()[-1]
    assert ": fmnist-search worker " in line, output
    return shlex.split(line.split(": fmnist-search ", 1)[1])


# --- the test run leaves the repository as it found it ---

_ROOT = Path(__file__).resolve().parent.parent
_NOISE = (".venv/", "__pycache__/", ".pytest_cache/", ".ruff_cache/", ".mypy_cache/", ".egg-info/")


def _tree() -> set[str] | None:
    """Untracked and ignored paths of the working tree (files, not folders), build noise left out;
    None outside a git checkout (an installed copy)."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--ignored", "--untracked-files=all"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = {line[3:] for line in out.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if not any(n in f"/{p}" for n in _NOISE)}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._tree_before = _tree()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test wrote into the repository (a store, weights, a report beside the code):
    every file a test makes belongs in a temporary folder."""
    before, after = getattr(session.config, "_tree_before", None), _tree()
    if before is None or after is None or getattr(session.config, "workerinput", None) is not None:
        return
    new = sorted(after - before)
    if new:
        session.config.get_terminal_writer().line(
            "error: the tests wrote into the repository: " + ", ".join(new), red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
