"""The training loop: one model, or K models with their own hyperparameters trained as one on the same batches.

Every training run goes through ``fit_population``: a single trial, a teacher and
``fmnist-search train`` are a population of one (``train.fit``), which trains its own module
in place ("plain"), with the same batches, loss, distillation term, SGD update, lr table and
evaluation as K stacked models; only the forward differs.

Why stack K:

One LeNet step at batch 256 is ~90 small kernels; on a GPU it is bound by their launches,
not by arithmetic. Stacking K models (HFTA, Wang et al., MLSys 2021) makes each launch do
K times the work: convolutions become one grouped convolution (a dense one for the first
layer, whose input is shared), linear layers batched matmuls, BatchNorm one layer over K x C
channels (per-model statistics by construction). The loss is the sum of the K models' mean
losses, so model k's gradients are exactly those of training it alone; SGD runs on the
stacked tensors with per-model lr (a per-model schedule table on the device), momentum,
Nesterov and weight decay. Model k of a population equals model k trained alone by ``fit``
with the same seed and data order (tested in float64).

The state is a dict of tensors with a leading model dimension, keyed like the model's own
``state_dict`` (``torch.func.stack_module_state``'s layout), so dropping models is indexing
and a model's weights come back out as a plain module. Two forwards over that state:
``fused`` (explicit grouped ops, for ``nn.Sequential`` models of the layer kinds below) and
``vmap`` (``torch.func.functional_call`` under ``vmap``, any model: the ResNets). Measured
on the 2-core CPU, K fused LeNets train 1.74x (K=2), 1.53x (K=4), 1.16x (K=8) and 0.9x
(K=16-32) the samples/s of one after another, fused airbenches 0.92x (K=2) to 0.58x (K=8)
(benchmarks/results/population-cpu-lenet.json, -airbench.json); on an H200, 32 LeNets 20x
and 128 51x (benchmarks/results/gpu-h200.md).

What a population shares (the batch, so batch size and augmentation; precision; the teacher
and the data order) is the caller's to group by: ``shared_key``. Per model: lr, momentum,
Nesterov, weight decay, label smoothing, schedule, warm-up, epochs, flip TTA, distillation
weight and temperature, and the weights' seed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.config import TrainConfig
from .batches import augmented, autocast, epoch_stop, looks_up, steps_per_epoch
from .devices import synchronize
from .distill import Teacher, as_teacher, distillation_loss, soft_targets, widened
from .schedules import lr_factors

# Trials per population when the user gives none (--population): where it pays, measured.
# CPU: 1 (benchmarks/results/population-cpu-*.json). H200 (benchmarks/results/gpu-h200.md):
# 32 LeNets train 20x faster than one after another, 128 51x; 32 keeps a 30-trial study in one
# population while leaving the sampler rounds of feedback on longer ones. airbench: 7x at 32.
DEFAULT_POPULATION = {"cuda": {"lenet": 32, "airbench": 32}}


def default_population(model: str, device: torch.device) -> int:
    return DEFAULT_POPULATION.get(device.type, {}).get(model, 1)


def shared_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """Configs with the same key can train in one population: they make the same batches."""
    return (
        cfg.batch_size,
        cfg.crop,
        cfg.flip,
        cfg.erasing,
        cfg.teacher,
        cfg.precision,
        _order_seed(cfg),
        cfg.eval_batch_size,
    )


def _order_seed(cfg: TrainConfig) -> int:
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


# --- the stacked forward ---

Forward = Callable[[dict[str, torch.Tensor], torch.Tensor, bool], torch.Tensor]  # (state, x, training) -> (K, N, C)
_FUSABLE = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.GELU, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)


def fused_forward(template: nn.Module) -> Forward | None:
    """K copies of a ``nn.Sequential`` as grouped ops, or None when ``template`` has other layers."""
    if not isinstance(template, nn.Sequential) or not all(isinstance(m, _FUSABLE) for m in template):
        return None
    layers = list(template.named_children())

    def forward(state: dict[str, torch.Tensor], x: torch.Tensor, training: bool) -> torch.Tensor:
        k_models = next(iter(state.values())).shape[0]
        shared = True  # x is the batch every model sees, until the first convolution
        for name, m in layers:
            if isinstance(m, nn.Conv2d):
                w = state[f"{name}.weight"]
                b = state.get(f"{name}.bias")
                x = F.conv2d(
                    x,
                    # (K * out, in, kh, kw), channels_last like the single-model engine's: the
                    # activations follow the weights' layout, and NHWC pooling/ReLU are much faster on the CPU.
                    w.reshape(-1, *w.shape[2:]).to(memory_format=torch.channels_last),
                    None if b is None else b.reshape(-1),
                    m.stride,
                    m.padding,
                    m.dilation,
                    groups=1 if shared else k_models,
                )
                shared = False
            elif isinstance(m, nn.BatchNorm2d):
                # running stats are (K, C) and contiguous: their (K * C) views are updated in place.
                x = F.batch_norm(
                    x,
                    state[f"{name}.running_mean"].view(-1),
                    state[f"{name}.running_var"].view(-1),
                    state[f"{name}.weight"].reshape(-1),
                    state[f"{name}.bias"].reshape(-1),
                    training,
                    m.momentum if m.momentum is not None else 0.1,
                    m.eps,
                )
                if training:
                    state[f"{name}.num_batches_tracked"].add_(1)
            elif isinstance(m, nn.Flatten):  # (N, K * C, h, w) -> (K, N, C * h * w)
                x = (x.unsqueeze(1) if shared else x).reshape(x.shape[0], k_models, -1).transpose(0, 1)
            elif isinstance(m, nn.Linear):
                w = state[f"{name}.weight"].transpose(1, 2)  # (K, in, out)
                b = state.get(f"{name}.bias")
                x = torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
            else:  # elementwise and pooling layers act per channel: the same on K * C channels
                x = m(x)
        return x

    return forward


def vmap_forward(template: nn.Module) -> Forward:
    """Any model: ``functional_call`` under ``vmap`` (PyTorch batches convolutions into grouped ones)."""
    from torch.func import functional_call, vmap

    base = copy.deepcopy(template).to("meta")

    def one(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(base, state, (x,))
        return out

    stacked = vmap(one, in_dims=(0, None))

    def forward(state: dict[str, torch.Tensor], x: torch.Tensor, training: bool) -> torch.Tensor:
        base.train(training)
        return stacked(state, x)

    return forward


def plain_forward(module: nn.Module) -> Forward:
    """One model as a population of one: the module itself (or its ``torch.compile`` wrapper),
    with its own parameters; ``state`` is not read."""

    def forward(state: dict[str, torch.Tensor], x: torch.Tensor, training: bool) -> torch.Tensor:
        if module.training != training:  # .train() walks every submodule: only when it changes
            module.train(training)
        out: torch.Tensor = module(x)
        return out.unsqueeze(0)

    return forward


def make_forward(template: nn.Module) -> tuple[str, Forward]:
    fused = fused_forward(template)
    return ("fused", fused) if fused is not None else ("vmap", vmap_forward(template))


# --- what a training run measures ---


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float  # mean cross-entropy over the epoch's training steps
    train_accuracy: float  # fraction correct during the epoch's training steps
    val_accuracy: float
    val_loss: float
    train_time_s: float  # this epoch's training steps only (no evaluation), device-synchronised
    samples: int  # training samples seen this epoch


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)

    @property
    def train_time_s(self) -> float:
        return sum(m.train_time_s for m in self.history)

    @property
    def throughput(self) -> float:
        """Training samples per second over training steps only, from the second epoch on
        when there is one: the first pays one-time costs (cuDNN autotuning, compilation,
        allocator warm-up) that say nothing about the recipe's speed."""
        timed = self.history[1:] or self.history
        t = sum(m.train_time_s for m in timed)
        return sum(m.samples for m in timed) / t if t > 0 else 0.0


