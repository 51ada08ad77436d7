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

    def __init__(
        self,
        modules: Sequence[nn.Module],
        cfgs: Sequence[TrainConfig],
        n: int,
        device: torch.device,
        halflives: Sequence[float] = (),
    ) -> None:
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
        self.steps_per_epoch = steps_per_epoch(n, cfgs[0].batch_size)
        # Averages of the weights: the recipe's own (``ema``, what is judged) when it has one,
        # then any measured beside it (``halflives``, in epochs: benchmarks/fidelity.py).
        self.judged_average = cfgs[0].ema > 0
        self.halflives = list(halflives)
        rows = [self._decays(c) for c in cfgs]  # per model: each average's decay
        self.opt = SGD(params, cfgs, device, stacked=not self.plain, decays=[list(a) for a in zip(*rows, strict=True)])
        live = self._buffers()  # BatchNorm statistics, averaged beside the weights they belong to
        self.buffer_averages = [{k: v.detach().clone() for k, v in live.items()} for _ in self.opt.averages]
        self.shadow: nn.Module | None = None  # one model's averaged weights, as a module to evaluate
        self.lrs = lr_table(cfgs, self.steps_per_epoch, device, params[0].dtype)
        self.per_model = PerModel(cfgs, device, params[0].dtype)
        self.scale = LossScale(device) if cfgs[0].precision == "fp16" else None
        self.alive = list(range(len(cfgs)))
        self.cfgs = list(cfgs)  # each row's recipe
        self.steps = [0] * len(cfgs)  # each row's SGD steps (the host's count, for snapshots)
        self.step_t = torch.zeros(len(cfgs), dtype=torch.long, device=device)  # the same on the device: lr columns
        self.version = 0  # bumped when tensors are replaced (a captured step must be captured anew)

    def _decays(self, cfg: TrainConfig) -> list[float]:
        """Each average's per-step decay for a model with ``cfg``: its half-life in steps is
        ``halflife * steps_per_epoch`` (0: the weights themselves)."""
        halflives = ([cfg.ema] if self.judged_average else []) + self.halflives
        return [0.5 ** (1 / (h * self.steps_per_epoch)) if h > 0 else 0.0 for h in halflives]

    def _buffers(self) -> dict[str, torch.Tensor]:
        """The live BatchNorm statistics (stacked: (K, C) rows)."""
        if self.plain:
            return {k: v for k, v in unwrapped(self.template).named_buffers()}
        params = set(self.names)  # once, not per key: this runs every step when averaging
        return {k: v for k, v in self.state.items() if k not in params}

    def averaged_state(self, a: int) -> dict[str, torch.Tensor]:
        """Average ``a`` as a state dict (stacked: rows), parameters as views of its flat buffer:
        writing into it writes the average."""
        views = self.opt.view_of(self.opt.averages[a])
        return {**dict(zip(self._param_names(), views, strict=True)), **self.buffer_averages[a]}

    def _average_buffers(self, rates: torch.Tensor) -> None:
        """Each average's BatchNorm statistics move towards the live ones at its ``rates`` (K,)."""
        live = self._buffers()
        for averages, rate in zip(self.buffer_averages, rates, strict=True):
            for key, avg in averages.items():
                if avg.is_floating_point():
                    avg.lerp_(live[key], rate if self.plain else rate.view(-1, *[1] * (avg.dim() - 1)))
                else:  # num_batches_tracked
                    avg.copy_(live[key])

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
        average = None
        if self.judged_average:
            average = {k: cpu(v if self.plain else v[row]) for k, v in self.averaged_state(0).items()}
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
            average=average,
        )

    def restore(self, snaps: Sequence[Snapshot]) -> None:
        """Momentum, each row's lr position and the loss scale of ``snaps`` (weights: loaded into the modules)."""
        for row, snap in enumerate(snaps):
            for i, n in enumerate(self._param_names()):
                self.opt.momentum_of(i, row).copy_(snap.momentum[n])
            self.steps[row] = snap.steps
            if self.judged_average:
                if snap.average is None:
                    raise ValueError("a checkpoint without the averaged weights cannot resume a recipe with ema")
                for key, avg in self.averaged_state(0).items():
                    (avg if self.plain else avg[row]).copy_(snap.average[key])
        self.step_t.copy_(torch.tensor(self.steps))
        if self.scale is not None and snaps[0].loss_scale is not None:
            self.scale.scale.fill_(snaps[0].loss_scale[0])
            self.scale.growth.fill_(int(snaps[0].loss_scale[1]))

    def step(self, losses: torch.Tensor) -> None:
        """One SGD step of every model, each at its lr of its own step (read on the device: graph-ready)."""
        total = losses.sum()  # model k's gradients: its own loss's
        lr = self.lrs.gather(1, self.step_t.view(-1, 1)).view(-1)
        rates = self.opt.average_rates(self.step_t) if self.opt.averages else None
        if self.scale is None:
            self.opt.step(torch.autograd.grad(total, self.opt.params), lr, rates=rates)
        else:
            grads = torch.autograd.grad(total * self.scale.scale, self.opt.params)
            self.opt.step(grads, lr, self.scale.unscale(grads), rates)
        if rates is not None:
            self._average_buffers(rates)
        self.step_t.add_(1)

    def stepped(self, n: int) -> None:
        """The host's count of ``n`` steps taken by every row."""
        self.steps = [s + n for s in self.steps]

    def evaluate(self, val: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> list[tuple[float, float]]:
        """(accuracy, loss) of every row's judged weights: its average when the recipe has one."""
        if not self.judged_average:
            return evaluate_all(self.forward, self.state, val, batch_size, self.per_model.tta)
        return self.evaluate_average(0, val, batch_size)

    def evaluate_average(
        self, a: int, val: tuple[torch.Tensor, torch.Tensor], batch_size: int
    ) -> list[tuple[float, float]]:
        """(accuracy, loss) of every row's average ``a``."""
        state = self.averaged_state(a)
        if not self.plain:
            return evaluate_all(self.forward, state, val, batch_size, self.per_model.tta)
        if self.shadow is None:
            self.shadow = copy.deepcopy(unwrapped(self.template))
        self.shadow.load_state_dict(state)
        return evaluate_all(plain_forward(self.shadow), {}, val, batch_size, self.per_model.tta)

    def averaged_figures(self, val: tuple[torch.Tensor, torch.Tensor], batch_size: int) -> list[dict[str, float]]:
        """Each row's validation accuracy under every measured average (``halflives``), by name."""
        first = 1 if self.judged_average else 0
        figures: list[dict[str, float]] = [{} for _ in self.alive]
        for i, h in enumerate(self.halflives):
            for row, (acc, _) in enumerate(self.evaluate_average(first + i, val, batch_size)):
                figures[row][f"ema{h:g}"] = acc
        return figures

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
                members[m].module = self._final(row)
        return [row for row, m in enumerate(self.alive) if members[m].status != "training"]

    def _final(self, row: int) -> nn.Module:
        """Row ``row``'s judged weights as a module in eval mode: the average the recipe
        evaluated, when it has one (what it reported is what it saves)."""
        if not self.plain:
            return unstack(self.averaged_state(0) if self.judged_average else self.state, row, self.template)
        if self.judged_average:
            with torch.no_grad():
                unwrapped(self.template).load_state_dict(self.averaged_state(0))
        return self.template.train(False)

    @torch.no_grad()
    def put(self, row: int, member: int, module: nn.Module, cfg: TrainConfig) -> None:
        """Member ``member`` (a fresh ``module`` with ``cfg``) trains in row ``row`` from its first
        step: its weights, settings and lr table written in place, momentum zeroed."""
        assert not self.plain, "a population of one is not refilled"
        for key, value in unwrapped(module).state_dict().items():
            self.state[key][row].copy_(value)
        self.opt.put(row, cfg, self._decays(cfg))
        for averages in self.buffer_averages:
            for key, avg in averages.items():
                avg[row].copy_(self.state[key][row])
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
        self.buffer_averages = [{k: v[index].contiguous() for k, v in a.items()} for a in self.buffer_averages]
        self.lrs = self.lrs[index]
        self.step_t = self.step_t[index]
        self.per_model.keep(index)
        self.alive = [self.alive[r] for r in keep]
        self.cfgs = [self.cfgs[r] for r in keep]
        self.steps = [self.steps[r] for r in keep]
        self.version += 1
