"""The alive members stacked: their weights, update, losses, evaluation and snapshots."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn

from ...core.config import TrainConfig
from ..batches import steps_per_epoch
from ._batches import SharedBatches
from ._evaluation import evaluate_all
from ._forwards import make_forward, plain_forward, stack, unstack, unwrapped
from ._members import Member, Snapshot
from ._update import SGD, LossScale, PerModel, lr_table


class Stack:
    """The alive members' weights, optimizer, lr tables and loss settings (rows = ``alive``):
    one module as itself (``plain``), or K stacked (``fused`` / ``vmap``)."""

    def __init__(self, modules: Sequence[nn.Module], cfgs: Sequence[TrainConfig], n: int, device: torch.device) -> None:
        self.plain = len(modules) == 1
        if self.plain:
            self.template = modules[0]
            self.kind, self.forward = "plain", plain_forward(modules[0])
            self.state: dict[str, torch.Tensor] = {}
            params: list[torch.Tensor] = list(modules[0].parameters())
        else:
            self.template = copy.deepcopy(modules[0])
            self.kind, self.forward = make_forward(self.template)
            self.state = stack(modules)
            self.names = [n for n, _ in self.template.named_parameters()]
            params = [self.state[n] for n in self.names]
        self.opt = SGD(params, cfgs, device, stacked=not self.plain)
        self.lrs = lr_table(cfgs, steps_per_epoch(n, cfgs[0].batch_size), device, params[0].dtype)
        self.per_model = PerModel(cfgs, device, params[0].dtype)
        self.scale = LossScale(device) if cfgs[0].precision == "fp16" else None
        self.alive = list(range(len(cfgs)))
        self.steps = 0  # SGD steps taken (the host's count, for snapshots)
        self.step_t = torch.zeros(1, dtype=torch.long, device=device)  # the same on the device: the lr's column

    def losses(self, out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        return self.per_model.loss(out, y, soft)

    def _param_names(self) -> list[str]:
        return [n for n, _ in unwrapped(self.template).named_parameters()] if self.plain else self.names

    def snapshot(self, row: int, member: Member, epoch: int, batches: SharedBatches) -> Snapshot:
        """Member ``row``'s training state now (copied to the CPU)."""

        def cpu(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        if self.plain:
            state = {k: cpu(v) for k, v in unwrapped(self.template).state_dict().items()}
        else:
            state = {k: cpu(v[row]) for k, v in self.state.items()}
        momentum = {n: cpu(self.opt.momentum_of(i, row)) for i, n in enumerate(self._param_names())}
        scale = None if self.scale is None else [self.scale.scale.item(), float(self.scale.growth.item())]
        return Snapshot(
            epoch,
            self.steps,
            state,
            momentum,
            batches.order.get_state(),
            batches.x.device.type,
            list(member.result.history),
            scale,
        )

    def restore(self, snaps: Sequence[Snapshot]) -> None:
        """Momentum, the lr position and the loss scale of ``snaps`` (the weights were loaded into the modules)."""
        for row, snap in enumerate(snaps):
            for i, n in enumerate(self._param_names()):
                self.opt.momentum_of(i, row).copy_(snap.momentum[n])
        self.steps = snaps[0].steps
        self.step_t.fill_(self.steps)
        if self.scale is not None and snaps[0].loss_scale is not None:
            self.scale.scale.fill_(snaps[0].loss_scale[0])
            self.scale.growth.fill_(int(snaps[0].loss_scale[1]))

    def step(self, losses: torch.Tensor) -> None:
        """One SGD step of every model, each at its lr of this step (read on the device: graph-ready)."""
        total = losses.sum()  # model k's gradients: its own loss's
        lr = self.lrs.index_select(1, self.step_t).view(-1)
        if self.scale is None:
            self.opt.step(torch.autograd.grad(total, self.opt.params), lr)
        else:
            grads = torch.autograd.grad(total * self.scale.scale, self.opt.params)
            self.opt.step(grads, lr, self.scale.unscale(grads))
        self.step_t.add_(1)

    def evaluate(self, val: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> list[tuple[float, float]]:
        return evaluate_all(self.forward, self.state, val, batch_size, self.per_model.tta)

    def retire(self, members: Sequence[Member], stop: set[int], epoch: int) -> bool:
        """After an epoch: members named in ``stop`` are stopped, those at their last epoch done
        (weights taken out); the rest stay. False when none does."""
        for row, m in enumerate(self.alive):
            if members[m].status != "training":
                continue
            if m in stop:
                members[m].status = "stopped"
            elif epoch >= members[m].cfg.epochs:
                members[m].status = "done"
                members[m].module = (
                    self.template.train(False) if self.plain else unstack(self.state, row, self.template)
                )
        keep = [row for row, m in enumerate(self.alive) if members[m].status == "training"]
        if keep and len(keep) < len(self.alive):  # never for one model: it either stays or leaves
            rows = torch.tensor(keep, device=self.lrs.device)
            self.state = {key: v.detach()[rows].contiguous() for key, v in self.state.items()}
            self.opt.keep([self.state[n].requires_grad_() for n in self.names], rows)
            self.lrs = self.lrs[rows]
            self.per_model.keep(rows)
            self.alive = [self.alive[r] for r in keep]
        return bool(keep)
