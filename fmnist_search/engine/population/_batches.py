"""The batches a population shares, and its training step as a CUDA graph."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from ...core.config import TrainConfig
from ..batches import augmented, epoch_stop, soft_targets_by_index
from ..distill import as_teacher, soft_targets
from ._members import Snapshot


def order_seed(cfg: TrainConfig) -> int:
    return cfg.seed if cfg.data_seed is None else cfg.data_seed


def view_key(cfg: TrainConfig) -> tuple[int, bool, float]:
    """A member's augmentation: members with the same key see the same view of each batch."""
    return (cfg.crop, cfg.flip, cfg.erasing)


def _view_seed(seed: int, key: tuple[int, bool, float]) -> int:
    """A view's generator seed: its own stream, the same in every run with that data order."""
    return (seed * 1_000_003 + zlib.crc32(repr(key).encode())) % 2**63


class _View:
    """One augmentation of the population's batches, with its own generator."""

    def __init__(self, cfg: TrainConfig, seed: int, device: torch.device, lookup: bool) -> None:
        self.cfg = cfg
        self.gen = torch.Generator(device=device).manual_seed(_view_seed(seed, view_key(cfg)))
        self.lookup = lookup and soft_targets_by_index(cfg)


class SharedBatches:
    """The population's batches: one seeded order, each member's augmentation, the teacher's soft targets.

    Members share the images of each step (one permutation per epoch); each augmentation among
    them (crop, flip, erasing: a *view*, ``view_key``) draws from its own generator, so a
    member sees the same batches as it would alone, whoever else trains beside it. With one
    view a batch is (B, ...) and the forward shares it; with several it is (K, B, ...), row k
    the view of member k.

    Graph-ready: an epoch's order is written into a static index table on the device (row s:
    step s's images) and each full batch is gathered from the row at a device position that
    the step itself advances, so a captured step (``GraphedStep``) reads the next batch on every
    replay. The last, shorter batch of an epoch (if any) is gathered from its own static slice."""

    def __init__(
        self, train: tuple[torch.Tensor, torch.Tensor], cfgs: list[TrainConfig], teacher: Any, lookup: bool
    ) -> None:
        self.x, self.y, self.cfg = train[0], train[1], cfgs[0]
        device = self.x.device
        self.seed = order_seed(self.cfg)
        self.order = torch.Generator(device=device).manual_seed(self.seed)
        self.teacher = as_teacher(teacher)
        # soft targets looked up by index where a view's batch is its images, some mirrored (distill.Teacher)
        self.lookup = lookup and self.teacher is not None
        tables = self.lookup and any(soft_targets_by_index(c) for c in cfgs)
        self.tables = (
            self.teacher.tables(self.x, self.cfg.precision, self.cfg.batch_size) if self.teacher and tables else None
        )
        # epoch_batches' batches: full ones, then the rest (never a single image: BatchNorm)
        self.full, self.rest = divmod(epoch_stop(len(self.x), self.cfg.batch_size), self.cfg.batch_size)
        self.table = torch.empty((self.full, self.cfg.batch_size), dtype=torch.long, device=device)
        self.tail = torch.empty(self.rest, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # the table's next row
        self.views: dict[tuple[int, bool, float], _View] = {}
        self.view_of = torch.zeros(0, dtype=torch.long, device=device)  # each row's view
        self.version = 0  # bumped when the views change (a captured step must be captured anew)
        self.assign(cfgs)

    def assign(self, cfgs: list[TrainConfig]) -> None:
        """The rows' recipes (row k: ``cfgs[k]``): views for new augmentations, unused ones dropped."""
        keys = [view_key(c) for c in cfgs]
        wanted = dict.fromkeys(keys)
        if list(wanted) != list(self.views):
            views = {}
            for key, cfg in zip(keys, cfgs, strict=True):
                if key not in views:
                    views[key] = self.views.get(key) or _View(cfg, self.seed, self.x.device, self.tables is not None)
            self.views = views
            self.version += 1
        index = list(self.views)
        rows = torch.tensor([index.index(k) for k in keys], dtype=torch.long, device=self.x.device)
        if len(rows) == len(self.view_of):
            self.view_of.copy_(rows)  # in place: a captured step reads it
        else:
            self.view_of = rows

    def states(self) -> dict[tuple[int, bool, float], torch.Tensor]:
        return {key: view.gen.get_state() for key, view in self.views.items()}

    def restore(self, snaps: Sequence[Snapshot], cfgs: Sequence[TrainConfig]) -> None:
        """Continue the data order and each view's augmentation where ``snaps`` left them; on
        another kind of device (whose generators cannot take those states) new ones seeded by
        the seed and the epoch."""
        snap = snaps[0]
        same = snap.device_type == self.x.device.type
        if same:
            self.order.set_state(snap.order)
        else:
            self.order.manual_seed(self.seed * 1_000_003 + snap.at_round)
        for s, cfg in zip(snaps, cfgs, strict=True):
            view = self.views[view_key(cfg)]
            if same and s.augment is not None:
                view.gen.set_state(s.augment)
            elif not same:
                view.gen.manual_seed(_view_seed(self.seed * 1_000_003 + s.at_round, view_key(cfg)))
        self.reseeded = not same

    def augment_state(self, cfg: TrainConfig) -> torch.Tensor:
        return self.views[view_key(cfg)].gen.get_state()

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
        """(images, labels, soft targets of the images): the teacher runs inside autocast."""
        raw = self.x.index_select(0, idx)
        seen = [(v, *augmented(raw, v.cfg, v.gen, v.lookup and self.tables is not None)) for v in self.views.values()]
        y = self.y.index_select(0, idx)
        if len(seen) == 1:
            view, xb, mirrored = seen[0]
            return xb, y, self._soft(view, idx, xb, mirrored)
        xs = torch.stack([xb for _, xb, _ in seen]).index_select(0, self.view_of)  # (K, B, ...)
        if self.teacher is None:
            return xs, y, lambda: None
        softs = [self._soft(view, idx, xb, mirrored) for view, xb, mirrored in seen]
        return xs, y, lambda: torch.stack([s() for s in softs]).index_select(0, self.view_of)  # type: ignore[misc]

    def _soft(
        self, view: _View, idx: torch.Tensor, xb: torch.Tensor, mirrored: torch.Tensor | None
    ) -> Callable[[], torch.Tensor | None]:
        teacher, tables = self.teacher, self.tables
        if teacher is None:
            return lambda: None
        if tables is None or not view.lookup:
            return lambda: teacher(xb)
        return lambda: soft_targets(tables, idx, mirrored)


# (images: (B, ...) shared or (K, B, ...) one view per row, labels (B,), soft targets: () -> (B, C) or (K, B, C))
Batch = tuple[torch.Tensor, torch.Tensor, Callable[[], torch.Tensor | None]]


class GraphedStep:
    """The training step as a CUDA graph: the first ``WARMUP`` steps of a shape run eagerly on a
    side stream (real steps, as capture asks), the next is captured and from then on each step
    is one replay: forward, loss, backward, the SGD update, each row's lr read at its device step
    counter, the batch gathered from the device index table and augmented with the views'
    generators (registered with the graph, so each replay draws anew). A member that joins in
    a freed row keeps the shape (its weights, settings and counters are written in place); a
    member leaving unfilled, or a new view, changes it: the next shape is captured anew."""

    WARMUP = 3

    def __init__(self, batches: SharedBatches) -> None:
        self.batches = batches
        self.graphs: dict[Hashable, Any] = {}
        self.seen: dict[Hashable, int] = {}
        self.side = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def run(self, shape: Hashable, step: Callable[[], None]) -> None:
        graph = self.graphs.get(shape)
        if graph is not None:
            graph.replay()
            return
        self.seen[shape] = self.seen.get(shape, 0) + 1
        if self.seen[shape] <= self.WARMUP:
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                step()
            torch.cuda.current_stream().wait_stream(self.side)
            return
        graph = torch.cuda.CUDAGraph()
        for gen in (self.batches.order, *(v.gen for v in self.batches.views.values())):
            graph.register_generator_state(gen)
        with torch.cuda.graph(graph):  # records the step, runs nothing
            step()
        self.graphs = {shape: graph}  # earlier shapes do not come back: their tensors were replaced
        graph.replay()  # this step, for real
