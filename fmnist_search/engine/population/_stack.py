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
    one module as itself (``plain``), or K stacked (``fused`` / ``vmap``). Each row keeps its
    own step count (its position in its lr table): members may join at a later epoch."""

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
        self.steps_per_epoch = steps_per_epoch(n, cfgs[0].batch_size)
        self.lrs = lr_table(cfgs, self.steps_per_epoch, device, params[0].dtype)
        self.per_model = PerModel(cfgs, device, params[0].dtype)
        self.scale = LossScale(device) if cfgs[0].precision == "fp16" else None
        self.alive = list(range(len(cfgs)))
        self.cfgs = list(cfgs)  # each row's recipe
        self.steps = [0] * len(cfgs)  # each row's SGD steps (the host's count, for snapshots)
        self.step_t = torch.zeros(len(cfgs), dtype=torch.long, device=device)  # the same on the device: lr columns
        self.version = 0  # bumped when tensors are replaced (a captured step must be captured anew)

    def losses(self, out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        return self.per_model.loss(out, y, soft)

    def _param_names(self) -> list[str]:
        return [n for n, _ in unwrapped(self.template).named_parameters()] if self.plain else self.names

    def snapshot(self, row: int, member: Member, at_round: int, batches: SharedBatches) -> Snapshot:
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
            len(member.result.history),
            self.steps[row],
            state,
            momentum,
            batches.order.get_state(),
            batches.x.device.type,
            list(member.result.history),
            scale,
            round=at_round,
            augment=batches.augment_state(member.cfg),
        )

    def restore(self, snaps: Sequence[Snapshot]) -> None:
        """Momentum, each row's lr position and the loss scale of ``snaps`` (weights: loaded into the modules)."""
        for row, snap in enumerate(snaps):
            for i, n in enumerate(self._param_names()):
                self.opt.momentum_of(i, row).copy_(snap.momentum[n])
            self.steps[row] = snap.steps
        self.step_t.copy_(torch.tensor(self.steps))
        if self.scale is not None and snaps[0].loss_scale is not None:
            self.scale.scale.fill_(snaps[0].loss_scale[0])
            self.scale.growth.fill_(int(snaps[0].loss_scale[1]))

    def step(self, losses: torch.Tensor) -> None:
        """One SGD step of every model, each at its lr of its own step (read on the device: graph-ready)."""
        total = losses.sum()  # model k's gradients: its own loss's
        lr = self.lrs.gather(1, self.step_t.view(-1, 1)).view(-1)
        if self.scale is None:
            self.opt.step(torch.autograd.grad(total, self.opt.params), lr)
        else:
            grads = torch.autograd.grad(total * self.scale.scale, self.opt.params)
            self.opt.step(grads, lr, self.scale.unscale(grads))
        self.step_t.add_(1)

    def stepped(self, n: int) -> None:
        """The host's count of ``n`` steps taken by every row."""
        self.steps = [s + n for s in self.steps]

    def evaluate(self, val: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> list[tuple[float, float]]:
        return evaluate_all(self.forward, self.state, val, batch_size, self.per_model.tta)

    def retire(self, members: Sequence[Member], stop: set[int]) -> list[int]:
        """After an epoch: members named in ``stop`` are stopped, those at their last epoch done
        (weights taken out); the rows of every member that left (diverged ones too), returned."""
        for row, m in enumerate(self.alive):
            if members[m].status != "training":
                continue
            if m in stop:
                members[m].status = "stopped"
            elif len(members[m].result.history) >= members[m].cfg.epochs:
                members[m].status = "done"
                members[m].module = (
                    self.template.train(False) if self.plain else unstack(self.state, row, self.template)
                )
        return [row for row, m in enumerate(self.alive) if members[m].status != "training"]

    @torch.no_grad()
    def put(self, row: int, member: int, module: nn.Module, cfg: TrainConfig) -> None:
        """Member ``member`` (a fresh ``module`` with ``cfg``) trains in row ``row`` from its first
        step: its weights, settings and lr table written in place, momentum zeroed."""
        assert not self.plain, "a population of one is not refilled"
        for key, value in unwrapped(module).state_dict().items():
            self.state[key][row].copy_(value)
        self.opt.put(row, cfg)
        self.per_model.put(row, cfg)
        row_lrs = lr_table([cfg], self.steps_per_epoch, self.lrs.device, self.lrs.dtype)[0]
        if len(row_lrs) > self.lrs.shape[1]:  # a longer recipe than any before: a wider table
            self.lrs = torch.nn.functional.pad(self.lrs, (0, len(row_lrs) - self.lrs.shape[1]))
            self.version += 1
        self.lrs[row].zero_()
        self.lrs[row, : len(row_lrs)] = row_lrs
        self.alive[row], self.cfgs[row], self.steps[row] = member, cfg, 0
        self.step_t[row] = 0

    def drop(self, rows: list[int]) -> None:
        """Remove ``rows`` (members that left and were not replaced); a new shape."""
        keep = [row for row in range(len(self.alive)) if row not in set(rows)]
        if not keep or not rows:
            self.alive = [self.alive[r] for r in keep]
            return
        index = torch.tensor(keep, device=self.lrs.device)
        self.state = {key: v.detach()[index].contiguous() for key, v in self.state.items()}
        self.opt.keep([self.state[n].requires_grad_() for n in self.names], index)
        self.lrs = self.lrs[index]
        self.step_t = self.step_t[index]
        self.per_model.keep(index)
        self.alive = [self.alive[r] for r in keep]
        self.cfgs = [self.cfgs[r] for r in keep]
        self.steps = [self.steps[r] for r in keep]
        self.version += 1
