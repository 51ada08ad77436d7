"""Knowledge distillation: a frozen teacher, its soft targets, and the loss term they give."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.files import write_whole
from .batches import MEAN, STD, autocast


class Teacher:
    """A frozen distillation teacher, and its logits of every training image looked up by index.

    Without crops or random erasing a training batch is its images, some mirrored; so the
    teacher's logits of each image and of its mirror are computed once (two passes over the
    split, kept for the process's later trials) and a batch's soft targets are an index
    lookup instead of a teacher forward pass per step (~5x the step's cost for LeNet under
    airbench). With crops or erasing every batch is new: the teacher runs on it.

    With ``cache`` (a path stem beside the teacher's cached weights) the tables are also kept
    on disk, keyed by the images, device kind, precision and batch size, so the next process
    with the same teacher and data loads them (~13 s of two passes on 2 CPU cores, for
    LeNet's 50,000 images under airbench) instead of computing them again.
    """

    def __init__(self, net: nn.Module, cache: Path | None = None) -> None:
        self.net = net
        self.cache = cache
        self._tables: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out: torch.Tensor = self.net(xb)
        return out

    def tables(self, x: torch.Tensor, precision: str, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of each image of ``x``, logits of its mirror), computed once per (x, precision)."""
        key = (x.data_ptr(), x.shape, x.device, precision)
        if key not in self._tables:
            path = self._file(x, precision, batch_size)
            if path is not None and path.is_file():
                plain, mirror = torch.load(path, map_location=x.device, weights_only=True)
            else:
                with torch.no_grad(), autocast(x.device, precision):
                    # the batch size training uses, so each image's logits come from the same kernels
                    plain = torch.cat([self.net(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
                    mirror = torch.cat([self.net(x[i : i + batch_size].flip(-1)) for i in range(0, len(x), batch_size)])
                if path is not None:
                    write_whole(path, lambda tmp: torch.save((plain.cpu(), mirror.cpu()), tmp))
            self._tables[key] = (plain, mirror)
        return self._tables[key]

    def _file(self, x: torch.Tensor, precision: str, batch_size: int) -> Path | None:
        """Where these images' tables are kept: named by a hash of their pixels (as uint8, so the
        same images hash alike on any device) and of how they were computed."""
        if self.cache is None:
            return None
        h = hashlib.sha256(f"{x.device.type}/{precision}/{batch_size}/{tuple(x.shape)}".encode())
        h.update((x.detach().float() * STD + MEAN).mul_(255).round_().to(torch.uint8).cpu().numpy().tobytes())
        return self.cache.with_name(f"{self.cache.name}-logits-{h.hexdigest()[:16]}.pt")


def as_teacher(teacher: nn.Module | Teacher | None) -> Teacher | None:
    return teacher if teacher is None or isinstance(teacher, Teacher) else Teacher(teacher)


def soft_targets(
    tables: tuple[torch.Tensor, torch.Tensor], idx: torch.Tensor, mirrored: torch.Tensor | None
) -> torch.Tensor:
    """The teacher's logits of a batch, looked up: each image's, or its mirror's where it was flipped."""
    plain, mirror = tables
    return plain[idx] if mirrored is None else torch.where(mirrored.view(-1, 1), mirror[idx], plain[idx])


def in_fp32(t: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits to fp32 for a loss, as autocast does for ``F.cross_entropy``; fp32/fp64 as they are."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Hinton et al.'s soft-target term: KL(teacher || student) at ``temperature``, times T^2,
    averaged over the batch.

    ``student`` is (B, C) for one model, a scalar; or (K, B, C) for K models with a (K, 1, 1)
    ``temperature`` each, (K,). ``teacher`` is (B, C) or (1, B, C), the same for all, or
    (K, B, C), one per model. The T^2 keeps its
    gradients the size of the cross-entropy's whatever the temperature, so ``distill`` weighs
    the two terms alike.
    """
    t = temperature
    log_p_student = F.log_softmax(in_fp32(student) / t, dim=-1)
    log_p_teacher = F.log_softmax(in_fp32(teacher) / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean(-1)
    return kl * (t.reshape(kl.shape) ** 2 if isinstance(t, torch.Tensor) else t * t)
