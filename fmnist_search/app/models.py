"""One configuration without a study: train it, evaluate a model, predict images, survey the data.

Each function returns data; the CLI prints it. Progress goes to callables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core.config import TrainConfig
from ..core.errors import FmnistSearchError
from ..core.presets import TRAIN_RUN_KEYS, check_recipe, load_preset
from ..engine import data as data_mod
from ..engine.data import CLASSES
from ..engine.inference import confusion_matrix, load_image, per_class_accuracy, predict_images
from ..engine.models import create_model, list_models
from ..engine.population import order_seed
from ..engine.teachers import cached_teacher
from ..engine.train import to_device
from ..engine.weights import load_weights_file, weights_payload
from ..search.artifacts import trial_model
from ..search.results import confusion_figure
from ..search.study import find_trial, load_study, stored_spec
from ..search.trials import TrialRecord, model_of
from .studies import load_dataset, resolve_runtime

if TYPE_CHECKING:  # annotations only
    from optuna.storages import RDBStorage

    from ..engine.population import EpochMetrics

Say = Callable[[str], None]


def chosen_model(
    study: str | None, trial: int | None, weights: Path | None, store: Callable[[], RDBStorage], artifact_dir: Path
) -> tuple[str, str, Any, bool]:
    """(label, model name, model, whether its recipe evaluates with flip TTA) from a study's
    trial (its best, or number ``trial``) or a weights file (no recipe: False)."""

    if (study is None) == (weights is None):
        raise FmnistSearchError("give --study NAME (its best or --trial N weights) or --weights FILE")
    if weights is not None:
        loaded = load_weights_file(weights)
        return weights.stem, loaded.model_name, loaded.module, loaded.tta_flip
    t, name, model = trial_model(load_study(store(), study), artifact_dir, trial)
    return f"{study} trial {t.number}", name, model, bool((TrialRecord.of(t).config or {}).get("tta_flip"))


@dataclass
class Pick:
    """The study trial `train --from-study` retrains: its seeds, and how it trained."""

    study: str
    number: int
    seed: int  # its weights' seed
    data_seed: int | None  # its batch order's (None: the weights' seed)
    split_seed: int  # the study's split
    joined_epoch: int  # > 1: it joined its population later, on batches from the population's order


def train_config(
    model: str | None,
    preset: str | None,
    params: str | None,
    from_study: str | None,
    trial: int | None,
    store: Callable[[], RDBStorage],
    where: tuple[str, ...] | list[str] = (),
) -> tuple[str, dict[str, Any], dict[str, Any], Pick | None]:
    """What `fmnist-search train` trains: (model, hyperparameters, split settings, the study
    trial it retrains), from a preset or a study's trial < --params (< flags, applied by the
    caller). ``store`` opens the study store, only when a study is named."""

    config: dict[str, Any] = {}
    split: dict[str, Any] = {}
    pick: Pick | None = None
    if preset is not None and from_study is not None:
        raise FmnistSearchError("give --preset or --from-study, not both")
    if preset is not None:
        p = load_preset(preset)
        model = model or p.train.get("model") or (p.models[0] if p.models else None)
        config.update({k: v for k, v in p.settings.items() if k in ("epochs", "batch_size", "momentum")})
        config.update({k: v for k, v in p.train.items() if k not in TRAIN_RUN_KEYS})
        split = {k: v for k, v in p.settings.items() if k in ("val_size", "train_size", "seed")}
        split.update({k: v for k, v in p.train.items() if k == "full_train"})
    if from_study is not None:
        study = load_study(store(), from_study)
        spec = stored_spec(study)
        t = find_trial(study, trial, tuple(where))
        model = model or model_of(t.params, spec)
        config.update(
            TrialRecord.of(t).config
            or {
                "epochs": spec.epochs,
                "batch_size": spec.batch_size,
                "momentum": spec.momentum,
                **spec.fixed,
                **t.params,
            }
        )
        record = TrialRecord.of(t)
        pick = Pick(  # the trial as it ran: its seeds, on the study's split
            from_study,
            t.number,
            int(config.pop("seed", spec.seed + t.number)),
            config.pop("data_seed", None),
            spec.seed,
            record.joined_epoch or 1,
        )
        split = {"val_size": spec.val_size, "train_size": spec.train_size, "seed": spec.seed}
    if params is not None:
        try:
            extra = json.loads(params)
        except json.JSONDecodeError as e:
            raise FmnistSearchError(f"--params is not valid JSON: {e.msg} at column {e.colno}") from None
        if not isinstance(extra, dict):
            raise FmnistSearchError("--params takes a JSON object, e.g. '{\"lr\": 0.05}'")
        config.update(extra)
    if model is None:
        raise FmnistSearchError("give --model (or a --preset / --from-study that names one)")
    return model, config, split, pick


@dataclass
class Training:
    """What `train` runs: the network, its recipe (as given) and how the data is split."""

    name: str
    config: dict[str, Any]
    images: int = 0
    device: str = ""
    precision: str = ""
    test_accuracy: float = float("nan")
    saved: Path | None = None


def train(
    model: str | None,
    preset: str | None,
    params: str | None,
    from_study: str | None,
    trial: int | None,
    store: Callable[[], RDBStorage],
    *,
    where: tuple[str, ...] | list[str] = (),
    epochs: int | None,
    split_flags: dict[str, Any],
    device: str,
    precision: str,
    compile: bool,
    data_dir: Path | None,
    download: bool,
    save: Path | None,
    show: Say,
    say: Say,
) -> Training:
    """Train one configuration (preset or a study's trial < --params < flags) and test it; ``show``
    gets what it trains and a line per epoch, ``say`` the rest (the teacher's training)."""

    from ..engine.train import Diverged, evaluate, on_device, train_recipe

    if where and from_study is None:
        raise FmnistSearchError("--where picks a trial of --from-study; give the study")
    name, config, split, pick = train_config(model, preset, params, from_study, trial, store, where)
    if epochs is not None:
        config["epochs"] = epochs
    reseed = split_flags.get("seed")
    if pick is not None:  # the trial was chosen on the study's split: --seed reseeds the training only
        split_flags = {k: v for k, v in split_flags.items() if k != "seed"}
    split.update(split_flags)
    full_train = bool(split.get("full_train", False))
    check_recipe(config)
    if "lr" not in config:
        raise FmnistSearchError("no learning rate: give --params '{\"lr\": 0.05}', a preset with one, or --from-study")
    dev, prec = resolve_runtime(device, precision)
    run_seed = split.get("seed", 0)
    if pick is None:
        cfg = TrainConfig(**config, seed=run_seed, precision=prec)
    elif reseed is None:
        cfg = TrainConfig(**config, seed=pick.seed, data_seed=pick.data_seed, precision=prec)
    else:
        cfg = TrainConfig(**config, seed=reseed, precision=prec)
    if name not in list_models():
        create_model(name)  # raises the "unknown model ...; choose one of" error before any data is loaded
    ds = load_dataset(data_dir, download)
    splits = data_mod.make_splits(ds, split.get("val_size", 10_000), split.get("train_size"), run_seed)
    tr, va, te = on_device(splits, dev, full_train)  # as every trial starts
    teacher = cached_teacher(cfg.teacher, tr, run_seed, prec, say=say) if cfg.teacher else None
    run = Training(name, config, images=len(tr[0]), device=str(dev), precision=prec)
    show(f"train {name} on {run.images} images ({dev}, {prec}): {config}")
    if pick is not None:
        show(seeds_line(pick, cfg))

    def on_epoch(m: EpochMetrics) -> None:
        val = "" if full_train else f" val_acc={m.val_accuracy:.4f}"
        show(
            f"epoch {m.epoch}/{cfg.epochs}: train_loss={m.train_loss:.4f} train_acc={m.train_accuracy:.4f}{val} "
            f"({m.train_time_s:.1f} s, {m.samples / m.train_time_s:,.0f} samples/s)"
        )

    try:
        built, _ = train_recipe(
            name,
            cfg,
            tr,
            None if full_train else va,
            compiled={} if compile else None,
            teacher=teacher,
            on_epoch_end=on_epoch,
        )
    except Diverged as e:
        raise FmnistSearchError(f"{e}; try a lower lr") from None
    run.test_accuracy, _ = evaluate(built.runnable, *te, tta_flip=cfg.tta_flip)  # fp32, as `evaluate` reproduces it
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(weights_payload(built.module, name, tta_flip=cfg.tta_flip), save)
        run.saved = save
    return run


def seeds_line(pick: Pick, cfg: TrainConfig) -> str:
    """What a retrained pick is seeded with, and how to change it."""
    seeds = f"weights seed {cfg.seed}, batch order seed {order_seed(cfg)}, the study's split (seed {pick.split_seed})"
    if cfg.seed != pick.seed or cfg.data_seed != pick.data_seed:
        return f"trial {pick.number} of {pick.study!r} retrained with other seeds: {seeds}"
    line = f"trial {pick.number} of {pick.study!r} as it ran: {seeds}; --seed N retrains it with other seeds"
    if pick.joined_epoch > 1:
        line += (
            f" (it joined its population at epoch {pick.joined_epoch}, on the population's batch order from "
            "there: alone, the order starts afresh)"
        )
    return line


@dataclass
class Evaluation:
    label: str
    accuracy: float
    images: int
    tta_flip: bool
    classes: list[str]
    matrix: list[list[int]]  # (true, predicted) counts
    per_class: list[float] = field(default_factory=list)
    html: Path | None = None

    def tables(self) -> list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]]:
        """(title, columns, rows) of the per-class table and the confusion matrix."""
        m, names = self.matrix, self.classes
        per_class = [
            (f"{i} {n}", f"{a:.3f}", str(m[i][i]), str(sum(m[i])))
            for i, (n, a) in enumerate(zip(names, self.per_class, strict=True))
        ]
        confusion = [(f"{i} {n}", *map(str, m[i])) for i, n in enumerate(names)]
        return [
            ("per class", ("class", "accuracy", "correct", "images"), per_class),
            (
                "confusion matrix (rows: true class, columns: predicted)",
                ("true", *map(str, range(len(names)))),
                confusion,
            ),
        ]


