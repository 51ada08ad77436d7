"""Evaluation of every member in one pass (fp32, optional flip TTA)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..distill import in_fp32
from ._forwards import Forward


@torch.inference_mode()
def log_probs(
    forward: Forward, state: dict[str, torch.Tensor], xb: torch.Tensor, tta: torch.Tensor, flip: bool
) -> torch.Tensor:
    """(K, B, classes) log-probabilities in fp32; models with ``tta`` average each image's and
    its mirror's probabilities, in log space (logsumexp - log 2), so a confident wrong
    prediction gives a large finite loss rather than log(0). ``flip``: whether any model has
    ``tta`` (the caller's, once per evaluation: reading it from the device is a sync)."""
    logp = F.log_softmax(in_fp32(forward(state, xb, False)), dim=-1)
    if flip:
        mirrored = F.log_softmax(in_fp32(forward(state, xb.flip(-1), False)), dim=-1)
        averaged = torch.logaddexp(logp, mirrored) - math.log(2)
        logp = torch.where(tta.view(-1, 1, 1), averaged, logp)
    return logp


@torch.inference_mode()
def evaluate_all(
    forward: Forward,
    state: dict[str, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    batch_size: int,
    tta: torch.Tensor,
) -> list[tuple[float, float]]:
    """(accuracy, mean cross-entropy) per model, one pass for the whole population."""
    x, y = val
    k = len(tta)
    correct = torch.zeros(k, device=x.device, dtype=torch.long)
    loss_sum = torch.zeros(k, device=x.device)
    flip = bool(tta.any())  # one host sync per evaluation, not per batch
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        logp = log_probs(forward, state, xb, tta, flip)
        loss_sum += -logp.gather(-1, yb.view(1, -1, 1).expand(k, -1, 1)).squeeze(-1).sum(1)
        correct += (logp.argmax(-1) == yb).sum(1)
    acc, loss = torch.stack([correct.float(), loss_sum]).tolist()
    return [(a / len(x), lo / len(x)) for a, lo in zip(acc, loss, strict=True)]
