"""Pruning that keeps the Pareto front: a two-model study (lenet, airbench; validation accuracy
and training throughput) run unpruned, then the same configurations again with pruning.

1. ``run --model lenet,airbench --objectives accuracy,throughput --pruner none``: TPE picks
   the model and its lr for ``--trials`` trials, each trained to the end.
2. The same study settings with ``--pruner P``, the same configurations enqueued in the same
   order (``enqueue_trial``): the same trial numbers, so the same seeds and batch orders.
3. Reported: epochs trained by each, both fronts side by side, and the points of the unpruned
   front the pruned study lost (a trial not completed, or completed but off its front).

Also replayed, for each pruner: the decisions the lifecycle's rule (search/trials/pruning.py) takes on
the unpruned run's recorded curves, trial by trial as a one-at-a-time run takes them; a
pruner's replay is what its real run does when training is deterministic (it is on one CPU:
step 2 checks that too).

The JSON keeps the unpruned run's curves (``trials``), so the pruners can be replayed on
them later without training (``--replay FILE``); ``--no-pruned-run`` records and replays only.

    python benchmarks/pareto.py --json benchmarks/results/pareto-cpu.json
    python benchmarks/pareto.py --replay benchmarks/results/pareto-cpu-recorded-seed0.json

How much of "the front" is noise: ``--reseed FILE`` trains the ``--top`` most accurate
configurations of each model of a recording ``--repeats`` more times (the same study settings
and splits, other trial seeds: one more study, each configuration enqueued once per repeat) and
reports, per model, each configuration's accuracies, their spread across seeds, and which
configuration wins under each seed. A front point that another seed gives to another
configuration is a near-tie no pruning rule can be sure to keep.

    python benchmarks/pareto.py --reseed benchmarks/results/pareto-cpu-recorded-seed1.json

Whether a rule keeps the front, judged against the front's own noise (docs/pareto.md):
``--judge FILE...`` replays the study's pruners (``JUDGED``; ``--rule NAME`` adds a rule of
``grid_rules()``) on each recording and says, per recording, the share of the unpruned epochs it
trained, its front's hypervolume against the unpruned front's (and in the unpruned study's
seed-to-seed sds, taken over the recordings of one setting), how far each unpruned front point is
behind beyond its configuration's spread (``--spreads``: ``--reseed`` results; 0.5 points where
unmeasured), and whether it kept the front; met: kept at most 60% of the epochs. ``--grid FILE...``
judges every rule of ``grid_rules()`` (pruner settings, MOASHA's among them, x who competes x what
is ranked) the same way; ``--csv`` keeps one line per rule.

    python benchmarks/pareto.py --grid benchmarks/results/pareto-cpu-{compare,recorded}-seed?.json \
        --spreads benchmarks/results/pareto-cpu-*reseed*.json --csv benchmarks/results/pareto-cpu-grid-hv.csv
    python benchmarks/pareto.py --reseed benchmarks/results/pareto-cpu-fresh-seed5.json --top 1 --repeats 3 \
        --json benchmarks/results/pareto-cpu-fresh-reseed-seed5.json
    python benchmarks/pareto.py --judge benchmarks/results/pareto-cpu-fresh-seed?.json \
        --spreads benchmarks/results/pareto-cpu-fresh-reseed-seed?.json
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, PercentilePruner, SuccessiveHalvingPruner
from optuna.trial import TrialState
from results_io import hardware, write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.core.config import StudySpec
from fmnist_search.engine.devices import resolve_device
from fmnist_search.search.store.internals import set_study_system_attr, storage_of, study_system_attrs, trial_id
from fmnist_search.search.study import PRUNERS
from fmnist_search.search.trials.objectives import (
    MEASURED_ATTR,
    SHARED_PREFIX,
    at_least_as_good,
    directions,
    hypervolume,
    objectives_of,
)
from fmnist_search.search.trials.pruning import ParetoHalvingPruner, competitors, population_prunes

NAME = "lenet+airbench"
GOAL = 0.6  # a rule must keep the front within this share of the unpruned epochs
REFERENCE = {"accuracy": 0.8, "throughput": 0.0, "params": 1e8, "latency": 1e3}  # the hypervolume's (docs/pareto.md)
UNMEASURED_SD = 0.005  # a configuration's seed-to-seed sd where --reseed did not measure it (accuracy)
REPLAYED = ("median", "sha", "hyperband", "moasha")
JUDGED = ("hyperband", "moasha", "sha", "median")  # --judge: the study's pruners, as `run --pruner` builds them
optuna.logging.set_verbosity(optuna.logging.ERROR)


def _cli(*args: str) -> None:
    env = {"OMP_NUM_THREADS": str(os.cpu_count() or 1), **os.environ}  # (a given OMP_NUM_THREADS wins)
    env["FMNIST_UNDER_LOAD"] = "1"  # one figure per network for the study's life: the runs compare on the same
    done = subprocess.run([sys.executable, "-m", "fmnist_search", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"fmnist-search {' '.join(args)} failed:\n{done.stderr[-2000:]}")


def _study_args(args: argparse.Namespace, pruner: str, url: str, trials: int) -> list[str]:
    preset = ["--preset", args.preset] if args.preset else []  # its recipes and settings; the flags below win
    return [
        *preset,
        "--model",
        "lenet,airbench",
        "--objectives",
        args.objectives,
        "--pruner",
        pruner,
        "--trials",
        str(trials),
        "--epochs",
        str(args.epochs),
        "--train-size",
        str(args.train_size),
        "--val-size",
        str(args.val_size),
        "--seed",
        str(args.seed),
        "--storage",
        url,
    ]


def _summary(study: optuna.Study) -> dict:
    trials = study.get_trials(deepcopy=False)
    front = sorted(t.number for t in study.best_trials)
    return {
        "epochs_trained": sum(len(t.intermediate_values) for t in trials),
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "front": [_point(t, objectives_of(study)) for t in study.get_trials(deepcopy=False) if t.number in front],
    }


def _point(t: optuna.trial.FrozenTrial, objectives: tuple[str, ...]) -> dict:
    others = {name: round(value) for name, value in zip(objectives[1:], t.values[1:], strict=True)}
    return {
        "trial": t.number,
        "model": t.params["model"],
        "lr": _lr(t.params),
        "val_accuracy": t.values[0],
        **others,
        "test_accuracy": t.user_attrs.get("test_accuracy"),
    }


def _lr(params: dict) -> float:
    """A comparison trial's lr: its model's own parameter (``lr_MODEL``, search/trials/space.py)."""
    return params[f"lr_{params['model']}"]


def _settings(saved: dict, epochs: int = 10) -> tuple[list[str], int]:
    """A recording's objectives and epochs (recordings older than those fields: the defaults then)."""
    return saved["hardware"].get("objectives", ["accuracy", "throughput"]), saved["hardware"].get("epochs", epochs)