def evaluate(
    study: str | None,
    trial: int | None,
    weights: Path | None,
    store: Callable[[], RDBStorage],
    artifacts: Path,
    *,
    tta_flip: bool | None,
    device: str,
    data_dir: Path | None,
    download: bool,
    output_dir: Path | None,
) -> Evaluation:
    """A trial's (or a file's) weights on the test set: accuracy, per class, the confusion matrix (and its HTML)."""

    label, _, model, recipe_tta = chosen_model(study, trial, weights, store, artifacts)
    tta = recipe_tta if tta_flip is None else tta_flip
    dev, _ = resolve_runtime(device, "fp32")
    ds = load_dataset(data_dir, download)
    x, y = to_device(ds.test_images, ds.test_labels, dev)
    matrix = confusion_matrix(model.to(dev), x, y, tta_flip=tta)
    result = Evaluation(
        label,
        matrix.diag().sum().item() / matrix.sum().item(),
        len(y),
        tta,
        list(CLASSES),
        matrix.tolist(),
        per_class_accuracy(matrix),
    )
    if output_dir is not None:  # only when asked: the page is ~5 MB (plotly.js inside)
        result.html = output_dir / f"confusion-{re.sub(r'[^A-Za-z0-9._-]+', '-', label)}.html"
        output_dir.mkdir(parents=True, exist_ok=True)
        confusion_figure(result.matrix, result.classes, f"{label}: confusion matrix").write_html(result.html)
    return result


