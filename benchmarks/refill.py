"""Populations that stay full: the main job one trial at a time, in populations of K that shrink
as members leave (no refills: how populations trained before), and in populations of K that are
refilled; and the `full` space in populations of K.

Each configuration runs the real command in this process (`fmnist-search run --model lenet
--trials 30 --population K --seed S` on a fresh SQLite file), seed by seed, the configurations
of a seed one after another so a noisy machine slows them alike. From the store: wall time,
epochs trained, occupancy (member epochs / (K x the population's epochs), summed over
populations, K the --population asked for; the epochs of one population are equally long), populations, and the
best-validation trial's validation and test accuracy.

    python benchmarks/refill.py --json benchmarks/results/refill-cpu.json
    python benchmarks/refill.py --seeds 0 --trials 6 --epochs 2 --train-size 2048   # a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.engine.devices import resolve_device
from fmnist_search.search.trials.coordination import BudgetedStudy
from fmnist_search.search.trials.record import TrialRecord

CONFIGS = {  # name -> (population, extra run options, refills)
    "K=1": (1, [], True),
    "K=4 shrinking": (4, [], False),
    "K=4 refilled": (4, [], True),
    "full space K=4": (4, ["--space", "full"], True),
}


def measure(url: str, k: int) -> dict:
    study = optuna.load_study(study_name="lenet", storage=url)
    trials = study.trials
    records = [TrialRecord.of(t) for t in trials]
    populations: dict[int, list[TrialRecord]] = {}
    for r in records:
        populations.setdefault(r.population_id if r.population_id is not None else -1, []).append(r)
    member_epochs = capacity_epochs = 0
    for members in populations.values():
        rounds = max((r.joined_epoch or 1) + (r.epochs_completed or 0) - 1 for r in members)
        member_epochs += sum(r.epochs_completed or 0 for r in members)
        capacity_epochs += k * rounds  # rows asked for (--population), filled or not
    best = study.best_trial
    return {
        "epochs": sum(r.epochs_completed or 0 for r in records),
        "occupancy": round(member_epochs / capacity_epochs, 3) if capacity_epochs else None,
        "populations": len(populations),
        "refills": sum((r.joined_epoch or 1) > 1 for r in records),
        "best_val": best.value,
        "best_test": best.user_attrs["test_accuracy"],
        "complete": sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials),
    }


def run(name: str, seed: int, args: argparse.Namespace, folder: Path) -> dict:
    population, extra, refills = CONFIGS[name]
    url = f"sqlite:///{folder}/{name.replace(' ', '_').replace(',', '').replace('=', '')}-{seed}.db"
    argv = ["run", "--model", "lenet", "--trials", str(args.trials), "--population", str(population)]
    argv += ["--seed", str(seed), "--storage", url, "--device", args.device, *extra]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.train_size is not None:
        argv += ["--train-size", str(args.train_size)]
    ask_more = BudgetedStudy.ask_more
    if not refills:  # populations as they trained before refills: members leave, rows stay empty
        BudgetedStudy.ask_more = lambda self, k, prepare, fixed: []  # type: ignore[method-assign]
    try:
        t0 = time.perf_counter()
        result = CliRunner().invoke(app, argv)
        wall = time.perf_counter() - t0
    finally:
        BudgetedStudy.ask_more = ask_more  # type: ignore[method-assign]
    if result.exit_code != 0:
        raise SystemExit(f"{name} seed {seed} failed: {result.output[-2000:]}")
    return {"config": name, "seed": seed, "wall_s": round(wall, 1), **measure(url, population)}


def table(rows: list[dict]) -> str:
    lines = [
        "| configuration | wall s (mean +- sd) | vs K=1 | epochs | occupancy | populations | best val | its test |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = (
        statistics.mean(r["wall_s"] for r in rows if r["config"] == "K=1")
        if any(r["config"] == "K=1" for r in rows)
        else None
    )

    def ms(values: list[float], fmt: str) -> str:
        sd = f" +- {statistics.stdev(values):{fmt}}" if len(values) > 1 else ""
        return f"{statistics.mean(values):{fmt}}{sd}"

    for name in CONFIGS:
        mine = [r for r in rows if r["config"] == name]
        if not mine:
            continue
        wall = [r["wall_s"] for r in mine]
        speed = f"{base / statistics.mean(wall):.2f}x" if base else "-"
        occ = [r["occupancy"] for r in mine if r["occupancy"] is not None]
        lines.append(
            f"| {name} | {ms(wall, '.0f')} | {speed} | {ms([r['epochs'] for r in mine], '.0f')} | "
            f"{ms(occ, '.2f') if occ else '-'} | {ms([r['populations'] for r in mine], '.1f')} | "
            f"{ms([100 * r['best_val'] for r in mine], '.2f')} | {ms([100 * r['best_test'] for r in mine], '.2f')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names of CONFIGS")
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--epochs", type=int, default=None, help="default: the study's (10)")
    p.add_argument("--train-size", type=int, default=None, help="default: the whole training split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.configs.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in (int(s) for s in args.seeds.split(",")):
            for name in names:
                rows.append(run(name, seed, args, Path(folder)))
                print(rows[-1], file=sys.stderr, flush=True)
                write_json(args.json, {"protocol": vars(args) | {"json": None}, "runs": rows})
    out = {
        "hardware": hardware(resolve_device(args.device), "fp32", trials=args.trials, epochs=args.epochs),
        "date": time.strftime("%Y-%m-%d"),
        "runs": rows,
        "table": table(rows),
    }
    write_json(args.json, out)
    print(out["table"])
    return out


if __name__ == "__main__":
    main()
