"""Storage URLs: what kind of store a URL names, its SQLite file, and how it is shown (password masked)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import exc as sa_exc
from sqlalchemy import make_url


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for every message and table (SQLAlchemy's own
    rendering; a string that is no URL is shown as it is)."""
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        return url
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)


def dialect(url: str) -> str:
    """``postgresql+psycopg://...`` -> ``postgresql``."""
    try:
        return make_url(url).get_backend_name()
    except sa_exc.ArgumentError:
        return url.split(":", 1)[0]


def sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (None for other stores and in-memory SQLite)."""
    if dialect(url) != "sqlite":
        return None
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


_DEFAULT_PORTS = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}


def store_identity(url: str) -> str:
    """What a URL names, whatever its spelling: a SQLite file's real path, or a server's
    dialect, host, port and database (no user, password, driver or query). Two URLs with the
    same identity are the same store: locks and artifact folders are keyed by it."""
    path = sqlite_path(url)
    if path is not None:
        return f"sqlite:{path.resolve()}"
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        return url
    name = dialect(url)
    port = parsed.port or _DEFAULT_PORTS.get(name, "")
    return f"{name}://{(parsed.host or 'localhost').lower()}:{port}/{parsed.database or ''}"


def writable(path: Path) -> bool:
    """Whether SQLite can write the file and create its journal beside it (EROFS counts for root too)."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def read_only_url(path: Path) -> str:
    """A SQLite URI that opens ``path`` without writing: ``mode=ro``; and ``immutable`` (no locks,
    no -shm file to create) unless a WAL file is there, whose content a plain ``mode=ro`` still reads."""
    wal = path.with_name(path.name + "-wal")
    immutable = "" if wal.exists() else "&immutable=1"
    return f"sqlite:///file:{quote(str(path.resolve()))}?mode=ro{immutable}&uri=true"


# URL scheme -> the optional dependency that brings its driver
_DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


def missing_driver(url: str) -> str:
    """Why a URL's driver would not load, and the fix: the extra to install, or, where the extra
    is installed but the URL names another driver (``mysql://`` means mysqlclient), the URL to write."""
    import importlib.util

    extra = _DRIVER_EXTRAS.get(dialect(url))
    if extra is None:
        return f"no database driver for {dialect(url)!r}"
    scheme = url.split("://", 1)[0]
    if scheme == "mysql" and importlib.util.find_spec("pymysql") is not None:
        fixed = url.replace("mysql://", "mysql+pymysql://", 1)
        return f"mysql:// means the mysqlclient driver, which is not installed; write {mask_url(fixed)}"
    return f"its database driver is not installed; pip install 'fmnist-search[{extra}]'"


def not_a_url(url: str) -> str | None:
    """The fix for a storage given as a path (``studies/x.db``), which SQLAlchemy cannot parse."""
    if "://" in url:
        return None
    return f"a storage is a URL; for the SQLite file {url} write sqlite:///{url}"
