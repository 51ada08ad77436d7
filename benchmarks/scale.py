"""Study throughput (trials/hour) with 1, 2, ... worker processes, in one run.

CPU (default): LeNet trials on a small subset, W local workers via `run --jobs W`.
GPU (--gpu): W workers packed on GPU 0 via `run --gpus 0 --workers-per-gpu W`.
Trials/hour is measured over the trials' own timestamps (first start to last finish),
so process start-up (imports, data load) is reported separately as wall time.

    python benchmarks/scale.py --workers 1,2 --json benchmarks/results/scale-cpu.json
    python benchmarks/scale.py --gpu --workers 1,4,8 --trials 48 --epochs 10 --train-size 0
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from results_io import write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.engine.devices import device_name, resolve_device


def one(workers: int, args: argparse.Namespace) -> dict:
    url = f"sqlite:///{tempfile.mkdtemp(prefix='fmnist-scale-')}/scale.db"
    cmd = [sys.executable, "-m", "fmnist_search", "run", "--model", "lenet", "--study", "scale", "--storage", url]
    cmd += ["--trials", str(args.trials), "--epochs", str(args.epochs), "--val-size", str(args.val_size)]
    cmd += ["--pruner", "none", "--sampler", "random"]  # every trial runs all its epochs: equal work
    cmd += ["--population", str(args.population)]  # processes packed, not trials fused (population.py measures that)
    if args.train_size:
        cmd += ["--train-size", str(args.train_size)]
    cmd += ["--gpus", "0", "--workers-per-gpu", str(workers)] if args.gpu else ["--jobs", str(workers)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    trials = optuna.load_study(study_name="scale", storage=url).get_trials(deepcopy=False)
    span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    return {"trials_per_hour": len(trials) / span * 3600, "span_s": span, "wall_s": wall, "trials": len(trials)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", default="1,2", help="worker counts to compare")
    p.add_argument("--gpu", action="store_true", help="pack the workers on GPU 0")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-size", type=int, default=4096, help="0: the whole training split")
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions; the median is reported")
    p.add_argument("--population", type=int, default=1, help="trials per worker population")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    counts = [int(w) for w in args.workers.split(",")]
    runs: dict[int, list[dict]] = {w: [] for w in counts}
    for _ in range(args.reps):
        for w in counts:  # alternate, so drift in machine load hits every setting alike
            runs[w].append(one(w, args))
    results: dict = {}
    base = None
    for w in counts:
        tph = statistics.median(r["trials_per_hour"] for r in runs[w])
        base = base or tph
        results[str(w)] = {
            "trials_per_hour": round(tph),
            "ratio_vs_first": round(tph / base, 2),
            "wall_s": round(statistics.median(r["wall_s"] for r in runs[w]), 1),
        }
        print(f"{w:2d} worker(s): {tph:8,.0f} trials/hour  x{tph / base:.2f}  (wall {results[str(w)]['wall_s']} s)")
    device = resolve_device("cuda" if args.gpu else "cpu")
    results["protocol"] = {
        "model": "lenet",
        "trials": args.trials,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "reps": args.reps,
        "device": str(device),
        "device_name": device_name(device),
    }
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
