"""What checkpoints save under preemption: a 10-epoch study finished by two workers, one of
which is stopped by SIGTERM every few seconds (and started again), with checkpoints (a retry
continues from its trial's last epoch) and without (``--checkpoint-every 0``: from epoch 1).

Reported per mode: epochs trained in all (every trial's, the stopped ones' too), the
study's epochs (trials x epochs), preemptions, wall time. The workers are real processes on
one SQLite store; the schedule of signals is the same for both modes.

    python benchmarks/preemption.py --json benchmarks/results/preemption-cpu.json
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.engine.devices import resolve_device
from fmnist_search.search.trials.record import TrialRecord


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    return subprocess.Popen([sys.executable, "-m", "fmnist_search", *args], env=env, **quiet)


def run_mode(every: int, trials: int, epochs: int, size: int, period: float, folder: Path) -> dict:
    url = f"sqlite:///{folder}/every{every}.db"
    study = ["--study", "lenet", "--storage", url]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fmnist_search",
            "create",
            "--model",
            "lenet",
            "--trials",
            str(trials),
            "--epochs",
            str(epochs),
            "--train-size",
            str(size),
            "--pruner",
            "none",
            "--storage",
            url,
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    work = [
        "worker",
        *study,
        "--no-bars",
        "--checkpoint-every",
        str(every),
        "--heartbeat-interval",
        "1",
        "--grace-period",
        "5",
    ]
    steady, victim = _cli(*work, "--label", "steady"), _cli(*work, "--label", "victim")
    start, preemptions = time.monotonic(), 0
    while steady.poll() is None or victim.poll() is None:
        time.sleep(period)  # the preemption schedule: a fixed period, the same in both modes
        if victim.poll() is None and steady.poll() is None:
            victim.send_signal(signal.SIGTERM)  # its trial is re-queued (with its checkpoint, if on)
            victim.wait()
            preemptions += 1
            victim = _cli(*work, "--label", "victim")
    wall = time.monotonic() - start
    trials_done = optuna.load_study(study_name="lenet", storage=url).get_trials(deepcopy=False)
    trained = 0
    for t in trials_done:
        r = TrialRecord.of(t)
        trained += (r.epochs_completed or 0) - ((r.resumed_from or {}).get("epoch") or 0)
    complete = sum(t.state.name == "COMPLETE" for t in trials_done)
    return {
        "epochs_trained": trained,
        "study_epochs": complete * epochs,
        "complete": complete,
        "preemptions": preemptions,
        "wall_s": round(wall, 1),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=6)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=4096)
    p.add_argument("--period", type=float, default=8.0, help="seconds between SIGTERMs to the victim")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode, every in (("with checkpoints", 1), ("without", 0)):
            results[mode] = r = run_mode(every, args.trials, args.epochs, args.train_size, args.period, Path(folder))
            print(
                f"{mode:17s} {r['epochs_trained']} epochs trained for {r['study_epochs']} "
                f"({r['preemptions']} preemptions, {r['wall_s']:.0f} s)",
                flush=True,
            )
    results["hardware"] = hardware(
        resolve_device("cpu"),
        "fp32",
        trials=args.trials,
        epochs=args.epochs,
        train_size=args.train_size,
        period_s=args.period,
    )
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