def recorded(study: optuna.Study) -> list[dict]:
    """The unpruned run, trial by trial: what a replay needs (and the JSON keeps)."""
    return [
        {
            "trial": t.number,
            "params": t.params,
            "curve": {str(k): v for k, v in t.intermediate_values.items()},
            "measured": t.user_attrs[MEASURED_ATTR],
            "values": t.values,
        }
        for t in study.get_trials(deepcopy=False)
    ]


def replay(
    trials: list[dict],
    pruner: str | Callable[[StudySpec], BasePruner],
    epochs: int,
    objectives: list[str],
    lr_ratio: float | None = None,
    signal: str = "epoch",
) -> dict:
    """The pruned run, taken from the unpruned run's curves: trial by trial, epoch by epoch, as a
    one-at-a-time run takes its decisions (the lifecycle's rule, search/trials/pruning.py).

    Other rules, for ``--grid``: ``pruner`` a factory instead of a name; ``lr_ratio``: within a
    model, a trial competes only with trials whose lr times ``lr_ratio`` is at least its own;
    ``signal``: what is ranked at an epoch, ``SIGNALS``."""
    study = optuna.create_study(
        directions=directions(tuple(objectives)),
        pruner=(PRUNERS[pruner] if isinstance(pruner, str) else pruner)(StudySpec(epochs=epochs)),
        study_name="unpruned",
    )  # Hyperband hashes the name
    study.set_user_attr("objectives", objectives)
    store = storage_of(study)
    competes = None if lr_ratio is None else _lr_competes(trials, objectives, lr_ratio)

    def write(items: list) -> None:
        for tid, key, value in items:
            store.set_trial_system_attr(tid, key, value)

    trained, pruned = 0, []
    for old in trials:
        trial = study.ask()
        trial.set_user_attr(MEASURED_ATTR, old["measured"])
        curve = SIGNALS[signal]({int(k): v for k, v in old["curve"].items()})
        for step in sorted(curve):
            trained += 1
            store.set_trial_intermediate_value(trial_id(trial), step, curve[step])  # (report refuses 2 objectives)
            if population_prunes(
                study, step, {trial.number: {s: curve[s] for s in curve if s <= step}}, write, competes=competes
            ):
                study.tell(trial, state=TrialState.PRUNED)
                pruned.append(trial.number)
                break
        else:  # (a trial that diverged in the run fails here too, after the same epochs)
            study.tell(trial, old["values"], state=None if old["values"] else TrialState.FAIL)
    kept = {t.number for t in study.best_trials}
    front = {t["trial"] for t in _front(trials, objectives)}
    done = [
        old for old, t in zip(trials, study.get_trials(deepcopy=False), strict=True) if t.state == TrialState.COMPLETE
    ]
    return {
        "epochs_trained": trained,
        "front": sorted(kept),
        "lost": sorted(front - kept),
        "behind_points": _model_behind(trials, done),
        "pruned": pruned,
    }


