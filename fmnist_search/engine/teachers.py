"""Teachers for knowledge distillation: a preset's network, trained on the student's images.

A recipe with ``teacher = "airbench-tuned"`` trains its network against that preset's
network as well as the labels (``train.distill``). The teacher is trained here, with its
preset's ``[train]`` recipe, on exactly the student's training images (so it never sees
the validation or test images the student is selected and scored on), then cached by
what determines it: the preset's model and recipe, the seed, the precision and a hash of
those images. The next run, trial or worker process with the same images loads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from filelock import FileLock

from ..core.config import TrainConfig, cache_root
from ..core.files import write_whole
from ..core.presets import check_teacher
from .distill import Teacher
from .train import MEAN, STD, EpochMetrics, train_recipe
from .weights import load_weights_file, weights_payload


def _fingerprint(
    model: str, recipe: dict[str, Any], seed: int, precision: str, train: tuple[torch.Tensor, torch.Tensor]
) -> str:
    h = hashlib.sha256(json.dumps([model, recipe, seed, precision], sort_keys=True).encode())
    images, labels = train
    # The exact images and labels, in order: a different split is a different teacher. Hashed as
    # the uint8 pixels they came from: CUDA and CPU normalise to floats an ulp apart, and a
    # teacher trained on one device must be found from the other.
    pixels = (images.detach().float() * STD + MEAN).mul_(255).round_().to(torch.uint8)
    for t in (pixels, labels):
        h.update(t.cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_teacher(
    name: str,
    train: tuple[torch.Tensor, torch.Tensor],
    seed: int = 0,
    precision: str = "fp32",
    say: Callable[[str], None] = lambda _: None,
) -> Teacher:
    """Preset ``name``'s network trained on ``train`` (device tensors), frozen, in eval mode
    (``.net``), as a distillation ``Teacher`` whose logit tables of the training images are kept
    beside its cached weights: computed once per teacher and data, not once per process.

    Loaded from the cache when this exact teacher was trained before, else trained now
    (its preset's epochs; ~5 min for airbench-tuned on 2 CPU cores) and cached. The cache
    file is written whole, then renamed into place, so an interrupted run leaves none; a
    file lock makes concurrent workers train it once.
    """
    preset = check_teacher(name)
    model_name, recipe = preset.models[0], dict(preset.train)
    path = cache_root() / "teachers" / f"{preset.name}-{_fingerprint(model_name, recipe, seed, precision, train)}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # the workers of one study wait for the first to train it
        if path.is_file():
            say(f"teacher {name}: loaded from {path}")
            net = load_weights_file(path).module
        else:
            net = _train(name, model_name, recipe, seed, precision, train, say)
            write_whole(path, lambda tmp: torch.save(weights_payload(net, model_name), tmp))
            say(f"teacher {name}: saved to {path}")
    net = net.to(memory_format=torch.channels_last).to(train[0].device).eval()
    net.requires_grad_(False)
    return Teacher(net, cache=path.with_suffix(""))


def _train(
    name: str,
    model_name: str,
    recipe: dict[str, Any],
    seed: int,
    precision: str,
    train: tuple[torch.Tensor, torch.Tensor],
    say: Callable[[str], None],
) -> nn.Module:
    cfg = TrainConfig(**recipe, seed=seed, precision=precision)
    say(f"teacher {name}: training {model_name} for {cfg.epochs} epochs on {len(train[0])} images (cached after)")

    def progress(m: EpochMetrics) -> None:
        say(f"teacher {name}: epoch {m.epoch}/{cfg.epochs} train_acc={m.train_accuracy:.4f} ({m.train_time_s:.1f} s)")

    built, _ = train_recipe(model_name, cfg, train, None, on_epoch_end=progress)
    return built.module
