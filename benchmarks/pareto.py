"""Pruning that keeps the Pareto front: a two-model study (lenet, airbench; validation accuracy
and training throughput) run unpruned, then the same configurations again with pruning.

1. ``run --model lenet,airbench --objectives accuracy,throughput --pruner none``: TPE picks
   the model and its lr for ``--trials`` trials, each trained to the end.
2. The same study settings with ``--pruner P``, the same configurations enqueued in the same
   order (``enqueue_trial``): the same trial numbers, so the same seeds and batch orders.
3. Reported: epochs trained by each, both fronts side by side, and the points of the unpruned
   front the pruned study lost (a trial not completed, or completed but off its front).

Also replayed, for each pruner: the decisions the lifecycle's rule (search/pruning.py) takes on
the unpruned run's recorded curves, trial by trial as a one-at-a-time run takes them; a
pruner's replay is what its real run does when training is deterministic (it is on one CPU:
step 2 checks that too).

The JSON keeps the unpruned run's curves (``trials``), so the pruners can be replayed on
them later without training (``--replay FILE``); ``--no-pruned-run`` records and replays only.

    python benchmarks/pareto.py --json benchmarks/results/pareto-cpu.json
    python benchmarks/pareto.py --replay benchmarks/results/pareto-cpu-recorded-seed0.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.core.config import StudySpec
from fmnist_search.engine.devices import resolve_device
from fmnist_search.search.criteria import MEASURED_ATTR
from fmnist_search.search.internals import storage_of, trial_id
from fmnist_search.search.pruning import population_prunes
from fmnist_search.search.study import PRUNERS

NAME = "lenet+airbench"
REPLAYED = ("median", "sha", "hyperband")  # the pruners replayed on the recorded curves
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _cli(*args: str) -> None:
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1), **os.environ}  # (a given OMP_NUM_THREADS wins)
    done = subprocess.run([sys.executable, "-m", "fmnist_search", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"fmnist-search {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def _study_args(args: argparse.Namespace, pruner: str, url: str, trials: int) -> list[str]:
    return ["--model", "lenet,airbench", "--objectives", "accuracy,throughput", "--pruner", pruner, "--trials",
            str(trials), "--epochs", str(args.epochs), "--train-size", str(args.train_size), "--val-size",
            str(args.val_size), "--seed", str(args.seed), "--storage", url]  # fmt: skip


def _summary(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    front = sorted(t.number for t in study.best_trials)
    return {
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "front": [_point(t) for t in study.get_trials(deepcopy=False) if t.number in front],
    }


def _point(t: optuna.trial.FrozenTrial) -> dict:
    return {"trial": t.number, "model": t.params["model"], "lr": t.params[f"lr_{t.params['model']}"],
            "val_accuracy": t.values[0], "throughput": round(t.values[1]),
            "test_accuracy": t.user_attrs.get("test_accuracy")}  # fmt: skip


def recorded(study: optuna.Study) -> list[dict]:
    """The unpruned run, trial by trial: what a replay needs (and the JSON keeps)."""
    return [
        {"trial": t.number, "params": t.params, "curve": {str(k): v for k, v in t.intermediate_values.items()},
         "measured": t.user_attrs[MEASURED_ATTR], "values": t.values}
        for t in study.get_trials(deepcopy=False)
    ]  # fmt: skip


def replay(trials: list[dict], pruner: str, epochs: int) -> dict:
    """The pruned run, taken from the unpruned run's curves: trial by trial, epoch by epoch, as a
    one-at-a-time run takes its decisions (the lifecycle's rule, search/pruning.py)."""
    study = optuna.create_study(
        directions=["maximize", "maximize"], pruner=PRUNERS[pruner](StudySpec(epochs=epochs)), study_name="unpruned"
    )  # fmt: skip (Hyperband hashes the name)
    study.set_user_attr("objectives", ["accuracy", "throughput"])
    store = storage_of(study)

    def write(items: list) -> None:
        for tid, key, value in items:
            store.set_trial_system_attr(tid, key, value)

    trained = 0
    for old in trials:
        trial = study.ask()
        trial.set_user_attr(MEASURED_ATTR, old["measured"])
        curve = {int(k): v for k, v in old["curve"].items()}
        for step in sorted(curve):
            trained += 1
            store.set_trial_intermediate_value(trial_id(trial), step, curve[step])  # (report refuses 2 objectives)
            if population_prunes(study, step, {trial.number: {s: curve[s] for s in curve if s <= step}}, write):
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, old["values"])
    kept = {t.number for t in study.best_trials}
    front = {t.number for t in _front(trials)}
    return {"epochs_trained": trained, "front": sorted(kept), "lost": sorted(front - kept)}


