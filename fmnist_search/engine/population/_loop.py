"""The loop: a population trains epoch by epoch until every member has left."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from ...core.config import TrainConfig
from ..batches import autocast, steps_per_epoch
from ..batchnorm import fit_momentum
from ..devices import synchronize
from ..distill import Teacher
from ._batches import Batch, GraphedStep, SharedBatches, order_seed
from ._forwards import unwrapped
from ._members import EpochHook, EpochMetrics, Member, PopulationStats, Snapshot, SnapshotHook
from ._stack import Stack

# Rows per population when the user gives none (--population): where it pays, as measured
# (docs/results.md: LeNets on an H200; on 2 CPU cores the main job in refilled populations of 4).
DEFAULT_POPULATION = {"cuda": {"lenet": 32, "airbench": 32}, "cpu": {"lenet": 4}}
# A population's first K trials are sampled before any result is told (refills come after): at
# most this share of a run's trials, so the sampler learns from results for the rest.
BLIND_SHARE = 1 / 3


def default_population(model: str, device: torch.device, trials: int | None = None) -> int:
    """The rows of a population of ``model`` on ``device``, for a run of ``trials`` (None: any):
    the measured size, at most a third of the trials."""
    measured = DEFAULT_POPULATION.get(device.type, {}).get(model, 1)
    return measured if trials is None else max(1, min(measured, int(trials * BLIND_SHARE)))


def shared_key(cfg: TrainConfig) -> tuple[Any, ...]:
    """Configs with the same key can train in one population: they take the same images at
    each step (augmentation is each member's own: ``SharedBatches``' views)."""
    return (cfg.batch_size, cfg.teacher, cfg.precision, order_seed(cfg), cfg.eval_batch_size, cfg.ema > 0)


# (members that left after this epoch, free rows) -> up to that many new members, each a fresh
# module and its Member (a recipe with the population's shared_key), to train from their epoch 1
Refill = Callable[[list[int], int], list[tuple[nn.Module, Member]]]


def fit_population(
    modules: Sequence[nn.Module],
    members: list[Member],
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
    refill: Refill | None = None,
    halflives: Sequence[float] = (),
) -> PopulationStats:
    """Train ``modules[k]`` with ``members[k].cfg`` for every k at once; each leaves when its
    epochs are done, when it diverges, or when ``on_epoch_end`` names it. ``members`` carry
    the results, also when an exception (an interrupt) ends the population early, and
    ``stats`` (returned) the population's throughput and occupancy so far, epoch by epoch.

    ``modules`` are freshly built models of one architecture on the data's device (each
    seeded by its caller); the configs must share ``shared_key``. One module trains as itself
    (in place; it may be a ``torch.compile`` wrapper): that is ``train.fit``. fp16 (a shared
    loss scale) only for one. ``lookup=False`` runs the teacher on every batch (benchmarks).

    ``refill`` (K > 1): after each epoch it hears which members left and may return new ones
    for the freed rows (appended to ``members``); each trains from its own epoch 1, on the
    population's batches from there, beside members at later epochs. Rows it leaves free are
    dropped. The population ends when no member is left.

    Every ``snapshot_every`` epochs of the population (0: never) ``on_snapshot`` gets each
    member still training as a ``Snapshot``; ``resume`` (one per member, all taken at the same
    point of one run) continues from there: the same weights, momentum, lr position, data order,
    augmentation and history, so a resumed run ends as the uninterrupted one would (tested bit
    for bit in float64).

    ``halflives`` (epochs): averages of the weights measured beside the judged figure, each
    epoch's validation accuracy of each in ``EpochMetrics.figures`` (benchmarks/fidelity.py).

    ``graphs`` (CUDA, fp32 or bf16): each full-batch step is captured once per shape as a CUDA
    graph and replayed (``GraphedStep``); the eager step is the reference and the CPU's.
    """
    cfgs = [mb.cfg for mb in members]
    if len({shared_key(c) for c in cfgs}) != 1:
        raise ValueError("a population shares batch size, teacher, precision and data order")
    base = cfgs[0]
    if base.precision == "fp16" and len(cfgs) > 1:
        raise ValueError("population training runs in fp32 or bf16 (fp16 needs a loss scale per model)")
    if any(c.distill > 0 for c in cfgs) and teacher is None:
        raise ValueError(f"distill={max(c.distill for c in cfgs)} needs a teacher network")
    device = train[0].device
    if resume is not None:
        _check_resume(resume, len(members))
        for module, snap in zip(modules, resume, strict=True):
            unwrapped(module).load_state_dict(snap.state_dict)
    for module in modules:  # running statistics that fit the data after one epoch, however short
        fit_momentum(module, steps_per_epoch(len(train[0]), base.batch_size))
    stack_ = Stack(modules, cfgs, len(train[0]), device, halflives)
    batches = SharedBatches(train, cfgs, teacher if any(c.distill > 0 for c in cfgs) else None, lookup)
    stats = stats if stats is not None else PopulationStats()
    stats.kind, stats.capacity = stack_.kind, len(cfgs)
    at_round = 0  # the population's epochs: one data order each, whatever its members' own epochs
    if resume is not None:
        stack_.restore(resume)
        batches.restore(resume, cfgs)
        for member, snap in zip(members, resume, strict=True):
            member.result.history = list(snap.history)
        at_round = resume[0].at_round
    graphed = GraphedStep(batches) if graphs and device.type == "cuda" and base.precision != "fp16" else None
    sums_of: dict[Any, torch.Tensor] = {}  # static per shape: a captured step adds into it
    while stack_.alive:
        at_round += 1
        k = len(stack_.alive)
        shape = (k, stack_.version, batches.version)
        sums_t = sums_of.setdefault(shape, torch.zeros(2, k, device=device))  # each model's loss and correct, summed
        sums_t.zero_()
        batches.shuffle()
        synchronize(device)
        t0 = time.perf_counter()

        def step(batch: Callable[[], Batch], sums_t: torch.Tensor = sums_t) -> None:
            """One training step: batch, forward, loss, backward, update; device work only (capturable)."""
            xb, yb, soft = batch()
            with autocast(device, base.precision, cache=graphed is None):
                out = stack_.forward(stack_.state, xb, True)  # (K, B, classes)
                losses = stack_.losses(out, yb, soft())  # (K,)
            stack_.step(losses)
            sums_t[0].add_(losses.detach().float() * len(yb))
            sums_t[1].add_((out.argmax(-1) == yb).sum(1))

        for _ in range(batches.full):
            if graphed is None:
                step(batches.next_full)
            else:
                graphed.run(shape, lambda: step(batches.next_full))
        if batches.rest:  # the shorter last batch: eager, as its shape differs
            step(batches.last)
        n_steps = batches.full + (1 if batches.rest else 0)
        stack_.stepped(n_steps)
        seen = batches.full * base.batch_size + batches.rest
        synchronize(device)
        elapsed = time.perf_counter() - t0
        stats.samples += seen * k
        stats.train_time_s += elapsed
        stats.steps += n_steps
        stats.row_steps += n_steps * k
        sums = sums_t.tolist()  # the epoch's one sync
        # Evaluation runs in fp32 whatever the training precision: it costs little, and the
        # stored accuracies are then exactly what `fmnist-search evaluate` (fp32) reproduces.
        accs = stack_.evaluate(val, base.eval_batch_size) if val is not None else None
        figures = stack_.averaged_figures(val, base.eval_batch_size) if val is not None and halflives else None
        metrics = _epoch_metrics(members, stack_.alive, sums, accs, seen, elapsed, figures)
        stop = set(on_epoch_end(at_round, metrics)) if on_epoch_end is not None else set()
        freed = stack_.retire(members, stop)
        if freed and refill is not None:
            joined = refill([stack_.alive[row] for row in freed], 0 if stack_.plain else len(freed))
            for row, (module, member) in zip(freed, joined, strict=False):
                _check_joins(member.cfg, base, batches)
                members.append(member)
                stack_.put(row, len(members) - 1, module, member.cfg)
            stats.refills += len(joined)
            freed = freed[len(joined) :]
        if freed:
            stack_.drop(freed)
        if stack_.alive:  # rows that changed hands may bring another augmentation
            batches.assign(stack_.cfgs)
        if on_snapshot is not None and snapshot_every > 0 and at_round % snapshot_every == 0:
            trained = [(row, m) for row, m in enumerate(stack_.alive) if members[m].result.history]  # not new ones
            if trained:
                on_snapshot(at_round, {m: stack_.snapshot(row, members[m], at_round, batches) for row, m in trained})
    return stats


def _check_joins(cfg: TrainConfig, base: TrainConfig, batches: SharedBatches) -> None:
    if shared_key(cfg) != shared_key(base):
        raise ValueError("a member joining a population shares its batch size, teacher, precision and data order")
    if cfg.distill > 0 and batches.teacher is None:
        raise ValueError("a distilled member joins only a population that started with its teacher")


def _check_resume(resume: Sequence[Snapshot], k: int) -> None:
    points = {s.point for s in resume}
    if len(resume) != k or len(points) != 1:
        raise ValueError("members resumed together must have stopped at the same point of one run")


def _epoch_metrics(
    members: Sequence[Member],
    alive: list[int],
    sums: list[list[float]],
    accs: list[tuple[float, float]] | None,
    seen: int,
    elapsed: float,
    figures: list[dict[str, float]] | None = None,
) -> dict[int, EpochMetrics]:
    """Each training member's epoch (its own count), appended to its history; members whose
    loss is not finite diverge."""
    losses, corrects = sums
    metrics: dict[int, EpochMetrics] = {}
    for row, m in enumerate(alive):
        epoch = len(members[m].result.history) + 1
        train_loss = losses[row] / seen
        if not math.isfinite(train_loss):
            members[m].status = "diverged"
            members[m].error = f"training loss became {train_loss} in epoch {epoch} (lr={members[m].cfg.lr:.4g})"
            continue
        val_acc, val_loss = accs[row] if accs is not None else (math.nan, math.nan)
        metrics[m] = EpochMetrics(
            epoch, train_loss, corrects[row] / seen, val_acc, val_loss, elapsed, seen, figures[row] if figures else {}
        )
        members[m].result.history.append(metrics[m])
    return metrics
