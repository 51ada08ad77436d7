"""Files written whole: to a temporary file beside the target, then renamed into place, so a
reader (another process, or the next run after a crash) never loads half a file; and the one
check every output option makes before a command does its work."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import FmnistSearchError


def write_whole(path: Path, write: Callable[[Path], object]) -> None:
    """``write(tmp)`` fills a temporary file in ``path``'s folder, which then replaces ``path`` atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def check_output(path: Path, *, folder: bool = False) -> None:
    """Refuse, before any work, an output that cannot be written (the one rule of every output
    option: ``--output``, ``--csv``, ``--save``, ``--output-dir``): a file that names a folder, a
    folder that names a file, or a place its nearest existing folder does not let us write (a
    read-only mount, no permission). Nothing is created; the write itself creates the folders."""
    if not folder and path.is_dir():
        raise FmnistSearchError(f"cannot write {path}: it is a folder; name a file in it, e.g. {path / 'out'}")
    if folder and path.exists() and not path.is_dir():
        raise FmnistSearchError(f"cannot write to {path}: it is a file; name a folder")
    existing = path if folder else path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise FmnistSearchError(f"cannot write {path}: {existing} is a file, not a folder")
    try:  # what the write will need: a new file in that folder (os.access says yes to root on a read-only mount)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise FmnistSearchError(f"cannot write {path}: {existing}: {e.strerror or e}") from None
