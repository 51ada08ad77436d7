"""Trial weights in Optuna's artifact store: saved by each completed trial, loaded safely.

The file format is ``weights.py``'s.
"""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import optuna
import torch
import torch.nn as nn
from optuna.artifacts import FileSystemArtifactStore, download_artifact, upload_artifact

from ...core.errors import FmnistSearchError, StorageError
from ...engine.weights import Weights, load_weights_file, weights_payload
from ..store.internals import store_folder
from ..store.urls import sqlite_path, store_identity
from ..trials.record import TrialRecord


def default_dir(storage_url: str) -> Path:
    """Beside the SQLite file (studies/fmnist.db -> studies/fmnist-artifacts), else studies/artifacts."""
    db = sqlite_path(storage_url)
    return db.with_name(f"{db.stem}-artifacts") if db is not None else Path("studies") / "artifacts"


OWNERS = ".fmnist-stores"  # in an artifact folder: the stores (urls.store_identity) whose trials write there


def open_store(path: Path, owner: str | None = None) -> FileSystemArtifactStore:
    """The artifact folder as Optuna's store, created if needed; ``owner`` (a store URL) is recorded
    in it as a store whose trials write there (``prune-artifacts`` must see every such store)."""
    path.mkdir(parents=True, exist_ok=True)
    if owner is not None and store_identity(owner) not in owners(path):
        with (path / OWNERS).open("a") as f:  # one short append: concurrent workers cannot interleave it
            f.write(store_identity(owner) + "\n")
    return FileSystemArtifactStore(str(path))


def owners(path: Path) -> set[str]:
    """The stores recorded as writing into artifact folder ``path``."""
    try:
        return {line for line in (path / OWNERS).read_text().splitlines() if line}
    except FileNotFoundError:
        return set()


READERS = ".fmnist-readers.lock"  # in an artifact folder: shared while a file is read out, exclusive to remove


@contextmanager
def reading(folder: Path) -> Iterator[None]:
    """Hold the folder's readers lock (shared) while a file is read out of it, so ``removing`` never
    deletes it under the reader; a folder where no lock file can be made (read-only) is read as is."""
    try:
        f = (folder / READERS).open("a")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_SH)
        yield


@contextmanager
def removing(folder: Path) -> Iterator[bool]:
    """Whether files may be removed from ``folder`` now: True while no reader holds it (then none
    can start until the block ends), False at once while one does."""
    with (folder / READERS).open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


WEIGHTS_MIMETYPE = "application/octet-stream"  # how optuna-dashboard serves a trial's weights: a download


def save_model(
    store: FileSystemArtifactStore, trial: optuna.Trial, module: nn.Module, model_name: str, tta_flip: bool = False
) -> str:
    """Upload ``module``'s weights (with how they were evaluated), attached to ``trial`` (the
    dashboard lists them); return the id."""
    payload = weights_payload(module, model_name, tta_flip)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}-{model_name}.pt"
            torch.save(payload, path)
            # a weights file is binary: guessed from ".pt", the type would be Debian's "snesdev-page-table"
            return upload_artifact(
                artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=WEIGHTS_MIMETYPE
            )
    except OSError as e:  # a full disk or a lost mount: the trial cannot keep its weights
        raise StorageError(
            f"cannot save trial {trial.number}'s weights in {store_folder(store)}: {e.strerror}"
        ) from None


def load_weights(store: FileSystemArtifactStore, artifact_id: str) -> Weights:
    """The model (and its name and evaluation settings) from the artifact store."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "weights.pt"
        try:
            download_artifact(artifact_store=store, file_path=str(path), artifact_id=artifact_id)
        except Exception as e:  # the store raises its own types for a missing file
            raise FmnistSearchError(f"weights artifact {artifact_id} is missing ({e})") from None
        return load_weights_file(path)


def trial_model(study: optuna.Study, store_dir: Path, trial_number: int | None = None):
    """The weights of ``trial_number`` (default: the best trial) of ``study``: (trial, model name, model)."""
    from ..study import find_trial

    trial = find_trial(study, trial_number)
    artifact_id = TrialRecord.of(trial).weights_artifact
    if artifact_id is None:
        raise FmnistSearchError(
            f"trial {trial.number} of {study.study_name!r} has no saved weights "
            f"(state {trial.state.name}; only completed trials of runs with weights saving keep them)"
        )
    if not store_dir.is_dir():
        raise FmnistSearchError(f"artifact folder {store_dir} not found; pass --artifacts DIR")
    with reading(store_dir):
        if not (store_dir / artifact_id).is_file() and study.user_attrs.get("keep_weights") is not None:
            raise FmnistSearchError(
                f"trial {trial.number}'s weights were removed: study {study.study_name!r} keeps those of its best "
                f"{study.user_attrs['keep_weights']} trials (--keep-weights)"
            )
        name, model, _ = load_weights(FileSystemArtifactStore(str(store_dir)), artifact_id)
    return trial, name, model