def _model_behind(trials: list[dict], done: list[dict]) -> dict[str, float]:
    """Per model: how many accuracy points its best completed trial of ``done`` ends below its best recorded one."""
    return {m: round(100 * (_best(trials, m) - _best(done, m)), 2) for m in _models(trials)}


def _smoothed(curve: dict[int, float], k: int) -> dict[int, float]:
    """Each epoch's value replaced by the mean of the last ``k`` epochs' (fewer at the start)."""
    steps = sorted(curve)
    return {s: statistics.mean(curve[t] for t in steps[max(0, i + 1 - k) : i + 1]) for i, s in enumerate(steps)}


# What a rule ranks at an epoch (the replayed trial's stored curve; its final value stays the recorded one)
SIGNALS: dict[str, Callable[[dict[int, float]], dict[int, float]]] = {
    "epoch": lambda curve: curve,  # that epoch's validation accuracy (what the lifecycle reports)
    "best": lambda curve: {s: max(v for t, v in curve.items() if t <= s) for s in curve},  # the best so far
    "mean2": lambda curve: _smoothed(curve, 2),  # the mean of the last two epochs
}


def _lr_competes(trials: list[dict], objectives: list[str], ratio: float) -> Callable:
    """The front's rule (search/trials/pruning.py), and within a model only trials at an lr of at least
    the trial's own divided by ``ratio`` (under an annealed lr, the higher lrs lag until the end)."""
    front_rule = competitors(tuple(objectives))
    params = [t["params"] for t in trials]  # replayed trials are numbered in recorded order

    def competes(other: optuna.trial.FrozenTrial, trial: optuna.trial.FrozenTrial) -> bool:
        if not front_rule(other, trial):
            return False
        theirs, mine = params[other.number], params[trial.number]
        return theirs["model"] != mine["model"] or _lr(theirs) * ratio >= _lr(mine)

    return competes


