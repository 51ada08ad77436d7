"""The training data on the device, and one epoch's batches of it.

Like airbench, the whole dataset lives on the training device as one normalized tensor,
moved there once per process; a batch is an index slice of a per-epoch permutation made
on the device, augmented there. No DataLoader, no per-sample Python, no host<->device copy
per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..core.config import TrainConfig
from . import augment
from .devices import PRECISIONS

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training pixels on [0, 1]
BACKGROUND = (0.0 - MEAN) / STD  # a black pixel, normalized: the fill for crop padding


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, 28, 28) -> normalized float32 (N, 1, 28, 28) on ``device``, once per process."""
    x = images.to(device, non_blocking=True).unsqueeze(1).float().div_(255).sub_(MEAN).div_(STD)
    return x, labels.to(device, non_blocking=True)


def autocast(device: torch.device, precision: str, cache: bool = True) -> contextlib.AbstractContextManager[Any]:
    """``precision``'s autocast (none for fp32); ``cache=False`` inside a CUDA graph capture,
    whose replays must cast the weights each time (they change in place)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache)


def epoch_stop(n: int, batch_size: int) -> int:
    return n - 1 if n % batch_size == 1 and n > 1 else n


def steps_per_epoch(n: int, batch_size: int) -> int:
    return len(range(0, epoch_stop(n, batch_size), batch_size))


def epoch_batches(perm: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Index slices of one epoch's permutation: every sample once.

    A trailing batch of one sample breaks BatchNorm in training mode; only that one is dropped.
    """
    stop = epoch_stop(len(perm), batch_size)
    for start in range(0, stop, batch_size):
        yield perm[start : min(start + batch_size, stop)]


def augment_batch(xb: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    if cfg.crop:
        xb = augment.random_crop(xb, cfg.crop, BACKGROUND, g)
    if cfg.flip:
        xb = augment.random_flip(xb, g)
    if cfg.erasing > 0:
        xb = augment.random_erasing(xb, cfg.erasing, g)
    return xb


def soft_targets_by_index(cfg: TrainConfig) -> bool:
    """Whether a recipe's batches are its images, some mirrored (no crops, no erasing), so a
    teacher's soft targets can be looked up."""
    return cfg.crop == 0 and cfg.erasing == 0


def augmented(
    xb: torch.Tensor, cfg: TrainConfig, g: torch.Generator, lookup: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A training batch, augmented; with looked-up soft targets (no crops, no erasing: flips
    at most), also which images were mirrored, drawn from ``g`` as ``augment_batch`` draws it."""
    if not (cfg.crop > 0 or cfg.flip or cfg.erasing > 0):
        return xb, None
    if not lookup:
        return augment_batch(xb, cfg, g), None
    mirrored = augment.flip_mask(len(xb), xb.device, g) if cfg.flip else None
    return (xb if mirrored is None else augment.flipped(xb, mirrored)), mirrored