class Diverged(FloatingPointError):
    """The training loss became NaN or infinite."""


# --- the population ---


@dataclass
class Member:
    """One model of the population: its recipe, what it measured, how it ended."""

    cfg: TrainConfig
    result: FitResult = field(default_factory=FitResult)
    status: str = "training"  # training | done | stopped | diverged
    error: str = ""
    module: nn.Module | None = None  # the trained weights (eval mode), for members that are done


@dataclass
class PopulationStats:
    """The population's own throughput: every member's training samples over the epochs' time."""

    samples: int = 0
    train_time_s: float = 0.0
    kind: str = ""  # plain | fused | vmap: how the models were stacked

    @property
    def throughput(self) -> float:
        return self.samples / self.train_time_s if self.train_time_s > 0 else 0.0


EpochHook = Callable[[int, dict[int, EpochMetrics]], Iterable[int]]  # (epoch, metrics by member) -> members to stop


@dataclass
class Snapshot:
    """One member's training state at the end of an epoch: what it needs to continue exactly.

    Weights and BatchNorm statistics, SGD momentum (per parameter, so a member of a stacked
    population can continue alone and back), the lr table's position, the data-order and
    augmentation generator, the history so far, fp16's loss scale. Tensors are on the CPU;
    ``payload`` is plain tensors and values (``torch.load(weights_only=True)`` reads it).
    """

    epoch: int
    steps: int  # SGD steps taken: the lr table's position
    state_dict: dict[str, torch.Tensor]
    momentum: dict[str, torch.Tensor]
    order: torch.Tensor  # torch.Generator state
    device_type: str  # where that generator ran (a CPU state cannot drive a CUDA generator)
    history: list[EpochMetrics]
    loss_scale: list[float] | None = None  # fp16: [scale, growth tracker]

    def payload(self) -> dict[str, Any]:
        return {
            **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
            "history": [dataclasses.asdict(m) for m in self.history],
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> Snapshot:
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in payload.items() if k in names}
        values["history"] = [EpochMetrics(**m) for m in payload["history"]]
        return cls(**values)


