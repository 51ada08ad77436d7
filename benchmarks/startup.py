"""Where a worker's first seconds go, from process start to its first training step.

A fresh Python process times each stage in order: importing torch, Optuna and SQLAlchemy,
the package's engine and search layers; loading and verifying the data; moving it to the
device (on CUDA: the context too); building the model; the first training step (cuDNN
autotuning on a GPU) and a second one. Several processes, the median per stage. It also
says whether the worker's path imported torchvision (~0.9 s on the CPU machine, as it pulls
in torch._dynamo through torchvision.ops): only a ResNet needs it, and the data's parse the
first time (engine/data.py keeps the parsed tensors).

    python benchmarks/startup.py --json benchmarks/results/startup-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs

CHILD = r"""
import json, sys, time
t = [("start", time.perf_counter())]
def mark(name): t.append((name, time.perf_counter()))
import torch; mark("import torch")
import optuna, sqlalchemy; mark("import optuna + sqlalchemy")
from fmnist_search.engine import data, train; from fmnist_search.engine.devices import resolve_device, synchronize
mark("import fmnist_search.engine")
from fmnist_search.search.trials import lifecycle; from fmnist_search.search.store import storage
mark("import fmnist_search.search")
ds = data.load(allow_download=False); splits = data.make_splits(ds, 10_000, None, 0); mark("load + verify + split data")
device = resolve_device(sys.argv[1])
x, y = train.to_device(*splits.train, device); synchronize(device); mark("data to the device")
model = train.build_model("lenet", 0, device).module; synchronize(device); mark("build the model")
cfg = train.TrainConfig(lr=0.05, epochs=1, batch_size=256)
def step():
    from fmnist_search.engine.population import Member, fit_population
    fit_population([model], [Member(cfg)], (x[:256], y[:256]), None)
    synchronize(device)
step(); mark("first training step")
step(); mark("second training step")
print(json.dumps([[(n, b - a) for (_, a), (n, b) in zip(t, t[1:])], "torchvision" in sys.modules]))
"""


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    runs = []
    for _ in range(args.reps):
        out = subprocess.run([sys.executable, "-c", CHILD, args.device], capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    torchvision = [r[1] for r in runs]
    runs = [r[0] for r in runs]
    stages = {name: round(statistics.median(r[i][1] for r in runs), 3) for i, (name, _) in enumerate(runs[0])}
    total = sum(stages.values())
    for name, seconds in stages.items():
        print(f"{name:28s} {seconds:7.2f} s  {100 * seconds / total:5.1f}%", flush=True)
    print(f"{'process start to 2nd step':28s} {total:7.2f} s (after the interpreter itself starts)")
    print(f"torchvision imported: {', '.join('yes' if v else 'no' for v in torchvision)} (one per process)")
    import torch

    results = {
        "stages_s": stages,
        "total_s": round(total, 2),
        "torchvision_imported": torchvision,
        "hardware": hardware(torch.device(args.device), "fp32", reps=args.reps),
    }
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