def predict(
    images: list[Path],
    study: str | None,
    trial: int | None,
    weights: Path | None,
    store: Callable[[], RDBStorage],
    artifacts: Path,
) -> tuple[str, list[tuple[Path, str, float, bool]]]:
    """(model label, (file, class, probability, whether it was inverted) per image)."""

    loaded = [load_image(p) for p in images]  # every file is checked before the model is loaded
    label, _, model, _ = chosen_model(study, trial, weights, store, artifacts)
    probs = predict_images(model, torch.stack([img for img, _ in loaded]), torch.device("cpu"))
    rows = []
    for path, (_, inverted), p in zip(images, loaded, probs, strict=True):
        k = int(p.argmax())
        rows.append((path, CLASSES[k], p[k].item(), inverted))
    return label, rows


def survey_data(data_dir: Path | None, verify: bool) -> list[str]:
    """Where Fashion-MNIST was looked for and found, and (``verify``) whether its files check out."""

    lines = []
    for loc in data_mod.survey(data_dir):
        found = sum(p is not None for p in loc.files.values())
        lines.append(f"{loc.directory}: {found}/4 files")
    location = data_mod.locate(data_dir)
    if location is None:
        where = " in the folder you chose" if data_mod.chosen(data_dir) else ""
        raise FmnistSearchError(f"Fashion-MNIST not found{where}; {data_mod.HOW_TO_GET}")
    lines.append(f"using {location.directory}")
    if verify:
        ds = data_mod.load(data_dir, allow_download=False)
        lines.append(
            f"verified: SHA-256 of all four files matches; "
            f"{len(ds.train_labels)} train, {len(ds.test_labels)} test images"
        )
    return lines