def grid_rules() -> dict[str, dict]:
    """The rules ``--grid`` replays: each pruner setting x competitor set x signal."""
    pruners: dict[str, Callable[[StudySpec], BasePruner]] = {}
    for r, eta in itertools.product((1, 2, 3), (2, 3, 4)):
        pruners[f"sha from {r} eta {eta}"] = lambda spec, r=r, eta=eta: SuccessiveHalvingPruner(r, eta)
    for r, eta in itertools.product((1, 2, 3, 4), (2, 3)):
        pruners[f"hyperband from {r} eta {eta}"] = lambda spec, r=r, eta=eta: HyperbandPruner(r, spec.epochs, eta)
    for pct, w in itertools.product((25, 33, 50), (2, 3, 4)):
        pruners[f"percentile {pct} after {w}"] = lambda spec, pct=pct, w=w: PercentilePruner(pct, 5, w)
    rules = {}
    for (name, make), ratio, signal in itertools.product(pruners.items(), (None, 1.0, 2.0, 3.0), SIGNALS):
        within = "" if ratio is None else f", lr >= own/{ratio:g}"
        rules[f"{name}{within}, {signal}"] = {"pruner": make, "lr_ratio": ratio, "signal": signal}
    for r, eta, signal in itertools.product((1, 2, 3), (2, 3, 4), SIGNALS):  # every trial competes: no lr sets
        rules[f"moasha from {r} eta {eta}, {signal}"] = {
            "pruner": lambda spec, r=r, eta=eta: ParetoHalvingPruner(r, eta),
            "lr_ratio": None,
            "signal": signal,
        }
    return rules


def grid(files: list[Path], spreads: list[Path] = (), goal: float = GOAL) -> dict:
    """Every ``grid_rules`` rule replayed on every recording, judged as ``judge`` judges (docs/pareto.md);
    met: the front kept at most ``goal`` of the epochs."""
    return judge(files, grid_rules(), spreads, goal)


def judge(files: list[Path], rules: dict[str, dict], spreads: list[Path] = (), goal: float = GOAL) -> dict:
    """Each rule replayed on each recording (a rule: ``pruner`` and ``replay``'s options, or its own
    ``replay(trials, epochs, objectives)`` giving ``epochs_trained`` and ``pruned``) and judged by
    the criterion of docs/pareto.md: the front is kept when (a) its hypervolume is at most one
    seed-to-seed sd of the unpruned study's below the unpruned front's (the sd over the recordings
    of the same settings: at least two), and (b) every unpruned front point has a pruned front
    point at most that configuration's spread (``--spreads``: ``--reseed`` results; 0.5 points
    where unmeasured) less accurate and no worse on the other objectives. Hypervolumes are taken
    at ``REFERENCE`` with each model's figures replaced by their median over the recordings (a
    figure is the machine's, measured once per recording under its own load, and the same in a
    recording's pruned and unpruned runs)."""
    saved = {f.name: json.loads(f.read_text()) for f in files}
    sd_of = _configuration_spreads(spreads)
    groups: dict[tuple, list[str]] = {}
    for name, d in saved.items():
        groups.setdefault(_settings_key(d), []).append(name)
    figures, spread_hv, unpruned_hv = {}, {}, {}
    for names in groups.values():
        common = _common_figures([saved[n] for n in names])
        hvs = {n: _hypervolume(saved[n]["trials"], common, _settings(saved[n])[0]) for n in names}
        sd = statistics.stdev(hvs.values()) if len(hvs) > 1 else math.nan
        for n in names:
            figures[n], unpruned_hv[n], spread_hv[n] = common, hvs[n], sd
    rows = []
    for rule_name, rule in rules.items():
        cells = {}
        for name, d in saved.items():
            objectives, epochs = _settings(d)
            if "replay" in rule:  # a scheduler the lifecycle does not have (pareto_families.py)
                r = rule["replay"](d["trials"], epochs, objectives)
            else:
                signal = rule.get("signal", "epoch")
                r = replay(d["trials"], rule["pruner"], epochs, objectives, rule.get("lr_ratio"), signal)
            stopped = set(r["pruned"])
            done = [t for t in _finished(d["trials"]) if t["trial"] not in stopped]
            hv = _hypervolume(done, figures[name], objectives)
            behind = _points_behind(d["trials"], done, figures[name], objectives, sd_of.get(name, {}))
            share = r["epochs_trained"] / d["unpruned"]["epochs_trained"]
            cells[name] = {
                "share": round(share, 3),
                "hv_ratio": round(hv / unpruned_hv[name], 4),
                "hv_below_sd": round((unpruned_hv[name] - hv) / spread_hv[name], 2),  # in the unpruned study's sds
                "points_behind": behind,  # per unpruned front point: its nearest pruned one, beyond its spread
                "behind_points": max(_model_behind(d["trials"], done).values()),  # each model's best, as before
                "kept": bool(unpruned_hv[name] - hv <= spread_hv[name] and all(b <= 0 for b in behind.values())),
            }
        met = sum(c["kept"] and c["share"] <= goal for c in cells.values())
        kept = sum(c["kept"] for c in cells.values())
        rows.append({"rule": rule_name, "met": met, "kept": kept, "recordings": cells})
    mean_share = {row["rule"]: statistics.mean(c["share"] for c in row["recordings"].values()) for row in rows}
    rows.sort(key=lambda row: (-row["met"], -row["kept"], mean_share[row["rule"]]))
    print(
        f"{len(rows)} rules on {len(saved)} recordings: met (front kept at most {goal:.0%} of the epochs), "
        "kept (front kept); each recording's share of the epochs / hypervolume ratio / kept"
    )
    for row in rows[:25]:
        cells = " ".join(
            f"{c['share']:.0%}/{c['hv_ratio']:.3f}/{'y' if c['kept'] else 'n'}" for c in row["recordings"].values()
        )
        print(f"met {row['met']}/{len(saved)} kept {row['kept']}/{len(saved)} {row['rule']:40s} {cells}")
    hv = {n: {"unpruned": round(unpruned_hv[n], 2), "sd": round(spread_hv[n], 2)} for n in saved}
    return {"goal": goal, "reference": REFERENCE, "recordings": list(saved), "hypervolume": hv, "rules": rows}


