"""What a network costs, measured apart from any trial: its training throughput alone and its
inference latency on this device. The objectives of a comparison study (search/trials/objectives.py)
read them before a trial trains, so they are known from its first epoch on, whatever the
trial shares a population with (a member's own share of a fused step says nothing about the
network).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .devices import synchronize
from .train import FitResult, Teacher, TrainConfig, build_model, fit

PROBE_STEPS = 8  # training steps per timed pass (after as many untimed ones): ~0.1 s for LeNet on 2 CPU cores
PROBE_PASSES = 3  # timed passes; the fastest counts (other work on the machine only ever slows one down)
LATENCY_REPEATS = 30  # forward passes timed (after 5 untimed ones), median taken


def training_throughput(
    name: str,
    cfg: TrainConfig,
    train: tuple[torch.Tensor, torch.Tensor],
    teacher: nn.Module | Teacher | None = None,
    steps: int = PROBE_STEPS,
    passes: int = PROBE_PASSES,
) -> float:
    """Training samples/s of one ``name`` network alone with ``cfg``'s step (its batch size,
    augmentation, distillation term, precision) on the data's device: ``fit`` for epochs of
    ``steps`` batches of the first training images, the first untimed, then ``passes`` timed;
    the fastest pass counts (``fastest_pass``). A constant lr: the schedule changes the
    numbers, not the work. The figure is kept for the study's life (search/trials/context.py), so a burst
    of other work on the machine during one pass must not become it (seen: a LeNet pass 27x
    slower beside another 2-thread job on 2 cores); work running through all passes still does."""
    n = min(len(train[0]), cfg.batch_size * steps)
    probe = dataclasses.replace(cfg, epochs=1 + passes, schedule="constant", warmup_frac=0.0, seed=0, data_seed=None)
    built = build_model(name, 0, train[0].device)
    return fastest_pass(fit(built.runnable, (train[0][:n], train[1][:n]), None, probe, teacher=teacher))


def fastest_pass(result: FitResult) -> float:
    """Samples/s of the fastest epoch after the first (which pays one-time costs)."""
    return max(m.samples / m.train_time_s for m in result.history[1:] or result.history)


@dataclasses.dataclass
class Load:
    others: float = 0.0  # the share of the machine's CPU other processes used (0..1)


@contextmanager
def machine_load(stat: Path = Path("/proc/stat")) -> Iterator[Load]:
    """How busy other processes kept this machine's CPUs during the block: (all CPUs' busy time
    - this process's CPU time) / (wall time x CPUs), from the kernel's counters. 0 where there
    are none to read (not Linux). Timed figures taken beside such work are slower than the network."""
    load = Load()
    start = _busy_s(stat)
    ours, wall = time.process_time(), time.perf_counter()
    yield load
    end = _busy_s(stat)
    if start is None or end is None:
        return
    elapsed = time.perf_counter() - wall
    if elapsed > 0:
        others = (end - start) - (time.process_time() - ours)
        load.others = min(max(others / (elapsed * (os.cpu_count() or 1)), 0.0), 1.0)


def _busy_s(stat: Path) -> float | None:
    """Seconds all CPUs spent busy since boot (``/proc/stat``'s first line: all but idle and iowait)."""
    try:
        fields = [int(v) for v in stat.read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal (guest is inside user)
    return busy / os.sysconf("SC_CLK_TCK")


@torch.inference_mode()
def latency_ms(name: str, device: torch.device, repeats: int = LATENCY_REPEATS) -> float:
    """Milliseconds to classify one image (batch 1, fp32, eval mode) on ``device``: the median of
    ``repeats`` forward passes after 5 untimed ones."""
    model = build_model(name, 0, device).runnable.eval()
    x = torch.zeros(1, 1, 28, 28, device=device).contiguous(memory_format=torch.channels_last)
    times = []
    for i in range(5 + repeats):
        synchronize(device)
        t0 = time.perf_counter()
        model(x)
        synchronize(device)
        if i >= 5:
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)
