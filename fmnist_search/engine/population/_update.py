"""The update: per-model lr tables, loss settings, the fp16 loss scale and a tensor SGD over stacked weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...core.config import TrainConfig
from ..distill import distillation_loss, in_fp32
from ..schedules import lr_factors
from ..torch_internals import unscale_, update_scale_


def lr_table(
    cfgs: Sequence[TrainConfig], steps_per_epoch: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """(K, max steps) learning rates, row k what the recipe's torch scheduler (``schedules``)
    gives model k at each step: the lr of every step is read from this table on the device."""
    cache: dict[tuple[Any, ...], list[float]] = {}
    rows = []
    for cfg in cfgs:
        key = (cfg.schedule, cfg.epochs * steps_per_epoch, cfg.warmup_frac)
        if key not in cache:  # LambdaLR's lr is base_lr * factor(step): one table of factors serves every lr
            cache[key] = lr_factors(*key)
        rows.append([cfg.lr * f for f in cache[key]])
    width = max(len(r) for r in rows)
    return torch.tensor([r + [0.0] * (width - len(r)) for r in rows], device=device, dtype=dtype)


class PerModel:
    """Per-model loss settings as (K, 1) tensors: label smoothing, distillation weight and temperature, TTA."""

    def __init__(self, cfgs: Sequence[TrainConfig], device: torch.device, dtype: torch.dtype) -> None:
        def col(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=dtype).view(-1, 1)

        self.smooth = col([c.label_smoothing for c in cfgs])
        self.distill = col([c.distill for c in cfgs])
        self.temp = col([c.distill_temp for c in cfgs]).unsqueeze(-1)
        self.tta = torch.tensor([c.tta_flip for c in cfgs], device=device)

    def keep(self, rows: torch.Tensor) -> None:
        self.smooth, self.distill, self.temp, self.tta = (
            t[rows] for t in (self.smooth, self.distill, self.temp, self.tta)
        )

    def put(self, row: int, cfg: TrainConfig) -> None:
        """Row ``row`` takes ``cfg``'s settings, in place (a captured step reads these tensors)."""
        self.smooth[row] = cfg.label_smoothing
        self.distill[row] = cfg.distill
        self.temp[row] = cfg.distill_temp
        self.tta[row] = cfg.tta_flip

    def loss(self, out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        """(K,) mean losses: ``F.cross_entropy`` with each model's label smoothing, mixed with
        each model's distillation term (``distill.distillation_loss``) where it has one."""
        out = in_fp32(out)
        logp = F.log_softmax(out, dim=-1)
        nll = -logp.gather(-1, y.view(1, -1, 1).expand(len(out), -1, 1)).squeeze(-1)  # (K, B)
        # F.cross_entropy's label smoothing, in its order of operations (the same gradients to the last bit):
        # (1 - eps) * mean NLL + mean(-sum of log-probabilities) * eps / classes.
        smooth = (-logp.sum(-1)).mean(1, keepdim=True)
        ce = ((1 - self.smooth) * nll.mean(1, keepdim=True) + smooth * (self.smooth / logp.shape[-1])).view(-1)
        if soft is None:
            return ce
        w = self.distill.view(-1)
        soft = soft if soft.dim() == 3 else soft.unsqueeze(0)  # one view per model, or one for all
        return (1 - w) * ce + w * distillation_loss(out, soft, self.temp)


class LossScale:
    """fp16's dynamic loss scale, as ``torch.amp.GradScaler`` keeps it (its defaults and its
    kernels), on the device: an overflowing step is skipped without a host sync."""

    def __init__(self, device: torch.device) -> None:
        self.scale = torch.full((), 2.0**16, device=device)
        self.growth = torch.zeros((), dtype=torch.int32, device=device)
        self.found_inf = torch.zeros((), device=device)

    def unscale(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Divide ``grads`` by the scale in place; the step's skip flag (1.0: inf or NaN found), and the next scale."""
        self.found_inf.zero_()
        unscale_(grads, self.found_inf, self.scale.reciprocal())
        update_scale_(self.scale, self.growth, self.found_inf)
        return self.found_inf


class SGD:
    """``torch.optim.SGD``'s update for one model or K stacked ones, each with its own lr,
    momentum, Nesterov and weight decay: g += wd p; buf = m buf + g; d = g + m buf (Nesterov)
    or buf; p -= lr d.

    All parameters live in one flat buffer (each parameter's data a view of it), so the update
    is ~10 operations over that buffer whatever the number of layers: on a GPU the step is
    bound by launches, and a loop over 10 LeNet parameters cost ~120 of them
    (benchmarks/results/gpu-h200.md)."""

    def __init__(
        self,
        params: list[torch.Tensor],
        cfgs: Sequence[TrainConfig],
        device: torch.device,
        stacked: bool,
        decays: Sequence[Sequence[float]] = (),
    ) -> None:
        dtype = params[0].dtype
        self.stacked = stacked  # params have a leading model dimension

        def col(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=dtype).view(-1, 1)

        # per model, (K, 1); spread over the flat buffer's elements by _adopt
        self.momentum = col([c.momentum for c in cfgs])
        self.wd = col([c.weight_decay for c in cfgs])
        self.nesterov = col([float(c.nesterov and c.momentum > 0) for c in cfgs])  # torch: none without momentum
        # Weight decay is skipped when no model has it; stacked rows always apply it (0 for some),
        # so a member joining with decay changes nothing a captured step has baked in.
        self.decaying = stacked or any(c.weight_decay > 0 for c in cfgs)
        self._adopt(params)
        self.buf = torch.zeros_like(self.flat)
        # Exponential moving averages of the weights, each a flat buffer in the weights' layout;
        # decays[a][k]: average a's per-step decay for model k (0: the weights themselves).
        self.decays = torch.tensor(decays, device=device, dtype=dtype).view(len(decays), len(cfgs))
        self.averages = [self.flat.detach().clone() for _ in decays]

    def _adopt(self, params: list[torch.Tensor]) -> None:
        """Copy ``params`` into one flat buffer and make each one's data a view of it (same
        tensors, same strides: a channels_last weight stays channels_last for cuDNN/oneDNN)."""
        self.params = params
        # Each block of the buffer holds its parameter in memory order; a gradient is put in the
        # same order by permuting its dims by decreasing stride (a view when it has those strides).
        self.orders = [_memory_order(p) for p in params]
        self.flat = torch.cat([self._in_memory_order(p.detach(), o) for p, o in zip(params, self.orders, strict=True)])
        at = 0
        for p in params:
            p.data = self.flat.as_strided(p.shape, p.stride(), at)
            at += p.numel()
        k = len(self.momentum)
        if k == 1:  # one model: per-model values broadcast as they are
            self.model_of = None
            self.mom, self.decay, self.nest = (t.view(1) for t in (self.momentum, self.wd, self.nesterov))
            return
        per_model = [p.numel() // k for p in params]  # elements of one model in each block

        def spread(t: torch.Tensor) -> torch.Tensor:  # (K, ...) -> one value per flat element
            return torch.cat([t.view(k, 1).expand(k, n).reshape(-1) for n in per_model])

        self.model_of = spread(torch.arange(k, device=self.flat.device))  # row of each element, for the lr
        self.mom, self.decay, self.nest = spread(self.momentum), spread(self.wd), spread(self.nesterov)

    def keep(self, params: list[torch.Tensor], rows: torch.Tensor) -> None:
        """Keep the models in ``rows``; ``params`` already hold their rows."""
        self.momentum, self.wd, self.nesterov = (t[rows] for t in (self.momentum, self.wd, self.nesterov))
        self.averages = [self._kept_rows(avg, rows) for avg in self.averages]
        self.decays = self.decays[:, rows]
        self.buf = self._kept_rows(self.buf, rows)
        self._adopt(params)

    def _kept_rows(self, flat: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A flat buffer in the (stacked) weights' layout, keeping the models in ``rows``."""
        blocks, at = [], 0
        for p in self.params:  # block by block: (K, n) -> kept rows
            blocks.append(flat[at : at + p.numel()].view(len(p), -1)[rows].reshape(-1))
            at += p.numel()
        return torch.cat(blocks)

    def put(self, row: int, cfg: TrainConfig, decays: Sequence[float] = ()) -> None:
        """Row ``row`` takes ``cfg``'s momentum, Nesterov and weight decay, with zeroed momentum
        buffers and averages that start at its (already written) weights, each with its decay
        in ``decays``: a new model in the row, in place (the same tensors, for a captured step)."""
        assert self.model_of is not None, "one model is replaced by building a new population"
        values = (cfg.momentum, cfg.weight_decay, float(cfg.nesterov and cfg.momentum > 0))
        mine = self.model_of == row
        for per_model, spread, value in zip(
            (self.momentum, self.wd, self.nesterov), (self.mom, self.decay, self.nest), values, strict=True
        ):
            per_model[row] = value
            spread.masked_fill_(mine, value)
        self.buf.masked_fill_(mine, 0.0)
        for avg, decay, column in zip(self.averages, decays, self.decays, strict=True):
            avg.copy_(torch.where(mine, self.flat, avg))
            column[row] = decay

    def momentum_of(self, i: int, row: int) -> torch.Tensor:
        """Parameter ``i``'s momentum for model ``row``: a view of the flat buffer, in the parameter's shape."""
        p = self.params[i]
        at = sum(q.numel() for q in self.params[:i])
        if self.stacked:
            return self.buf[at : at + p.numel()].view(len(p), -1)[row].view(p.shape[1:])
        return self.buf.as_strided(p.shape, p.stride(), at)

    def view_of(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter as a view of ``flat`` (a buffer in the weights' layout: an average)."""
        views, at = [], 0
        for p in self.params:
            views.append(flat.as_strided(p.shape, p.stride(), at))
            at += p.numel()
        return views

    def average_rates(self, steps: torch.Tensor) -> torch.Tensor:
        """(averages, K) weights of this step's weights in each average: 1 - decay, where a
        model's decay is at most t / (t + 1) after t steps, so an average is the plain mean of
        the weights so far until its half-life is reached (it is never anchored at the
        initialisation, which a fixed decay would keep for several half-lives)."""
        t = steps.to(self.decays.dtype)
        return 1 - torch.minimum(self.decays, (t / (t + 1)).unsqueeze(0))

    @staticmethod
    def _in_memory_order(t: torch.Tensor, order: list[int]) -> torch.Tensor:
        return t.permute(order).reshape(-1)

    @torch.no_grad()
    def step(
        self,
        grads: Sequence[torch.Tensor],
        lr: torch.Tensor,
        skip: torch.Tensor | None = None,
        rates: torch.Tensor | None = None,
    ) -> None:
        """One update with each model's ``lr`` (K,); with ``skip`` (1.0: fp16 overflow) none at
        all. Then each average moves towards the new weights by its ``rates`` (``average_rates``)."""
        g = torch.cat([self._in_memory_order(g, o) for g, o in zip(grads, self.orders, strict=True)])
        if self.decaying:
            g = torch.addcmul(g, self.decay, self.flat)
        lr = lr if self.model_of is None else lr[self.model_of]
        if skip is not None:  # an overflowed step leaves weights and momentum as they were
            lr = lr * (1 - skip)
            g = torch.where(skip.bool(), 0.0, g)
            previous = self.buf.clone()
        self.buf.mul_(self.mom).add_(g)
        d = torch.lerp(self.buf, torch.addcmul(g, self.mom, self.buf), self.nest)  # nesterov is 0 or 1 per model
        self.flat.addcmul_(lr, d, value=-1)
        if skip is not None:
            self.buf.copy_(torch.where(skip.bool(), previous, self.buf))
        if rates is not None:
            for avg, rate in zip(self.averages, rates, strict=True):
                avg.lerp_(self.flat, rate if self.model_of is None else rate[self.model_of])


def _memory_order(t: torch.Tensor) -> list[int]:
    """``t``'s dims from the largest stride to the smallest: the order its elements lie in memory."""
    strides = t.stride()
    return sorted(range(t.dim()), key=lambda d: -strides[d])