def _settings_key(d: dict) -> tuple:
    """Recordings of one study setting (their seeds apart): what a hypervolume's spread is taken over."""
    h = d["hardware"]
    return tuple(str(h.get(k)) for k in ("preset", "objectives", "epochs", "train_size", "val_size", "trials"))


def _common_figures(recordings: list[dict]) -> dict[str, dict[str, float]]:
    """Each model's measured figures: their median over ``recordings``."""
    seen: dict[str, dict[str, list[float]]] = {}
    for d in recordings:
        for t in d["trials"]:
            for k, v in t["measured"].items():
                seen.setdefault(t["params"]["model"], {}).setdefault(k, []).append(v)
    return {m: {k: statistics.median(v) for k, v in figures.items()} for m, figures in seen.items()}


def _judged(t: dict, figures: dict) -> dict[str, float]:
    """A recorded trial's objectives as judged: its final accuracy, its model's common figures."""
    return {**figures[t["params"]["model"]], "accuracy": t["values"][0]}


def _finished(trials: list[dict]) -> list[dict]:
    """The recorded trials that completed (a diverged one failed: it has no values)."""
    return [t for t in trials if t["values"] is not None]


def _hypervolume(trials: list[dict], figures: dict, objectives: list[str]) -> float:
    return hypervolume([_judged(t, figures) for t in _finished(trials)], tuple(objectives), REFERENCE)


def _points_behind(
    trials: list[dict], done: list[dict], figures: dict, objectives: list[str], spreads: dict[int, float]
) -> dict[str, float]:
    """Each unpruned front point (trial number): how many accuracy points the best completed trial
    no worse on the other objectives ends below it, beyond the point's own seed-to-seed spread
    (0 or less: kept)."""
    others = tuple(objectives[1:])
    finished = _finished(trials)
    points = {t["trial"]: _judged(t, figures) for t in finished}
    out = {}
    judged = [{**t, "values": [points[t["trial"]][n] for n in objectives]} for t in finished]
    front = _front(judged, objectives)
    for number in (u["trial"] for u in front):
        mine = points[number]
        rivals = [points[t["trial"]]["accuracy"] for t in done if at_least_as_good(points[t["trial"]], mine, others)]
        gap = mine["accuracy"] - max(rivals, default=0.0)
        out[str(number)] = round(100 * (gap - spreads.get(number, UNMEASURED_SD)), 2)
    return out


def _configuration_spreads(files: list[Path]) -> dict[str, dict[int, float]]:
    """``--reseed`` results: recording name -> {trial: its accuracy's sd over the seeds tried}."""
    out: dict[str, dict[int, float]] = {}
    for f in files:
        d = json.loads(Path(f).read_text())
        sds = out.setdefault(d["hardware"]["recording"], {})
        for m in d["models"].values():
            for c in m["configurations"]:
                sds[c["trial"]] = statistics.stdev(c["val_accuracy"])
    return out