SnapshotHook = Callable[[int, dict[int, Snapshot]], None]  # (epoch, snapshots by member)


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


def stack(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The models' state dicts stacked on a new leading dimension; parameters are leaves that need grad."""
    names = {n for n, _ in modules[0].named_parameters()}
    state = {}
    for key in modules[0].state_dict():
        t = torch.stack([m.state_dict()[key].detach() for m in modules]).contiguous()
        state[key] = t.requires_grad_() if key in names else t
    return state


def unstack(state: dict[str, torch.Tensor], row: int, like: nn.Module) -> nn.Module:
    module = copy.deepcopy(like)
    module.load_state_dict({k: v[row].detach() for k, v in state.items()})
    return module.train(False)


def fit_population(
    modules: Sequence[nn.Module],
    members: Sequence[Member],
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor] | None,
    on_epoch_end: EpochHook | None = None,
    teacher: nn.Module | Teacher | None = None,
    stats: PopulationStats | None = None,
    lookup: bool = True,
    resume: Sequence[Snapshot] | None = None,
    on_snapshot: SnapshotHook | None = None,
    snapshot_every: int = 0,
    graphs: bool = False,
) -> PopulationStats:
    """Train ``modules[k]`` with ``members[k].cfg`` for every k at once; each leaves when its
    epochs are done, when it diverges, or when ``on_epoch_end`` names it. ``members`` carry
    the results, also when an exception (an interrupt) ends the population early, and
    ``stats`` (returned) the population's throughput so far, epoch by epoch.

    ``modules`` are freshly built models of one architecture on the data's device (each
    seeded by its caller); the configs must share ``shared_key``. One module trains as itself
    (in place; it may be a ``torch.compile`` wrapper): that is ``train.fit``. fp16 (a shared
    loss scale) only for one. ``lookup=False`` runs the teacher on every batch (benchmarks).

    Every ``snapshot_every`` epochs (0: never) ``on_snapshot`` gets each member still training
    as a ``Snapshot``; ``resume`` (one per member, all taken at the same point of one run)
    continues from there: the same weights, momentum, lr position, data order and history,
    so a resumed run ends as the uninterrupted one would (tested bit for bit in float64).

    ``graphs`` (CUDA, fp32 or bf16): each full-batch step is captured once per population size
    as a CUDA graph and replayed (``_Graphed``); the eager step is the reference and the CPU's.
    """
    cfgs = [mb.cfg for mb in members]
    if len({shared_key(c) for c in cfgs}) != 1:
        raise ValueError("a population shares batch size, augmentation, teacher, precision and data order")
    base = cfgs[0]
    if base.precision == "fp16" and len(cfgs) > 1:
        raise ValueError("population training runs in fp32 or bf16 (fp16 needs a loss scale per model)")
    if any(c.distill > 0 for c in cfgs) and teacher is None:
        raise ValueError(f"distill={max(c.distill for c in cfgs)} needs a teacher network")
    device = train[0].device
    if resume is not None:
        _check_resume(resume, len(members))
        for module, snap in zip(modules, resume, strict=True):
            own(module).load_state_dict(snap.state_dict)
    stack_ = _Stack(modules, cfgs, len(train[0]), device)
    batches = _Batches(train, base, teacher if any(c.distill > 0 for c in cfgs) else None, lookup)
    stats = stats if stats is not None else PopulationStats()
    stats.kind = stack_.kind
    first = 1
    if resume is not None:
        stack_.restore(resume)
        batches.restore(resume[0], _order_seed(base))
        for member, snap in zip(members, resume, strict=True):
            member.result.history = list(snap.history)
        first = resume[0].epoch + 1
    graphed = _Graphed(batches) if graphs and device.type == "cuda" and base.precision != "fp16" else None
    sums_of: dict[int, torch.Tensor] = {}  # static per population size: a captured step adds into it
    for epoch in range(first, max(c.epochs for c in cfgs) + 1):
        k = len(stack_.alive)
        sums_t = sums_of.setdefault(k, torch.zeros(2, k, device=device))  # each model's loss and correct, summed
        sums_t.zero_()
        batches.shuffle()
        synchronize(device)
        t0 = time.perf_counter()

        def step(batch: Callable[[], Batch], sums_t: torch.Tensor = sums_t) -> None:
            """One training step: batch, forward, loss, backward, update; device work only (capturable)."""
            xb, yb, soft = batch()
            with autocast(device, base.precision, cache=graphed is None):
                out = stack_.forward(stack_.state, xb, True)  # (K, B, classes)
                losses = stack_.losses(out, yb, soft(xb))  # (K,)
            stack_.step(losses)
            sums_t[0].add_(losses.detach().float() * len(yb))
            sums_t[1].add_((out.argmax(-1) == yb).sum(1))

        for _ in range(batches.full):
            if graphed is None:
                step(batches.next_full)
            else:
                graphed.run(k, lambda: step(batches.next_full))
            stack_.steps += 1
        if batches.rest:  # the shorter last batch: eager, as its shape differs
            step(batches.last)
            stack_.steps += 1
        seen = batches.full * base.batch_size + batches.rest
        synchronize(device)
        elapsed = time.perf_counter() - t0
        stats.samples += seen * k
        stats.train_time_s += elapsed
        sums = sums_t.tolist()  # the epoch's one sync
        # Evaluation runs in fp32 whatever the training precision: it costs little, and the
        # stored accuracies are then exactly what `fmnist-search evaluate` (fp32) reproduces.
        accs = stack_.evaluate(val, base.eval_batch_size) if val is not None else None
        metrics = _epoch_metrics(members, stack_.alive, epoch, sums, accs, seen, elapsed)
        stop = set(on_epoch_end(epoch, metrics)) if on_epoch_end is not None else set()
        if not stack_.settle(members, stop, epoch):
            break
        if on_snapshot is not None and snapshot_every > 0 and epoch % snapshot_every == 0:
            on_snapshot(
                epoch, {m: stack_.snapshot(row, members[m], epoch, batches) for row, m in enumerate(stack_.alive)}
            )
    return stats


