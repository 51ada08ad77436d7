"""Which mid-run figure ranks trials as they will end: candidate rung figures side by side.

For each model and seed, a group of trials that differ only in their learning rate (sampled
log-uniformly in the model's recipe range, as the `compare` preset's trials do) trains as one
population on the comparison's protocol (10 epochs, batch 256, 10,000 training and 10,000
validation images). After every epoch each trial is evaluated on validation under each
candidate figure, all from the same training run:

- ``raw``: the weights as they are (what trials report and are pruned on without ``ema``);
- ``emaH``: an exponential moving average of the weights with a half-life of H epochs, its
  BatchNorm statistics averaged beside them (``TrainConfig.ema``, the engine's one
  implementation: ``engine/population``);
- rungs counted from the end of warm-up are read off the same table: the recipe's warm-up
  ends at epoch ``warmup_frac * epochs`` (LeNet 3, airbench 1).

Reported: Kendall's tau and Spearman's rho between each figure at epoch k and the same figure
at the last epoch (what a trial pruned on it would finally report), and against the raw final
accuracy; mean and spread over seeds. The cost of averaging: the training time of one epoch
with and without the averages, timed alternately in one run.

    python benchmarks/fidelity.py --models lenet,airbench --seeds 20,21,22,23,24 --out benchmarks/results
    python benchmarks/fidelity.py --summary benchmarks/results/fidelity-cpu-*.json     # the table
    python benchmarks/fidelity.py --models lenet --seeds 0 --trials 3 --epochs 2 --train-size 1024  # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs
from scipy.stats import kendalltau, spearmanr

from fmnist_search.core.config import TrainConfig
from fmnist_search.core.presets import base_recipe, model_recipe
from fmnist_search.engine.data import load, make_splits
from fmnist_search.engine.devices import resolve_device
from fmnist_search.engine.population import Member, fit_population
from fmnist_search.engine.train import build_model, on_device

HALFLIVES = (0.25, 0.5, 1.0, 2.0)  # epochs
RECIPES = {"lenet": lambda: base_recipe("lenet"), "airbench": lambda: model_recipe("airbench-tuned")}


def recipe(model: str, lr: float, epochs: int, batch_size: int, seed: int, **over: object) -> TrainConfig:
    r = RECIPES[model]()
    fixed = {k: v for k, v in r.get("fixed", {}).items() if k not in ("epochs", "batch_size")}
    values = {"momentum": r.get("momentum", 0.9), "seed": seed, "data_seed": seed, **fixed, **over}
    return TrainConfig(lr=lr, epochs=epochs, batch_size=batch_size, **values)  # type: ignore[arg-type]


def lrs(model: str, n: int, seed: int) -> list[float]:
    r = RECIPES[model]()
    g = torch.Generator().manual_seed(seed)
    lo, hi = math.log(r.get("lr_min", 0.01)), math.log(r.get("lr_max", 0.4))
    return [math.exp(lo + (hi - lo) * float(u)) for u in torch.rand(n, generator=g)]


def record(model: str, seed: int, args: argparse.Namespace) -> dict:
    """One group of trials trained once, every figure at every epoch."""
    device = resolve_device(args.device)
    splits = make_splits(load(allow_download=False), args.val_size, args.train_size, seed=seed)
    train, val, _ = on_device(splits, device)
    # ema 0: the trials report their raw weights whatever the recipe judges (airbench-tuned's
    # [fixed] sets ema = 0.5); every average is a candidate figure beside them (``halflives``)
    over = {"eval_batch_size": args.eval_batch_size, "ema": 0.0, **({"tta_flip": False} if args.no_tta else {})}
    cfgs = [recipe(model, lr, args.epochs, args.batch_size, seed, **over) for lr in lrs(model, args.trials, seed)]
    modules = [build_model(model, seed * 1000 + k, device).module for k in range(len(cfgs))]
    members = [Member(c) for c in cfgs]
    curves: list[dict[str, list[float]]] = [{} for _ in cfgs]

    def hook(_round: int, metrics: dict) -> tuple[int, ...]:
        for m, em in metrics.items():
            for name, value in {"raw": em.val_accuracy, **em.figures}.items():
                curves[m].setdefault(name, []).append(value)
        return ()

    t0 = time.perf_counter()
    stats = fit_population(modules, members, train, val, hook, halflives=args.halflives)
    return {
        "model": model,
        "seed": seed,
        "warmup_epochs": cfgs[0].warmup_frac * cfgs[0].epochs,
        "wall_s": round(time.perf_counter() - t0, 1),
        "train_time_s": round(stats.train_time_s, 1),
        "kind": stats.kind,
        "trials": [
            {"lr": c.lr, "status": mb.status, "curves": curve}
            for c, mb, curve in zip(cfgs, members, curves, strict=True)
        ],
        "hardware": hardware(
            device,
            "fp32",
            epochs=args.epochs,
            batch_size=args.batch_size,
            train_size=args.train_size,
            val_size=args.val_size,
            halflives=list(args.halflives),
            tta_flip=cfgs[0].tta_flip,
        ),
    }


def cost(model: str, args: argparse.Namespace, reps: int = 3) -> dict:
    """Training time of one epoch without averages, with the judged one, and with all the
    measured ones: alternately, ``reps`` times, on the group's first 4 recipes."""
    device = resolve_device(args.device)
    splits = make_splits(load(allow_download=False), args.val_size, args.train_size, seed=0)
    train, _, _ = on_device(splits, device)
    times: dict[str, list[float]] = {"none": [], "ema1": [], "all": []}
    settings = {"none": (0.0, ()), "ema1": (1.0, ()), "all": (1.0, tuple(args.halflives))}
    for _ in range(reps):
        for name, (ema, halflives) in settings.items():
            cfgs = [recipe(model, lr, 1, args.batch_size, 0, ema=ema) for lr in lrs(model, 4, 0)]
            modules = [build_model(model, k, device).module for k in range(len(cfgs))]
            stats = fit_population(modules, [Member(c) for c in cfgs], train, None, halflives=halflives)
            times[name].append(stats.train_time_s)
    base = statistics.median(times["none"])
    return {
        "model": model,
        "epoch_s": {k: round(statistics.median(v), 2) for k, v in times.items()},
        "ratio": {k: round(statistics.median(v) / base, 3) for k, v in times.items()},
    }


