"""The batches a population shares, and its training step as a CUDA graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...core.config import TrainConfig
from ..batches import augmented, epoch_stop, soft_targets_by_index
from ..distill import as_teacher, soft_targets
from ._members import Snapshot


def order_seed(cfg: TrainConfig) -> int:
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


class SharedBatches:
    """The population's shared batches: one seeded order, augmentation, and the teacher's soft targets.

    Graph-ready: an epoch's order is written into a static index table on the device (row s:
    step s's images) and each full batch is gathered from the row at a device position that
    the step itself advances, so a captured step (``GraphedStep``) reads the next batch on every
    replay. The last, shorter batch of an epoch (if any) is gathered from its own static slice."""

    def __init__(self, train: tuple[torch.Tensor, torch.Tensor], cfg: TrainConfig, teacher: Any, lookup: bool) -> None:
        self.x, self.y, self.cfg = train[0], train[1], cfg
        device = self.x.device
        self.order = torch.Generator(device=device).manual_seed(order_seed(cfg))
        self.teacher = as_teacher(teacher)
        # soft targets looked up by index where a batch is its images, some mirrored (distill.Teacher)
        lookup = lookup and self.teacher is not None and soft_targets_by_index(cfg)
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


class GraphedStep:
    """The training step as a CUDA graph: the first ``WARMUP`` steps of a population size run
    eagerly on a side stream (real steps, as capture asks), the next is captured and from then
    on each step is one replay: forward, loss, backward, the SGD update, the lr read at the
    device step counter, the batch gathered from the device index table and augmented with the
    population's generator (registered with the graph, so each replay draws anew). A member
    leaving changes the shapes: the next size is captured anew."""

    WARMUP = 3

    def __init__(self, batches: SharedBatches) -> None:
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
