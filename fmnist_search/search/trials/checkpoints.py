"""Trial checkpoints: each epoch's training state in the study's artifact store, so a stopped
trial's retry continues where it stopped instead of from epoch 1.

A trial's checkpoint is one artifact (``engine.population.Snapshot``'s payload, with the
model and recipe it belongs to), named by its ``checkpoint`` attr, replaced every epoch (the
new one written before the attr points at it, so a stopped write never leaves a checkpoint
that loads half) and removed when the trial ends. A stopped trial (SIGTERM, Ctrl-C, a lost
store, a dead worker) keeps its own: its WAITING retry names it in ``retry_history`` and
``find`` picks the newest one there. Artifacts go through the artifact store's own
``write``/``open_reader``/``remove``, so any Optuna artifact store serves.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna
import torch
from optuna.artifacts.exceptions import ArtifactNotFound

from ...engine.population import Snapshot
from ...engine.train import TrainConfig
from ..store.internals import storage_of, store_folder, trial_id
from .record import TrialRecord

FORMAT = 1
_NOT_RECIPE = ("seed", "data_seed", "precision", "eval_batch_size")  # how it ran, not what it trains


def recipe_of(cfg: TrainConfig) -> dict[str, Any]:
    """What must match for a checkpoint to continue a trial: its hyperparameters."""
    return {k: v for k, v in asdict(cfg).items() if k not in _NOT_RECIPE}


def save(store: Any, model: str, cfg: TrainConfig, snap: Snapshot) -> dict[str, Any]:
    """Write ``snap`` as a new artifact; the ``checkpoint`` attr that names it."""
    buffer = io.BytesIO()
    payload = {
        "format": FORMAT,
        "model": model,
        "recipe": recipe_of(cfg),
        "seed": cfg.seed,
        "data_seed": cfg.data_seed,
        "snapshot": snap.payload(),
    }
    torch.save(payload, buffer)
    artifact = f"checkpoint-{uuid.uuid4()}"
    size = buffer.tell()
    buffer.seek(0)
    store.write(artifact, buffer)
    return {"artifact": artifact, "epoch": snap.epoch, "bytes": size}


def remove(store: Any, attr: dict[str, Any] | None) -> None:
    """Delete a checkpoint artifact (one already gone is fine)."""
    if attr and attr.get("artifact"):
        with contextlib.suppress(Exception):  # the store raises its own types for a missing artifact
            store.remove(attr["artifact"])


def find(study: optuna.Study, trial: optuna.Trial) -> tuple[int, dict[str, Any]] | None:
    """(stopped trial number, its checkpoint attr): the newest checkpoint among the trials this
    one retries (``retry_history``), or None."""
    history = storage_of(study).get_trial_system_attrs(trial_id(trial)).get("retry_history") or []
    if not history:
        return None
    stopped = {t.number: t for t in study.get_trials(deepcopy=False) if t.number in history}
    for number in sorted(history, reverse=True):
        attr = TrialRecord.of(stopped[number]).checkpoint if number in stopped else None
        if attr and attr.get("artifact"):
            return number, attr
    return None


class Refused(Exception):
    """A checkpoint that cannot continue this trial; the message says why."""


def load(store: Any, attr: dict[str, Any], model: str, cfg: TrainConfig) -> tuple[Snapshot, int, int | None]:
    """(snapshot, the seed and data seed it trained with) from ``attr``'s artifact, if it
    continues ``model`` with ``cfg``'s recipe; else ``Refused``."""
    try:
        with store.open_reader(attr["artifact"]) as reader:
            raw = reader.read()
    except ArtifactNotFound:  # written into another folder (another machine's, or a relative default)
        raise Refused(
            f"its file is not in {store_folder(store)}: give every worker the same --artifacts (FMNIST_ARTIFACTS)"
        ) from None
    except Exception as e:  # an unreadable file: whatever the store raises
        raise Refused(f"unreadable ({type(e).__name__})") from None
    try:
        payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT:
            raise Refused(f"format {payload.get('format')!r}, not {FORMAT}")
        snap = Snapshot.from_payload(payload["snapshot"])
    except Refused:
        raise
    except Exception as e:  # a corrupt file: whatever torch raises
        raise Refused(f"unreadable ({type(e).__name__})") from None
    if payload["model"] != model:
        raise Refused(f"it is a {payload['model']}, this trial trains a {model}")
    if payload["recipe"] != recipe_of(cfg):
        changed = sorted(
            k
            for k in payload["recipe"].keys() | recipe_of(cfg).keys()
            if payload["recipe"].get(k) != recipe_of(cfg).get(k)
        )
        raise Refused(f"another recipe ({', '.join(changed)})")
    return snap, payload["seed"], payload["data_seed"]


def resumable(
    study: optuna.Study, store: Any, trial: optuna.Trial, model: str, cfg: TrainConfig, say: Callable[[str], None]
) -> tuple[Snapshot, TrainConfig, int, dict[str, Any]] | None:
    """The snapshot ``trial`` continues from, its recipe as it trained, the stopped trial's
    number and checkpoint attr; None (with one line when a checkpoint was there but refused)
    to start over."""
    found = find(study, trial) if store is not None else None
    if found is None:
        return None
    number, attr = found
    try:
        snap, seed, data_seed = load(store, attr, model, cfg)
    except Refused as e:
        say(f"trial {trial.number}: the checkpoint of trial {number} is ignored ({e}); it starts over")
        return None
    return snap, TrainConfig(**{**asdict(cfg), "seed": seed, "data_seed": data_seed}), number, attr


def in_use(study: optuna.Study) -> tuple[set[str], set[str]]:
    """(weights artifacts, checkpoints that may still be resumed) of ``study``: a RUNNING trial's,
    and a stopped trial's while a WAITING or RUNNING retry names it in its ``retry_history``."""
    trials = study.get_trials(deepcopy=False)
    waiting = {
        n for t in trials if t.state.name in ("WAITING", "RUNNING") for n in t.system_attrs.get("retry_history", ())
    }
    weights, live = set(), set()
    for t in trials:
        record = TrialRecord.of(t)
        if record.weights_artifact:
            weights.add(record.weights_artifact)
        weights.update(k.removeprefix("artifacts:") for k in t.system_attrs if k.startswith("artifacts:"))
        if (
            record.checkpoint
            and record.checkpoint.get("artifact")
            and (t.state.name == "RUNNING" or t.number in waiting)
        ):
            live.add(record.checkpoint["artifact"])
    return weights, live
