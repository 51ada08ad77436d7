"""Training throughput: the report's input pipeline against fmnist-search's engine.

Baseline (the report's pipeline): torchvision's FashionMNIST dataset with ToTensor +
Normalize, a shuffling DataLoader at batch 256, a host->device copy per batch.
Ours: the engine every trial uses (fmnist_search.engine.train.fit): data resident on the
device, index-sliced batches, no per-batch sync; bf16/channels_last on CUDA.
Reference: ours with PyTorch's own parts in the step (torch.optim.SGD, a torch scheduler
stepped per batch, F.cross_entropy) over the same device-resident batches: how the engine
trained one model before one loop served single trials and populations; ``ours/ref`` says
what that loop (flat SGD, the lr read from a table, the population's loss) costs a single trial.
Same model, same SGD step, same precision (autocast for all). The three alternate in one
run after a warm-up; we report the median samples/s of each and their ratios. On a GPU,
time at least ~1,000 LeNet batches: fewer is over in milliseconds.
``--compile-mode reduce-overhead`` compiles ours with CUDA graphs (one replay per step).

    python benchmarks/throughput.py --models lenet,resnet18,resnet34 --device cpu \
        --batches 40 --json benchmarks/results/throughput-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import FashionMNIST

from fmnist_search.core.config import StudySpec
from fmnist_search.engine import data
from fmnist_search.engine.batches import MEAN, STD, autocast, epoch_batches
from fmnist_search.engine.devices import resolve_device, resolve_precision, synchronize
from fmnist_search.engine.schedules import make_scheduler
from fmnist_search.engine.train import TrainConfig, build_model, fit
from fmnist_search.search.trials.context import TrialContext

BATCH = 256  # the report's batch size
LR = 0.01  # any stable rate: speed does not depend on it


def report_loader(raw: dict[str, Path], workers: int) -> DataLoader:
    """torchvision's FashionMNIST over our verified files (it wants them in root/FashionMNIST/raw)."""
    root = Path(tempfile.mkdtemp(prefix="fmnist-bench-"))
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    for name, path in raw.items():
        (root / "FashionMNIST" / "raw" / name).symlink_to(path.resolve())
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
    ds = FashionMNIST(str(root), train=True, transform=tf, download=False)
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=workers, persistent_workers=workers > 0)


def baseline_rate(name: str, loader: DataLoader, obj: TrialContext, batches: int) -> float:
    """The report's loop, at our precision: autocast like ours, so the ratio is the pipeline's."""
    model = build_model(name, 0, obj.device, obj.compiled).runnable
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    device = obj.device
    seen = 0
    synchronize(device)
    t0 = time.perf_counter()
    for i, (x, y) in enumerate(loader):  # data loading is part of what is measured
        if i == batches:
            break
        x, y = x.to(device), y.to(device)
        with autocast(device, obj.precision):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        seen += len(x)
    synchronize(device)
    return seen / (time.perf_counter() - t0)


def ours_rate(name: str, obj: TrialContext, batches: int, mode: str | None = None, graphs: bool = False) -> float:
    n = min(batches * BATCH, len(obj.train[0]))
    train = (obj.train[0][:n], obj.train[1][:n])
    val = (obj.val[0][:BATCH], obj.val[1][:BATCH])
    epochs = -(-batches * BATCH // n)  # more batches than an epoch has: more epochs (the first is not timed)
    cfg = TrainConfig(lr=LR, epochs=epochs, batch_size=BATCH, momentum=0.9, precision=obj.precision)
    built = build_model(name, 0, obj.device, obj.compiled)
    runnable = torch.compile(built.module, mode=mode) if mode else built.runnable
    if graphs:  # the first epoch pays the capture: at least two, the first untimed (FitResult.throughput)
        cfg = dataclasses.replace(cfg, epochs=max(cfg.epochs, 2))
    return fit(runnable, train, val, cfg, graphs=graphs).throughput


def reference_rate(name: str, obj: TrialContext, batches: int) -> float:
    """The single-model step as it was: torch.optim.SGD, LambdaLR per step, F.cross_entropy."""
    model = build_model(name, 0, obj.device, obj.compiled).runnable
    model.train()
    device = obj.device
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, fused=True if device.type == "cuda" else None)
    sched = make_scheduler(opt, "cosine", batches, 0.0)
    x, y = obj.train
    order = torch.Generator(device=device).manual_seed(0)
    seen = 0
    synchronize(device)
    t0 = time.perf_counter()
    while seen < batches * BATCH:
        for idx in epoch_batches(torch.randperm(len(x), device=device, generator=order), BATCH):
            with autocast(device, obj.precision):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            if seen >= batches * BATCH:
                break
    synchronize(device)
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet,resnet18,resnet34")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="both pipelines (autocast)")
    p.add_argument("--compile", action="store_true", help="ours: torch.compile (once per model)")
    p.add_argument("--compile-mode", default=None, help="ours: torch.compile mode, e.g. reduce-overhead")
    p.add_argument("--cuda-graphs", action="store_true", help="ours: the step as a CUDA graph (engine.population)")
    p.add_argument("--batches", type=int, default=100, help="training steps per measurement")
    p.add_argument("--reps", type=int, default=3, help="measurements of each pipeline (after one warm-up)")
    p.add_argument("--workers", type=int, default=0, help="baseline DataLoader workers")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    dataset = data.load(allow_download=False)
    _, raw = data.verified_files(allow_download=False)
    splits = data.make_splits(dataset, val_size=10_000, seed=0)
    obj = TrialContext(StudySpec(), splits, device, precision, compile=args.compile)
    loader = report_loader(raw, args.workers)

    results: dict = {}
    for name in args.models.split(","):
        baseline_rate(name, loader, obj, min(args.batches, 5))  # warm-up: allocator, cuDNN autotune, compile
        ours_rate(name, obj, min(args.batches, 5), args.compile_mode, args.cuda_graphs)
        reference_rate(name, obj, min(args.batches, 5))
        base, ours, ref = [], [], []
        for _ in range(args.reps):  # alternate so drift in machine load hits all alike
            base.append(baseline_rate(name, loader, obj, args.batches))
            ours.append(ours_rate(name, obj, args.batches, args.compile_mode, args.cuda_graphs))
            ref.append(reference_rate(name, obj, args.batches))
        b, o, r = statistics.median(base), statistics.median(ours), statistics.median(ref)
        results[name] = {
            "baseline": round(b, 1),
            "ours": round(o, 1),
            "ratio": round(o / b, 2),
            "reference": round(r, 1),
            "ours_vs_reference": round(o / r, 2),
        }
        print(
            f"{name:10s} baseline {b:12,.0f}  ours {o:12,.0f}  reference {r:12,.0f} samples/s  "
            f"ours/baseline {o / b:5.2f}x  ours/ref {o / r:5.2f}x",
            flush=True,
        )

    results["hardware"] = hardware(
        device,
        precision,
        compiled=args.compile,
        compile_mode=args.compile_mode,
        cuda_graphs=args.cuda_graphs,
        batches=args.batches,
        reps=args.reps,
        baseline_workers=args.workers,
    )
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