def own(module: nn.Module) -> nn.Module:
    """The module itself, under a ``torch.compile`` wrapper (which holds it as ``_orig_mod``)."""
    inner = getattr(module, "_orig_mod", module)
    return inner if isinstance(inner, nn.Module) else module


def _check_resume(resume: Sequence[Snapshot], k: int) -> None:
    points = {(s.epoch, s.steps, s.device_type, bytes(s.order.numpy())) for s in resume}
    if len(resume) != k or len(points) != 1:
        raise ValueError("members resumed together must have stopped at the same point of one run")


def _epoch_metrics(
    members: Sequence[Member],
    alive: list[int],
    epoch: int,
    sums: list[list[float]],
    accs: list[tuple[float, float]] | None,
    seen: int,
    elapsed: float,
) -> dict[int, EpochMetrics]:
    """Each training member's epoch, appended to its history; members whose loss is not finite diverge."""
    losses, corrects = sums
    metrics: dict[int, EpochMetrics] = {}
    for row, m in enumerate(alive):
        train_loss = losses[row] / seen
        if not math.isfinite(train_loss):
            members[m].status = "diverged"
            members[m].error = f"training loss became {train_loss} in epoch {epoch} (lr={members[m].cfg.lr:.4g})"
            continue
        val_acc, val_loss = accs[row] if accs is not None else (math.nan, math.nan)
        metrics[m] = EpochMetrics(epoch, train_loss, corrects[row] / seen, val_acc, val_loss, elapsed, seen)
        members[m].result.history.append(metrics[m])
    return metrics


