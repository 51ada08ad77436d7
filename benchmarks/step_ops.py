"""Operations per training step: what bounds a small model's step on a GPU (launches, host time).

A LeNet step does ~0.2 ms of GPU work and costs 2.5-5 ms on an H200 (gpu-h200.md): the cost
is the host dispatching operations and launching kernels. This counts them on any machine,
exactly (no timing): every ATen call the step makes, and those that launch a kernel (not
views). Per step = (count over 2n images - count over n) / (n / batch), so set-up is left out.
The population's count should not grow with K; the single trial's is for comparison (on a
GPU its SGD is one fused kernel per step; on the CPU, a loop over parameters).

    python benchmarks/step_ops.py --sizes 1,8,32 --json benchmarks/results/step-ops.json
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import sys
from pathlib import Path

import torch
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs
from torch.utils._python_dispatch import TorchDispatchMode

from fmnist_search.core.presets import base_recipe
from fmnist_search.engine.population import Member, fit_population
from fmnist_search.engine.train import TrainConfig, build_model, fit

BATCH = 128  # the base recipe's
_VIEWS = {"aten.detach.default", "aten.alias.default", "aten._unsafe_view.default"}


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _counts(train_fn, n: int) -> tuple[float, float]:
    """(operations, kernel operations) per step of ``train_fn(images)``, set-up excluded."""
    per_size = []
    for size in (n, 2 * n):
        with _Count() as c:
            train_fn(size)
        per_size.append(c.calls)
    extra = per_size[1] - per_size[0]
    steps = n // BATCH
    kernels = sum(v for name, v in extra.items() if name not in _VIEWS and not _is_view(name))
    return sum(extra.values()) / steps, kernels / steps


def _is_view(name: str) -> bool:
    op = name.split(".")[1] if name.startswith("aten.") else ""
    packet = getattr(torch.ops.aten, op, None)
    overload = getattr(packet, name.split(".")[-1], None) if packet is not None else None
    return bool(getattr(overload, "is_view", False))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1,8,32", help="population sizes K")
    p.add_argument("--images", type=int, default=1024, help="n: the step count is n / 128")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    torch.manual_seed(0)
    x = torch.randn(2 * args.images, 1, 28, 28)  # what the images are does not change the operations
    y = torch.randint(0, 10, (2 * args.images,))
    base = base_recipe("lenet")
    cfg = TrainConfig(lr=0.05, epochs=1, batch_size=BATCH, momentum=base["momentum"], **base["fixed"])

    def single(n: int) -> None:
        fit(build_model("lenet", 0, x.device).module, (x[:n], y[:n]), None, cfg)

    def population(k: int):
        def run(n: int) -> None:
            cfgs = [dataclasses.replace(cfg, lr=cfg.lr * (1 + i / k)) for i in range(k)]
            modules = [build_model("lenet", i, x.device).module for i in range(k)]
            fit_population(modules, [Member(c) for c in cfgs], (x[:n], y[:n]), None)

        return run

    results: dict = {"lenet": {}}
    rows = [("single", single)] + [(f"population {k}", population(int(k))) for k in args.sizes.split(",")]
    for name, fn in rows:
        ops, kernels = _counts(fn, args.images)
        results["lenet"][name] = {"ops": ops, "kernel_ops": kernels}
        print(f"lenet {name:15s} {ops:6.1f} operations per step, {kernels:6.1f} that launch a kernel", flush=True)
    recipe = "base recipe: batch 128, flips, erasing, label smoothing, Nesterov, weight decay"
    results["hardware"] = hardware(torch.device("cpu"), "fp32", recipe=recipe, images=args.images)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