def _taus(trials: list[dict], figure: str, against: str) -> list[tuple[float, float]]:
    """(tau, rho) of ``figure`` at each epoch against ``against`` at the last epoch, over the
    trials that finished (a diverged trial has no end to rank)."""
    done = [t for t in trials if t["status"] == "done"]
    ends = [t["curves"][against][-1] for t in done]
    out = []
    for k in range(len(done[0]["curves"][figure])):
        at = [t["curves"][figure][k] for t in done]
        out.append((float(kendalltau(at, ends).statistic), float(spearmanr(at, ends).statistic)))
    return out


def summary(paths: list[Path], shown: tuple[int, ...] = (1, 2, 3, 5, 7)) -> str:
    """The table: per model and figure, tau with the same figure's end at epochs ``shown``, mean
    ± sd over the recordings [Spearman's rho, mean], the mean and best final accuracy, and tau
    at the first epoch after warm-up (where rungs counted from its end would start)."""
    runs = [json.loads(p.read_text()) for p in paths]
    runs = [r for r in runs if "trials" in r]
    lines = []
    for model in sorted({r["model"] for r in runs}):
        mine = [r for r in runs if r["model"] == model]
        figures = list(dict.fromkeys(f for r in mine for f in r["trials"][0]["curves"]))
        epochs = len(next(iter(mine[0]["trials"][0]["curves"].values())))
        after_warmup = math.floor(mine[0]["warmup_epochs"]) + 1
        columns = [k for k in shown if k < epochs]
        seeds = ",".join(str(r["seed"]) for r in sorted(mine, key=lambda r: r["seed"]))
        hw = mine[0]["hardware"]
        lines += [
            f"\n{model}: {len(mine)} seeds ({seeds}), {len(mine[0]['trials'])} trials each differing in lr, "
            f"{hw['epochs']} epochs, {hw['train_size']} train / {hw['val_size']} val images, flip TTA "
            f"{'on' if hw.get('tta_flip', True) else 'off'}; warm-up ends in epoch {mine[0]['warmup_epochs']:g}. "
            "Kendall tau of each figure at epoch k with the same figure at the end, mean ± sd over seeds "
            "[Spearman rho, mean]",
            "",
            "| figure | "
            + " | ".join(f"k={k}" for k in columns)
            + f" | k={after_warmup} (1st after warm-up) | final val (mean / best) |",
            "|---|" + "---|" * len(columns) + "---|---|",
        ]
        for f in figures:
            having = [r for r in mine if f in r["trials"][0]["curves"]]  # (a recording may lack one: its note says why)
            per_run = [_taus(r["trials"], f, f) for r in having]

            def cell(k: int, per_run: list = per_run) -> str:
                taus = [p[k - 1][0] for p in per_run]
                rhos = [p[k - 1][1] for p in per_run]
                sd = statistics.stdev(taus) if len(taus) > 1 else 0.0
                return f"{statistics.mean(taus):+.2f} ± {sd:.2f} [{statistics.mean(rhos):+.2f}]"

            done = [[t["curves"][f][-1] for t in r["trials"] if t["status"] == "done"] for r in having]
            final = (
                f"{statistics.mean(statistics.mean(d) for d in done):.4f} / {statistics.mean(max(d) for d in done):.4f}"
            )
            name = f if len(having) == len(mine) else f"{f} (seeds {','.join(str(r['seed']) for r in having)})"
            lines.append(f"| {name} | " + " | ".join(cell(k) for k in columns) + f" | {cell(after_warmup)} | {final} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet,airbench")
    p.add_argument("--seeds", default="20,21,22,23,24")
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--val-size", type=int, default=10_000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--halflives", type=float, nargs="+", default=list(HALFLIVES), help="epochs")
    p.add_argument("--eval-batch-size", type=int, default=256, help="(256 evaluates ~2x faster than 2048 on a CPU)")
    p.add_argument("--no-tta", action="store_true", help="evaluate every figure without flip TTA (half the cost)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, help="folder for one JSON per model and seed")
    p.add_argument("--cost", action="store_true", help="time an epoch with and without the averages")
    p.add_argument("--summary", type=Path, nargs="+", help="recordings to tabulate (no training)")
    args = p.parse_args(argv)
    if args.summary:
        print(summary(args.summary))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",")]
    unknown = [m for m in models if m not in RECIPES]
    if unknown:
        raise SystemExit(f"error: unknown model {unknown[0]!r}; one of {', '.join(RECIPES)}")
    if args.cost:
        result = {"cost": [cost(m, args) for m in models], "hardware": hardware(resolve_device(args.device), "fp32")}
        print(json.dumps(result, indent=2))
        if args.out:
            write_json(args.out / "fidelity-cpu-cost.json", result)
        return 0
    paths = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for model in models:
            result = record(model, seed, args)
            print(f"{model} seed {seed}: {result['wall_s']} s", flush=True)
            if args.out:
                paths.append(args.out / f"fidelity-cpu-{model}-seed{seed}.json")
                write_json(paths[-1], result)
    if paths:
        print(summary(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
