"""What a checkpoint costs: the time to snapshot a trial and write it to the artifact store,
against its epoch's time (training + evaluation), for one model trained as a trial trains.

Each epoch's snapshot is written with ``search.checkpoints.save`` to a FileSystemArtifactStore
and the previous one removed, as a study's trial does; the hook's time is measured around
all of it. Reported: ms per checkpoint, its size, the epoch's seconds, and the cost as a
share of the epoch (the default checkpoints every epoch: this is its overhead).

    python benchmarks/checkpoints.py --json benchmarks/results/checkpoints-cpu.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.core.config import TrainConfig
from fmnist_search.engine import data
from fmnist_search.engine.devices import resolve_device, resolve_precision, synchronize
from fmnist_search.engine.population import Member, fit_population
from fmnist_search.engine.train import build_model, to_device
from fmnist_search.search.trials import checkpoints


def measure(name: str, n: int, epochs: int, device, precision: str, store) -> dict:
    ds = data.load(allow_download=False)
    train = to_device(ds.train_images[:n], ds.train_labels[:n], device)
    val = to_device(ds.test_images, ds.test_labels, device)  # 10,000 images, as a trial's validation
    cfg = TrainConfig(lr=0.05, epochs=epochs, batch_size=128, momentum=0.9, flip=True, precision=precision)
    costs, sizes, epoch_s, previous = [], [], [], [None]
    last = [time.perf_counter()]

    def on_epoch(epoch, metrics):
        synchronize(device)
        now = time.perf_counter()
        epoch_s.append(now - last[0])  # training and evaluation of this epoch
        return ()

    def on_snapshot(epoch, snaps):
        t0 = time.perf_counter()
        for snap in snaps.values():
            attr = checkpoints.save(store, name, cfg, snap)
            checkpoints.remove(store, previous[0])
            previous[0] = attr
            sizes.append(attr["bytes"])
        costs.append(time.perf_counter() - t0)
        last[0] = time.perf_counter()  # the next epoch starts after the checkpoint

    fit_population(
        [build_model(name, 0, device).module],
        [Member(cfg)],
        train,
        val,
        on_epoch,
        on_snapshot=on_snapshot,
        snapshot_every=1,
    )
    cost_ms, epoch = statistics.median(costs) * 1e3, statistics.median(epoch_s[: len(costs)])
    return {
        "checkpoint_ms": round(cost_ms, 1),
        "checkpoint_bytes": sizes[-1],
        "epoch_s": round(epoch, 2),
        "train_images": n,
        "share_of_epoch": round(cost_ms / 1e3 / epoch, 4),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lenet:50000,airbench:10240", help="NAME:TRAIN_IMAGES,...")
    p.add_argument("--epochs", type=int, default=4, help="checkpoints after all but the last")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    precision = resolve_precision("auto", device)
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        store = FileSystemArtifactStore(folder)
        for item in args.models.split(","):
            name, n = item.split(":")
            results[name] = r = measure(name, int(n), args.epochs, device, precision, store)
            kb, share = r["checkpoint_bytes"] / 1e3, 100 * r["share_of_epoch"]
            print(
                f"{name:9s} {r['checkpoint_ms']:7.1f} ms per checkpoint ({kb:,.0f} kB), "
                f"epoch {r['epoch_s']:.2f} s on {int(n):,} images: {share:.2f}% of it",
                flush=True,
            )
    results["hardware"] = hardware(device, precision, epochs=args.epochs)
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
