"""Population training throughput: K models trained as one (engine/population.py) against the
same models trained one after another by the plain engine (``fit``).

Aggregate training samples/s: a population of K counts K x its images. "sequential" is one
model's rate, which is also the aggregate rate of K models trained one after another. Each
model gets its own lr (a population's members differ), one epoch over ``--train-size``
images, batch 256; the two alternate per repetition after a warm-up; medians are reported.

    python benchmarks/population.py --device cpu --models lenet,airbench --sizes 1,2,4,8,16,32 \
        --json benchmarks/results/population-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.engine import data
from fmnist_search.engine.devices import resolve_device, resolve_precision, tune_backend
from fmnist_search.engine.population import Member, fit_population
from fmnist_search.engine.train import TrainConfig, build_model, to_device

BATCH = 256


def sequential_rate(name: str, cfg: TrainConfig, train, val, graphs: bool = False) -> float:
    return population_rate(name, cfg, 1, train, val, graphs)


def population_rate(name: str, cfg: TrainConfig, k: int, train, val, graphs: bool = False) -> float:
    """All K models' training samples/s, from the second epoch on when there is one (the first
    pays the CUDA graphs' capture)."""
    cfgs = [dataclasses.replace(cfg, lr=cfg.lr * (1 + i / k)) for i in range(k)]  # one lr each
    modules = [build_model(name, i, train[0].device).module for i in range(k)]
    members = [Member(c) for c in cfgs]
    fit_population(modules, members, train, val, graphs=graphs)
    return sum(m.result.throughput for m in members)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet,airbench")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--sizes", default="1,2,4,8,16,32", help="population sizes K")
    p.add_argument("--train-size", type=int, default=10_240, help="training images per epoch")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cuda-graphs", action="store_true", help="the step as a CUDA graph (2 epochs, the second timed)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    tune_backend(device)
    dataset = data.load(allow_download=False)
    n = args.train_size
    train = to_device(dataset.train_images[:n], dataset.train_labels[:n], device)
    val = to_device(dataset.test_images[:BATCH], dataset.test_labels[:BATCH], device)  # evaluation is not timed
    cfg = TrainConfig(lr=0.02, epochs=2 if args.cuda_graphs else 1, batch_size=BATCH, momentum=0.9, precision=precision)
    g = args.cuda_graphs
    sizes = [int(k) for k in args.sizes.split(",")]

    results: dict = {}
    for name in args.models.split(","):
        warm = (train[0][: 4 * BATCH], train[1][: 4 * BATCH])
        sequential_rate(name, cfg, warm, val, g)  # allocator, cuDNN autotuning
        population_rate(name, cfg, max(sizes), warm, val, g)
        row: dict = {}
        seq = []
        rates: dict[int, list[float]] = {k: [] for k in sizes}
        for _ in range(args.reps):  # alternate, so drift in machine load hits both alike
            seq.append(sequential_rate(name, cfg, train, val, g))
            for k in sizes:
                rates[k].append(population_rate(name, cfg, k, train, val, g))
        row["sequential"] = round(statistics.median(seq), 1)
        for k in sizes:
            row[str(k)] = round(statistics.median(rates[k]), 1)
        row["speedup"] = {str(k): round(row[str(k)] / row["sequential"], 2) for k in sizes}
        results[name] = row
        line = "  ".join(f"K={k}: {row[str(k)]:,.0f} ({row['speedup'][str(k)]:.2f}x)" for k in sizes)
        print(f"{name:9s} sequential {row['sequential']:,.0f} samples/s; {line}", flush=True)

    results["hardware"] = hardware(
        device, precision, train_size=n, batch_size=BATCH, reps=args.reps, cuda_graphs=args.cuda_graphs
    )
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