class _Batches:
    """The population's shared batches: one seeded order, augmentation, and the teacher's soft targets.

    Graph-ready: an epoch's order is written into a static index table on the device (row s:
    step s's images) and each full batch is gathered from the row at a device position that
    the step itself advances, so a captured step (``_Graphed``) reads the next batch on every
    replay. The last, shorter batch of an epoch (if any) is gathered from its own static slice."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, teacher: Any, lookup: bool) -> None:
        self.x, self.y, self.cfg = train[0], train[1], cfg
        device = self.x.device
        self.order = torch.Generator(device=device).manual_seed(_order_seed(cfg))
        self.teacher = as_teacher(teacher)
        # soft targets looked up by index where a batch is its images, some mirrored (distill.Teacher)
        lookup = lookup and self.teacher is not None and looks_up(cfg)
        self.tables = self.teacher.tables(self.x, cfg.precision, cfg.batch_size) if self.teacher and lookup else None
        # epoch_batches' batches: full ones, then the rest (never a single image: BatchNorm)
        self.full, self.rest = divmod(epoch_stop(len(self.x), cfg.batch_size), cfg.batch_size)
        self.table = torch.empty((self.full, cfg.batch_size), dtype=torch.long, device=device)
        self.tail = torch.empty(self.rest, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # the table's next row

    def restore(self, snap: Snapshot, seed: int) -> None:
        """Continue the data order where ``snap`` left it; on another kind of device (whose
        generator cannot take that state) a new order seeded by the seed and the epoch."""
        if snap.device_type == self.x.device.type:
            self.order.set_state(snap.order)
        else:
            self.order.manual_seed(seed * 1_000_003 + snap.epoch)
        self.reseeded = snap.device_type != self.x.device.type

    def shuffle(self) -> None:
        """This epoch's order (``epoch_batches``' batches of one permutation), into the static table."""
        perm = torch.randperm(len(self.x), device=self.x.device, generator=self.order)
        cut = self.full * self.cfg.batch_size
        self.table.copy_(perm[:cut].view(self.full, self.cfg.batch_size))
        self.tail.copy_(perm[cut : cut + self.rest])
        self.pos.zero_()

    def next_full(self) -> Batch:
        """The next full batch (the table's row at the device position, which moves on)."""
        idx = self.table.index_select(0, self.pos).view(-1)
        self.pos.add_(1)
        return self._batch(idx)

    def last(self) -> Batch:
        return self._batch(self.tail)

    def _batch(self, idx: torch.Tensor) -> Batch:
        """(images, labels, soft targets of the images); the teacher runs inside autocast."""
        xb, mirrored = augmented(self.x.index_select(0, idx), self.cfg, self.order, self.tables is not None)
        return xb, self.y.index_select(0, idx), self._soft(idx, mirrored)

    def _soft(self, idx: torch.Tensor, mirrored: torch.Tensor | None) -> Callable[[torch.Tensor], torch.Tensor | None]:
        teacher, tables = self.teacher, self.tables
        if teacher is None:
            return lambda xb: None
        if tables is None:
            return teacher
        return lambda xb: soft_targets(tables, idx, mirrored)


Batch = tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor | None]]


