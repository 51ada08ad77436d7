"""Batch-level augmentation on the training device: whole batches, no per-sample Python.

Inputs are normalized (N, 1, 28, 28) tensors; labels are never touched. Every function
takes a ``torch.Generator`` on the batch's device, so a trial's augmentations are seeded.
"""

from __future__ import annotations

import torch


def random_crop(x: torch.Tensor, padding: int, fill: float, g: torch.Generator) -> torch.Tensor:
    """Pad by ``padding`` pixels with ``fill`` and cut a random 28x28 window per sample."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4, value=fill)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=g)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=x.device, generator=g)
    rows = (dy + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * padding)
    cols = (dx + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)  # each sample's rows, then its columns


def flip_mask(n: int, device: torch.device, g: torch.Generator) -> torch.Tensor:
    """Which of ``n`` samples ``random_flip`` mirrors (the same draw from ``g``)."""
    return torch.rand(n, device=device, generator=g) < 0.5


def flipped(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left-right."""
    return flipped(x, flip_mask(len(x), x.device, g))


def random_erasing(
    x: torch.Tensor, p: float, g: torch.Generator, scale: tuple[float, float] = (0.02, 0.33), fill: float = 0.0
) -> torch.Tensor:
    """With probability ``p`` per sample, set a random rectangle (2-33% of the area) to ``fill``."""
    n, _, h, w = x.shape
    dev = x.device
    area = torch.empty(n, device=dev).uniform_(*scale, generator=g) * h * w
    log_ratio = torch.empty(n, device=dev).uniform_(-1.2, 1.2, generator=g)  # aspect 0.3 .. 3.3
    eh = (area * log_ratio.exp()).sqrt().round().clamp(1, h).long()
    ew = (area / log_ratio.exp()).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, device=dev, generator=g) * (h - eh + 1)).long()
    x0 = (torch.rand(n, device=dev, generator=g) * (w - ew + 1)).long()
    r = torch.arange(h, device=dev).view(1, h, 1)
    c = torch.arange(w, device=dev).view(1, 1, w)
    inside_rows = (r >= y0.view(n, 1, 1)) & (r < (y0 + eh).view(n, 1, 1))
    box = inside_rows & (c >= x0.view(n, 1, 1)) & (c < (x0 + ew).view(n, 1, 1))
    apply = (torch.rand(n, device=dev, generator=g) < p).view(n, 1, 1)
    return x.masked_fill((box & apply).unsqueeze(1), fill)