def _models(trials: list[dict]) -> list[str]:
    return sorted({t["params"]["model"] for t in trials})


def _best(trials: list[dict], model: str) -> float:
    """The best final validation accuracy among ``trials`` of ``model`` (0 if none completed)."""
    return max((t["values"][0] for t in _finished(trials) if t["params"]["model"] == model), default=0.0)


def winner_ranks(trials: list[dict]) -> dict:
    """Per model: its most accurate trial and that trial's rank among the model's trials at each
    epoch (1: ahead of all): a rule deciding at an epoch where the winner ranks r of n keeps it
    only by keeping at least r trials there."""
    out = {}
    for m in _models(trials):
        curves = {
            t["trial"]: [t["curve"][k] for k in sorted(t["curve"], key=int)]
            for t in trials
            if t["params"]["model"] == m
        }
        winner = max((t for t in _finished(trials) if t["params"]["model"] == m), key=lambda t: t["values"][0])["trial"]
        mine = curves[winner]
        ranks = [1 + sum(len(c) > e and c[e] > mine[e] for c in curves.values()) for e in range(len(mine))]
        out[m] = {"winner": winner, "of": len(curves), "rank_by_epoch": ranks}
    return out


def _front(trials: list[dict], objectives: list[str]) -> list[dict]:
    """The recorded trials on the front of ``trials`` (of those that completed)."""
    finished = _finished(trials)
    study = optuna.create_study(directions=directions(tuple(objectives)))
    for t in finished:
        study.add_trial(optuna.create_trial(values=t["values"]))
    return [finished[t.number] for t in study.best_trials]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-size", type=int, default=10_000)
    p.add_argument("--val-size", type=int, default=5_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--objectives", default="accuracy,throughput", help="accuracy first, then the others")
    p.add_argument("--preset", help="start from this preset (e.g. compare: each model's own recipe)")
    p.add_argument("--pruner", default="sha", help="the pruned run's pruner")
    p.add_argument("--no-pruned-run", action="store_true", help="record and replay only (no second training run)")
    p.add_argument("--replay", type=Path, help="only replay each pruner on this earlier run's JSON (no training)")
    p.add_argument("--reseed", type=Path, help="retrain this recording's best configurations under other seeds")
    p.add_argument("--top", type=int, default=3, help="--reseed: configurations per model")
    p.add_argument("--repeats", type=int, default=2, help="--reseed: trainings per configuration")
    p.add_argument("--grid", type=Path, nargs="+", help="judge every rule of grid_rules() on these recordings")
    p.add_argument("--judge", type=Path, nargs="+", help="judge the study's pruners (and --rule) on these recordings")
    p.add_argument("--rule", action="append", default=[], help="--judge: also this rule of grid_rules() (repeatable)")
    p.add_argument("--spreads", type=Path, nargs="*", default=[], help="--reseed results: configurations' spreads")
    p.add_argument("--json", type=Path)
    p.add_argument("--csv", type=Path, help="--grid/--judge: one line per rule (per recording: share, hv ratio, kept)")
    args = p.parse_args(argv)
    objectives = args.objectives.split(",")
    if objectives[0] != "accuracy":
        raise SystemExit("--objectives: accuracy first (the recordings read it as the first value)")
    if args.reseed is not None:
        return _reseeded(args)
    if args.grid is not None or args.judge is not None:
        if args.grid is not None:
            results = grid(args.grid, args.spreads)
        else:
            every = grid_rules()
            if unknown := [name for name in args.rule if name not in every]:
                raise SystemExit(f"--rule: no rule named {unknown[0]!r} in --grid's (e.g. {next(iter(every))!r})")
            rules = {name: {"pruner": name} for name in JUDGED} | {name: every[name] for name in args.rule}
            results = judge(args.judge, rules, args.spreads)
        # a replay trains nothing: the recordings carry their own machine and settings
        results["hardware"] = hardware(resolve_device("cpu"), "fp32", date=time.strftime("%Y-%m-%d"))
        write_json(args.json, results)
        if args.csv is not None:
            _grid_csv(args.csv, results)
        return results
    if args.replay is not None:  # each pruner on an earlier run's recorded curves, no training
        saved = json.loads(args.replay.read_text())
        objectives, epochs = _settings(saved, args.epochs)
        replayed = {name: replay(saved["trials"], name, epochs, objectives) for name in REPLAYED}
        _print_replays(replayed, saved["unpruned"]["epochs_trained"])
        ranks = winner_ranks(saved["trials"])
        _print_ranks(ranks)
        return {"replayed": replayed, "winner_ranks": ranks}
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{folder}/pareto.db"
        t0 = time.monotonic()
        _cli("run", *_study_args(args, "none", url, args.trials), "--study", "unpruned", "--no-save-weights")
        unpruned = optuna.load_study(study_name="unpruned", storage=url)
        results["unpruned"] = {**_summary(unpruned), "wall_s": round(time.monotonic() - t0, 1)}
        results["trials"] = recorded(unpruned)
        results["replayed"] = {name: replay(results["trials"], name, args.epochs, objectives) for name in REPLAYED}
        results["winner_ranks"] = winner_ranks(results["trials"])
        if not args.no_pruned_run:
            results["pruned"] = _pruned_run(args, url, unpruned)
    u = results["unpruned"]
    print(f"unpruned: {u['epochs_trained']} epochs, front {[x['trial'] for x in u['front']]} ({u['wall_s']:.0f} s)")
    if "pruned" in results:
        q = results["pruned"]
        print(
            f"{args.pruner:8s}: {q['epochs_trained']} epochs ({q['epochs_trained'] / u['epochs_trained']:.0%}), "
            f"front {[x['trial'] for x in q['front']]}, lost {q['lost']} ({q['wall_s']:.0f} s)"
        )
    _print_replays(results["replayed"], u["epochs_trained"])
    _print_ranks(results["winner_ranks"])
    results["hardware"] = hardware(
        resolve_device("cpu"),
        "fp32",
        trials=args.trials,
        epochs=args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        seed=args.seed,
        objectives=objectives,
        preset=args.preset,
    )
    write_json(args.json, results)
    return results


def _grid_csv(path: Path, results: dict) -> None:
    names = [Path(f).stem for f in results["recordings"]]
    header = ["rule", "met", "kept"] + [f"{n} {what}" for n in names for what in ("share", "hv ratio", "kept")]
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(header)
        for row in results["rules"]:
            cells = [v for c in row["recordings"].values() for v in (c["share"], c["hv_ratio"], int(c["kept"]))]
            out.writerow([row["rule"], row["met"], row["kept"], *cells])


def _print_replays(replayed: dict, total: int) -> None:
    for name, r in replayed.items():
        print(
            f"replayed {name:9s}: {r['epochs_trained']} epochs ({r['epochs_trained'] / total:.0%}), "
            f"lost {r['lost']}, behind by {r['behind_points']} points"
        )


def _print_ranks(ranks: dict) -> None:
    for m, r in ranks.items():
        print(f"{m:9s} winner: trial {r['winner']}, its rank of {r['of']} by epoch {r['rank_by_epoch']}")


def _pruned_run(args: argparse.Namespace, url: str, unpruned: optuna.Study) -> dict:
    """The same configurations, enqueued in the same order, into a study with ``args.pruner``."""
    t0 = time.monotonic()
    # the unpruned run's measured figures too (search/trials/context.py shares them): the fronts differ by pruning alone
    pruned = _enqueued_run(
        args, url, "pruned", args.pruner, [t.params for t in unpruned.get_trials(deepcopy=False)], figures_of=unpruned
    )
    result = {**_summary(pruned), "pruner": args.pruner, "wall_s": round(time.monotonic() - t0, 1)}
    kept = {t.number for t in pruned.best_trials}
    result["lost"] = [n for n in (t.number for t in unpruned.best_trials) if n not in kept]
    same = [
        t.number
        for t in pruned.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE and t.values == unpruned.trials[t.number].values
    ]
    result["same_accuracy_as_unpruned"] = f"{len(same)} of {result['complete']}"
    figures = {t.number: t.user_attrs.get(MEASURED_ATTR) for t in unpruned.get_trials(deepcopy=False)}
    result["same_measured_figures"] = all(
        t.user_attrs.get(MEASURED_ATTR) == figures[t.number] for t in pruned.get_trials(deepcopy=False)
    )
    return result


def _enqueued_run(
    args: argparse.Namespace,
    url: str,
    name: str,
    pruner: str,
    configurations: list[dict],
    figures_of: optuna.Study | None = None,
) -> optuna.Study:
    """A study of ``args``' settings with ``pruner`` that trains exactly ``configurations``, in order
    (with ``figures_of``'s measured figures)."""
    _cli("create", *_study_args(args, pruner, url, len(configurations)), "--study", name)
    study = optuna.load_study(study_name=name, storage=url)
    for key, value in study_system_attrs(figures_of).items() if figures_of is not None else ():
        if key.startswith(SHARED_PREFIX):  # the same figures, taken as final: the studies must compare alike
            set_study_system_attr(study, key, {**value, "load": 0.0} if isinstance(value, dict) else value)
    for params in configurations:
        study.enqueue_trial(params)
    _cli("worker", "--study", name, "--storage", url, "--no-bars", "--no-save-weights")
    return optuna.load_study(study_name=name, storage=url)


def _reseeded(args: argparse.Namespace) -> dict:
    """The recording's ``--top`` configurations per model, trained ``--repeats`` more times."""
    saved = json.loads(args.reseed.read_text())
    settings = saved["hardware"]
    for key in ("epochs", "train_size", "val_size"):
        setattr(args, key, settings.get(key, getattr(args, key)))
    args.seed = settings.get("seed", args.seed)  # (older recordings: give --seed)
    args.objectives = ",".join(_settings(saved)[0])
    args.preset = settings.get("preset")
    models = sorted({t["params"]["model"] for t in saved["trials"]})
    ranked = sorted(_finished(saved["trials"]), key=lambda t: -t["values"][0])
    top = {m: [t for t in ranked if t["params"]["model"] == m][: args.top] for m in models}
    chosen = [t for m in models for t in top[m]]
    # a trial's seed is the study's plus its number: no configuration may get its recorded number again
    while any(t["trial"] == r * len(chosen) + j for r in range(args.repeats) for j, t in enumerate(chosen)):
        chosen = chosen[1:] + chosen[:1]
    with tempfile.TemporaryDirectory() as folder:
        configurations = [t["params"] for _ in range(args.repeats) for t in chosen]
        again = _enqueued_run(args, f"sqlite:///{folder}/reseed.db", "reseed", "none", configurations).trials
    runs = {t["trial"]: [t["values"][0]] for t in chosen}
    for i, t in enumerate(again):  # enqueued in order: repeat r, configuration j
        runs[chosen[i % len(chosen)]["trial"]].append(t.values[0])
    result: dict = {"top": args.top, "repeats": args.repeats, "models": {}}
    for m in models:
        numbers = [t["trial"] for t in top[m]]
        winners = [max(numbers, key=lambda n, r=r: runs[n][r]) for r in range(args.repeats + 1)]
        spread = [statistics.stdev(runs[n]) for n in numbers]
        result["models"][m] = {
            "configurations": [
                {"trial": t["trial"], "lr": _lr(t["params"]), "val_accuracy": runs[t["trial"]]} for t in top[m]
            ],
            "winner_by_seed": winners,  # the recording's first, then each repeat's
            "sd_points": round(100 * statistics.mean(spread), 2),  # a configuration's spread across seeds
        }
        print(
            f"{m:9s} winners by seed {winners}; a configuration's seed-to-seed sd "
            f"{result['models'][m]['sd_points']:.2f} points"
        )
        for c in result["models"][m]["configurations"]:
            accuracies = " ".join(f"{100 * v:.2f}" for v in c["val_accuracy"])
            print(f"   trial {c['trial']:2d} lr {c['lr']:.4f}: {accuracies}")
    result["hardware"] = hardware(
        resolve_device("cpu"),
        "fp32",
        epochs=args.epochs,
        train_size=args.train_size,
        val_size=args.val_size,
        seed=args.seed,
        recording=args.reseed.name,
        objectives=args.objectives.split(","),
        preset=args.preset,
    )
    write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