class _Graphed:
    """The training step as a CUDA graph: the first ``WARMUP`` steps of a population size run
    eagerly on a side stream (real steps, as capture asks), the next is captured and from then
    on each step is one replay: forward, loss, backward, the SGD update, the lr read at the
    device step counter, the batch gathered from the device index table and augmented with the
    population's generator (registered with the graph, so each replay draws anew). A member
    leaving changes the shapes: the next size is captured anew."""

    WARMUP = 3

    def __init__(self, batches: _Batches) -> None:
        self.batches = batches
        self.graphs: dict[int, Any] = {}
        self.seen: dict[int, int] = {}
        self.side = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def run(self, k: int, step: Callable[[], None]) -> None:
        graph = self.graphs.get(k)
        if graph is not None:
            graph.replay()
            return
        self.seen[k] = self.seen.get(k, 0) + 1
        if self.seen[k] <= self.WARMUP:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                step()
            torch.cuda.current_stream().wait_stream(self.side)
            return
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.batches.order)
        with torch.cuda.graph(graph):  # records the step, runs nothing
            step()
        self.graphs[k] = graph
        graph.replay()  # this step, for real


class _Stack:
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
        self.opt = _SGD(params, cfgs, device, stacked=not self.plain)
        self.lrs = lr_table(cfgs, steps_per_epoch(n, cfgs[0].batch_size), device, params[0].dtype)
        self.per_model = _PerModel(cfgs, device, params[0].dtype)
        self.scale = _LossScale(device) if cfgs[0].precision == "fp16" else None
        self.alive = list(range(len(cfgs)))
        self.steps = 0  # SGD steps taken (the host's count, for snapshots)
        self.step_t = torch.zeros(1, dtype=torch.long, device=device)  # the same on the device: the lr's column

    def losses(self, out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        return self.per_model.loss(out, y, soft)

    def _param_names(self) -> list[str]:
        return [n for n, _ in own(self.template).named_parameters()] if self.plain else self.names

    def snapshot(self, row: int, member: Member, epoch: int, batches: _Batches) -> Snapshot:
        """Member ``row``'s training state now (copied to the CPU)."""

        def cpu(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)

        if self.plain:
            state = {k: cpu(v) for k, v in own(self.template).state_dict().items()}
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

    def settle(self, members: Sequence[Member], stop: set[int], epoch: int) -> bool:
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


class _PerModel:
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

    def loss(self, out: torch.Tensor, y: torch.Tensor, soft: torch.Tensor | None) -> torch.Tensor:
        """(K,) mean losses: ``F.cross_entropy`` with each model's label smoothing, mixed with
        each model's distillation term (``distill.distillation_loss``) where it has one."""
        out = widened(out)
        logp = F.log_softmax(out, dim=-1)
        nll = -logp.gather(-1, y.view(1, -1, 1).expand(len(out), -1, 1)).squeeze(-1)  # (K, B)
        # F.cross_entropy's label smoothing, in its order of operations (the same gradients to the last bit):
        # (1 - eps) * mean NLL + mean(-sum of log-probabilities) * eps / classes.
        smooth = (-logp.sum(-1)).mean(1, keepdim=True)
        ce = ((1 - self.smooth) * nll.mean(1, keepdim=True) + smooth * (self.smooth / logp.shape[-1])).view(-1)
        if soft is None:
            return ce
        w = self.distill.view(-1)
        return (1 - w) * ce + w * distillation_loss(out, soft.unsqueeze(0), self.temp)


class _LossScale:
    """fp16's dynamic loss scale, as ``torch.amp.GradScaler`` keeps it (its defaults and its
    kernels), on the device: an overflowing step is skipped without a host sync."""

    def __init__(self, device: torch.device) -> None:
        self.scale = torch.full((), 2.0**16, device=device)
        self.growth = torch.zeros((), dtype=torch.int32, device=device)
        self.found_inf = torch.zeros((), device=device)

    def unscale(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Divide ``grads`` by the scale in place; the step's skip flag (1.0: inf or NaN found), and the next scale."""
        self.found_inf.zero_()
        torch._amp_foreach_non_finite_check_and_unscale_(list(grads), self.found_inf, self.scale.reciprocal())
        torch._amp_update_scale_(self.scale, self.growth, self.found_inf, 2.0, 0.5, 2000)
        return self.found_inf


class _SGD:
    """``torch.optim.SGD``'s update for one model or K stacked ones, each with its own lr,
    momentum, Nesterov and weight decay: g += wd p; buf = m buf + g; d = g + m buf (Nesterov)
    or buf; p -= lr d.

    All parameters live in one flat buffer (each parameter's data a view of it), so the update
    is ~10 operations over that buffer whatever the number of layers: on a GPU the step is
    bound by launches, and a loop over 10 LeNet parameters cost ~120 of them
    (benchmarks/results/gpu-h200.md)."""

    def __init__(
        self, params: list[torch.Tensor], cfgs: Sequence[TrainConfig], device: torch.device, stacked: bool
    ) -> None:
        dtype = params[0].dtype
        self.stacked = stacked  # params have a leading model dimension

        def col(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, device=device, dtype=dtype).view(-1, 1)

        # per model, (K, 1); spread over the flat buffer's elements by _adopt
        self.momentum = col([c.momentum for c in cfgs])
        self.wd = col([c.weight_decay for c in cfgs])
        self.nesterov = col([float(c.nesterov and c.momentum > 0) for c in cfgs])  # torch: none without momentum
        self.decaying = any(c.weight_decay > 0 for c in cfgs)
        self._adopt(params)
        self.buf = torch.zeros_like(self.flat)

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
        blocks, at = [], 0
        for p in self.params:  # the momentum buffer, block by block: (K, n) -> kept rows
            blocks.append(self.buf[at : at + p.numel()].view(len(p), -1)[rows].reshape(-1))
            at += p.numel()
        self.momentum, self.wd, self.nesterov = (t[rows] for t in (self.momentum, self.wd, self.nesterov))
        self._adopt(params)
        self.buf = torch.cat(blocks)

    def momentum_of(self, i: int, row: int) -> torch.Tensor:
        """Parameter ``i``'s momentum for model ``row``: a view of the flat buffer, in the parameter's shape."""
        p = self.params[i]
        at = sum(q.numel() for q in self.params[:i])
        if self.stacked:
            return self.buf[at : at + p.numel()].view(len(p), -1)[row].view(p.shape[1:])
        return self.buf.as_strided(p.shape, p.stride(), at)

    @staticmethod
    def _in_memory_order(t: torch.Tensor, order: list[int]) -> torch.Tensor:
        return t.permute(order).reshape(-1)

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor], lr: torch.Tensor, skip: torch.Tensor | None = None) -> None:
        """One update with each model's ``lr`` (K,); with ``skip`` (1.0: fp16 overflow) none at all."""
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


def _memory_order(t: torch.Tensor) -> list[int]:
    """``t``'s dims from the largest stride to the smallest: the order its elements lie in memory."""
    strides = t.stride()
    return sorted(range(t.dim()), key=lambda d: -strides[d])


@torch.inference_mode()
def log_probs(
    forward: Forward, state: dict[str, torch.Tensor], xb: torch.Tensor, tta: torch.Tensor, flip: bool
) -> torch.Tensor:
    """(K, B, classes) log-probabilities in fp32; models with ``tta`` average each image's and
    its mirror's probabilities, in log space (logsumexp - log 2), so a confident wrong
    prediction gives a large finite loss rather than log(0). ``flip``: whether any model has
    ``tta`` (the caller's, once per evaluation: reading it from the device is a sync)."""
    logp = F.log_softmax(widened(forward(state, xb, False)), dim=-1)
    if flip:
        mirrored = F.log_softmax(widened(forward(state, xb.flip(-1), False)), dim=-1)
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
