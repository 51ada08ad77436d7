"""Search efficiency: the same LeNet study with and without pruning.

Same TPE seed, same trial count, same data; a reduced protocol (a stratified subset of
the training split, fewer epochs) so it runs in a few minutes on 2 CPU cores. For each
pruner we report the epochs actually trained, the wall time and the best validation
accuracy, and their ratios against the unpruned study.

    python benchmarks/search_efficiency.py --json benchmarks/results/search-efficiency-cpu.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import optuna
import torch
from results_io import write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.core.config import StudySpec
from fmnist_search.engine import data
from fmnist_search.engine.devices import device_name, resolve_device, resolve_precision
from fmnist_search.search.study import PRUNERS, SAMPLERS
from fmnist_search.search.trials.context import TrialContext
from fmnist_search.search.trials.lifecycle import optimize


def run_study(spec: StudySpec, splits: data.Splits, device: torch.device, trials: int) -> dict:
    study = optuna.create_study(
        direction="maximize", sampler=SAMPLERS[spec.sampler](spec, spec.seed), pruner=PRUNERS[spec.pruner](spec)
    )
    obj = TrialContext(spec, splits, device, resolve_precision("auto", device))
    t0 = time.perf_counter()
    optimize(study, obj, trials)
    wall = time.perf_counter() - t0
    return {
        "epochs": sum(t.user_attrs.get("epochs_completed", 0) for t in study.trials),
        "wall_s": round(wall, 1),
        "best_val": study.best_value,
        "best_test": study.best_trial.user_attrs["test_accuracy"],
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pruners", default="median,sha,hyperband", help="compared against 'none'")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = resolve_device(args.device)
    base = StudySpec(epochs=args.epochs, train_size=args.train_size, val_size=args.val_size, seed=args.seed)
    splits = data.make_splits(data.load(allow_download=False), base.val_size, base.train_size, base.seed)
    results: dict = {}
    for pruner in ["none", *args.pruners.split(",")]:
        spec = StudySpec(**{**base.to_attrs(), "pruner": pruner})
        r = run_study(spec, splits, device, args.trials)
        if pruner != "none":
            ref = results["none"]
            r["epochs_ratio"] = round(r["epochs"] / ref["epochs"], 3)
            r["wall_ratio"] = round(r["wall_s"] / ref["wall_s"], 3)
            r["best_val_diff_points"] = round(100 * (r["best_val"] - ref["best_val"]), 2)
        results[pruner] = r
        extra = (
            f"  epochs x{r['epochs_ratio']:.2f}  wall x{r['wall_ratio']:.2f}"
            f"  best val {r['best_val_diff_points']:+.2f} pts"
            if pruner != "none"
            else ""
        )
        print(
            f"{pruner:10s} epochs {r['epochs']:4d}  wall {r['wall_s']:7.1f}s  best val {r['best_val']:.4f}"
            f"  pruned {r['pruned']:2d}/{args.trials}{extra}",
            flush=True,
        )
    results["protocol"] = {
        "model": "lenet",
        "sampler": "tpe",
        "seed": args.seed,
        "trials": args.trials,
        "epochs": args.epochs,
        "train_size": args.train_size,
        "val_size": args.val_size,
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
    }
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
