"""Two more families of pruning rules for the comparison study, judged as ``pareto.py --judge``
judges (docs/pareto.md) on the same recordings, to see whether any rule keeps the front more
often than the preset's Hyperband at no more epochs:

- **Halving with a noise margin**: successive halving (Optuna's rule: in the top 1/eta of the
  rung among the trials that could dominate it) that also lets a trial go on when it is within
  ``margin`` accuracy points of the promotion threshold: near-ties at a rung are noise.
- **Promotion (pause and resume)**: asynchronous successive halving as ASHA describes it (Li et
  al. 2020; Syne Tune's ``type="promotion"``): a trial pauses at each rung and goes on only once
  it is in the top 1/eta of that rung (so the first trials at a rung wait instead of always going
  on); a free worker promotes the highest-rung promotable trial, else starts the next one;
  paused trials resume from their checkpoints. Trials still paused at the end are stopped.

The lifecycle has neither rule, so both are simulated here, on each recording's curves, trial by
trial as one worker takes them (the first family, with no margin, is Optuna's successive halving
and decides exactly as ``pareto.replay`` does: tested). Each ``--recordings`` set is judged apart
(its own hypervolume spread), and a rule's figures are summed over the sets.

    python benchmarks/pareto_families.py \\
        --recordings benchmarks/results/pareto-cpu-{compare,recorded}-seed?.json \\
        --recordings benchmarks/results/pareto-cpu-fresh-seed?.json \\
        --spreads benchmarks/results/pareto-cpu-*reseed*.json --csv benchmarks/results/pareto-cpu-families.csv
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import statistics
import sys
import time
from pathlib import Path

import pareto  # benchmarks/ is on sys.path when a script runs
from results_io import hardware, write_json

from fmnist_search.engine.devices import resolve_device
from fmnist_search.search.trials.objectives import at_least_as_good
from fmnist_search.search.trials.pruning import promotable

MARGINS = (0.0, 0.0025, 0.005, 0.01)  # accuracy (0.005: half a point, the criterion's unmeasured spread)


def halving(
    trials: list[dict],
    epochs: int,
    objectives: list[str],
    min_resource: int,
    eta: int,
    signal: str = "epoch",
    margin: float = 0.0,
    pause: bool = False,
) -> dict:
    """Successive halving on recorded curves (module docstring): stopping (``pause=False``, Optuna's
    rule) or promotion (``pause=True``, ASHA's); ``margin``: how far below the rung's promotion
    threshold (accuracy) a trial may be and still go on. Returns what ``pareto.judge`` reads:
    the epochs trained, and the trials that did not complete (stopped, or paused at the end)."""
    others = tuple(objectives[1:])
    curves = [pareto.SIGNALS[signal]({int(k): v for k, v in t["curve"].items()}) for t in trials]
    rungs = [min_resource * eta**k for k in range(epochs) if min_resource * eta**k <= epochs]
    at_rung: list[dict[int, float]] = [{} for _ in rungs]  # rung -> {trial: its value there}

    def goes_on(n: int, k: int) -> bool:
        mine = trials[n]["measured"]
        pool = [v for o, v in at_rung[k].items() if o == n or at_least_as_good(trials[o]["measured"], mine, others)]
        if pause and len(pool) < eta:  # ASHA: none goes on from a rung until eta have reached it
            return False
        return promotable(at_rung[k][n] + margin, pool, eta, maximize=True)  # the lifecycle's rule

    trained = [0] * len(trials)
    if not pause:
        stopped = set()
        for n, curve in enumerate(curves):
            k = 0
            for step in sorted(curve):
                trained[n] = step
                if k < len(rungs) and step >= rungs[k]:
                    at_rung[k][n] = curve[step]
                    k += 1
                    if not goes_on(n, k - 1):
                        stopped.add(n)
                        break
        return {"epochs_trained": sum(trained), "pruned": sorted(stopped)}
    stops = [r for r in rungs if r < epochs] + [epochs]  # a paused trial waits at each rung below the end
    level = [-1] * len(trials)  # the rung a trial waits at (-1: not started)
    waiting, done = set(), set()

    def train_to(n: int, k: int) -> None:
        target = stops[k]
        last = max(curves[n])
        trained[n] = min(target, last)
        if last < target or k == len(stops) - 1:  # diverged before the rung (failed in the recording), or done
            waiting.discard(n)
            if last >= target:
                done.add(n)
        else:
            level[n] = k
            at_rung[k][n] = curves[n][target]
            waiting.add(n)

    started = 0
    while True:
        ready = [n for n in sorted(waiting, key=lambda n: (-level[n], n)) if goes_on(n, level[n])]
        if ready:
            train_to(ready[0], level[ready[0]] + 1)
        elif started < len(trials):
            train_to(started, 0)
            started += 1
        else:
            break
    return {"epochs_trained": sum(trained), "pruned": sorted(set(range(len(trials))) - done)}


def family_rules() -> dict[str, dict]:
    """Every rule of both families, as ``pareto.judge`` takes them (a rule with its own replay)."""
    rules = {}
    for pause, r, eta, margin, signal in itertools.product(
        (False, True), (1, 2, 3), (2, 3, 4), MARGINS, pareto.SIGNALS
    ):
        kind = "promotion" if pause else "halving"
        name = f"{kind} from {r} eta {eta}, margin {100 * margin:g}, {signal}"
        rules[name] = {
            "replay": functools.partial(halving, min_resource=r, eta=eta, signal=signal, margin=margin, pause=pause)
        }
    return rules


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recordings", type=Path, nargs="+", action="append", required=True, help="one set (repeatable)")
    p.add_argument("--spreads", type=Path, nargs="*", default=[], help="--reseed results: configurations' spreads")
    p.add_argument("--rule", action="append", default=[], help="also this rule of pareto.py's grid (repeatable)")
    p.add_argument("--only", action="append", default=[], help="of the families, only this rule (repeatable)")
    p.add_argument("--csv", type=Path, help="one line per rule: met, kept, mean share of the epochs, per set")
    p.add_argument("--json", type=Path, help="each set's judgment, recording by recording (as pareto.py --judge's)")
    args = p.parse_args(argv)
    every, ours = pareto.grid_rules(), family_rules()
    for flag, names, known in (("--only", args.only, ours), ("--rule", args.rule, every)):
        if unknown := [name for name in names if name not in known]:
            raise SystemExit(f"{flag}: no rule named {unknown[0]!r} (e.g. {next(iter(known))!r})")
    rules = {name: ours[name] for name in args.only or ours} | {name: every[name] for name in args.rule}
    judged = [pareto.judge(files, rules, args.spreads) for files in args.recordings]
    rows = []
    for name in rules:
        per_set = [next(row for row in j["rules"] if row["rule"] == name) for j in judged]
        shares = [c["share"] for row in per_set for c in row["recordings"].values()]
        rows.append(
            {
                "rule": name,
                "met": sum(row["met"] for row in per_set),
                "kept": sum(row["kept"] for row in per_set),
                "share": round(statistics.mean(shares), 3),
                **{f"set {i} met/kept": f"{row['met']}/{row['kept']}" for i, row in enumerate(per_set)},
            }
        )
    rows.sort(key=lambda row: (-row["met"], -row["kept"], row["share"]))
    total = sum(len(files) for files in args.recordings)
    print(f"{len(rows)} rules on {total} recordings in {len(judged)} sets (met: front kept at most {pareto.GOAL:.0%})")
    for row in rows[:20]:
        print(f"met {row['met']:2d} kept {row['kept']:2d} share {row['share']:.0%}  {row['rule']}")
    if args.json is not None:
        machine = hardware(resolve_device("cpu"), "fp32", date=time.strftime("%Y-%m-%d"))
        write_json(args.json, {"sets": judged, "hardware": machine})
    if args.csv is not None:
        with args.csv.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=list(rows[0]))
            out.writeheader()
            out.writerows(rows)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
