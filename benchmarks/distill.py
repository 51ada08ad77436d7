"""Distillation at the student's speed: a distilled LeNet epoch against an undistilled one.

Three ways to train the same LeNet recipe (flips, no crops): without a teacher; distilled
from an airbench teacher run on every batch; distilled with the teacher's logits looked up
(``train.Teacher``: each training image's and its mirror's logits, computed once per split,
which is reported separately: a study pays it once per worker process). Training samples/s
from the second epoch on; the three alternate per repetition; medians.

    python benchmarks/distill.py --json benchmarks/results/distill-cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.core.config import TrainConfig
from fmnist_search.engine import data
from fmnist_search.engine.devices import resolve_device, resolve_precision, synchronize
from fmnist_search.engine.train import Teacher, build_model, fit, to_device


def rate(train, cfg: TrainConfig, teacher: Teacher | None, lookup: bool) -> float:
    model = build_model("lenet", 0, train[0].device).module
    return fit(model, train, None, cfg, teacher=teacher, lookup=lookup).throughput


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--train-size", type=int, default=10_240)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    dataset = data.load(allow_download=False)
    n = args.train_size
    train = to_device(dataset.train_images[:n], dataset.train_labels[:n], device)
    net = build_model("airbench", 0, device).module.eval().requires_grad_(False)
    cache = Path(tempfile.mkdtemp(prefix="fmnist-teacher-")) / "airbench"
    teacher = Teacher(net, cache=cache)  # its tables kept on disk, as a study's teacher keeps them
    plain = TrainConfig(lr=0.04, epochs=2, batch_size=256, flip=True, precision=precision)
    distilled = TrainConfig(**{**plain.__dict__, "teacher": "airbench", "distill": 0.9})
    synchronize(device)
    t0 = time.perf_counter()
    teacher.tables(train[0], precision, distilled.batch_size)  # once per split and process
    synchronize(device)
    table_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    Teacher(net, cache=cache).tables(train[0], precision, distilled.batch_size)  # the next process: loaded
    synchronize(device)
    table_load_s = time.perf_counter() - t0

    runs: dict[str, list[float]] = {"undistilled": [], "teacher per batch": [], "teacher looked up": []}
    for _ in range(args.reps):
        runs["undistilled"].append(rate(train, plain, None, True))
        runs["teacher per batch"].append(rate(train, distilled, teacher, False))
        runs["teacher looked up"].append(rate(train, distilled, teacher, True))
    results: dict = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    base = results["undistilled"]
    results["epoch_time_vs_undistilled"] = {k: round(base / v, 2) for k, v in results.items() if k != "undistilled"}
    results["table_s"] = round(table_s, 2)
    results["table_load_s"] = round(table_load_s, 3)
    for k, v in runs.items():
        print(f"{k:18s} {statistics.median(v):10,.0f} samples/s", flush=True)
    print(
        f"epoch time vs undistilled: {results['epoch_time_vs_undistilled']}; table built once in {table_s:.1f} s, "
        f"loaded by the next process in {table_load_s:.2f} s"
    )
    results["hardware"] = hardware(device, precision, train_size=n, reps=args.reps)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