def _front(trials: list[dict]) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(directions=["maximize", "maximize"])
    for t in trials:
        study.add_trial(optuna.create_trial(values=t["values"]))
    return study.best_trials


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--val-size", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pruner", default="sha", help="the pruned run's pruner")
    p.add_argument("--no-pruned-run", action="store_true", help="record and replay only (no second training run)")
    p.add_argument("--replay", type=Path, help="only replay each pruner on this earlier run's JSON (no training)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.replay is not None:  # each pruner on an earlier run's recorded curves, no training
        saved = json.loads(args.replay.read_text())
        epochs = saved["hardware"].get("epochs", args.epochs)
        total = saved["unpruned"]["epochs_trained"]
        replayed = {name: replay(saved["trials"], name, epochs) for name in REPLAYED}
        for name, r in replayed.items():
            share = r["epochs_trained"] / total
            print(f"replayed {name:9s}: {r['epochs_trained']} epochs ({share:.0%}), lost {r['lost']}")
        return {"replayed": replayed}
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/pareto.db"
        t0 = time.monotonic()
        _cli("run", *_study_args(args, "none", url, args.trials), "--study", "unpruned", "--no-save-weights")
        unpruned = optuna.load_study(study_name="unpruned", storage=url)
        results["unpruned"] = {**_summary(unpruned), "wall_s": round(time.monotonic() - t0, 1)}
        results["trials"] = recorded(unpruned)
        results["replayed"] = {name: replay(results["trials"], name, args.epochs) for name in REPLAYED}
        if not args.no_pruned_run:
            results["pruned"] = _pruned_run(args, url, unpruned)
    u = results["unpruned"]
    print(f"unpruned: {u['epochs_trained']} epochs, front {[x['trial'] for x in u['front']]} ({u['wall_s']:.0f} s)")
    if "pruned" in results:
        q = results["pruned"]
        print(f"{args.pruner:8s}: {q['epochs_trained']} epochs ({q['epochs_trained'] / u['epochs_trained']:.0%}), "
              f"front {[x['trial'] for x in q['front']]}, lost {q['lost']} ({q['wall_s']:.0f} s)")  # fmt: skip
    for name, r in results["replayed"].items():
        print(f"replayed {name:9s}: {r['epochs_trained']} epochs "
              f"({r['epochs_trained'] / u['epochs_trained']:.0%}), lost {r['lost']}")  # fmt: skip
    results["hardware"] = hardware(resolve_device("cpu"), "fp32", trials=args.trials, epochs=args.epochs,
                                   train_size=args.train_size, val_size=args.val_size)  # fmt: skip
    write_json(args.json, results)
    return results


def _pruned_run(args: argparse.Namespace, url: str, unpruned: optuna.Study) -> dict:
    """The same configurations, enqueued in the same order, into a study with ``args.pruner``."""
    _cli("create", *_study_args(args, args.pruner, url, args.trials), "--study", "pruned")
    pruned = optuna.load_study(study_name="pruned", storage=url)
    for t in unpruned.get_trials(deepcopy=False):
        pruned.enqueue_trial(t.params)
    t0 = time.monotonic()
    _cli("worker", "--study", "pruned", "--storage", url, "--no-bars", "--no-save-weights")  # the enqueued ones
    pruned = optuna.load_study(study_name="pruned", storage=url)
    result = {**_summary(pruned), "pruner": args.pruner, "wall_s": round(time.monotonic() - t0, 1)}
    kept = {t.number for t in pruned.best_trials}
    result["lost"] = [n for n in (t.number for t in unpruned.best_trials) if n not in kept]
    same = [t.number for t in pruned.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE
            and t.values[0] == unpruned.trials[t.number].values[0]]  # fmt: skip
    result["same_accuracy_as_unpruned"] = f"{len(same)} of {result['complete']}"
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
