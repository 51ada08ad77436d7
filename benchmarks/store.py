"""Store time per trial: what a study's bookkeeping costs without any training.

A synthetic trial does what a 10-epoch trial does to the store: ask (budget check + trial
creation + sampling one lr), 10 epoch reports, its record (~20 user attrs), tell.

- ``per-call``: one Optuna call per write, as the objective wrote before batching
  (``trial.report`` per epoch, ``set_user_attr`` per attr);
- ``single``: today's single-trial path (``--population 1``): reports per epoch, the record
  in two transactions (``ResilientStorage.write_trials``);
- ``population``: ``--population K``: K asks under one census, one transaction per epoch for
  all K reports, one per trial for its record.

    python benchmarks/store.py --trials 64 --population 32 --postgres \
        --json benchmarks/results/store-cpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import optuna
from results_io import write_json  # benchmarks/ is on sys.path when a script runs

from fmnist_search.search.store.internals import backend, storage_of, trial_id
from fmnist_search.search.store.locks import study_lock
from fmnist_search.search.store.storage import make_storage
from fmnist_search.search.study import PRUNERS, SAMPLERS, open_study
from fmnist_search.search.trials.coordination import BudgetedStudy, raise_target
from fmnist_search.search.trials.record import TrialRecord

EPOCHS = 10


def record() -> TrialRecord:
    history = [
        {
            "epoch": e,
            "train_loss": 0.5,
            "train_accuracy": 0.8,
            "val_accuracy": 0.85,
            "val_loss": 0.4,
            "train_time_s": 2.0,
            "samples": 50_000,
        }
        for e in range(1, EPOCHS + 1)
    ]
    return TrialRecord(
        worker="bench",
        gpu=None,
        device="cuda",
        device_name="GPU",
        torch_version="2",
        precision="bf16",
        compiled=False,
        num_params=44_426,
        population=1,
        config={"lr": 0.1, "epochs": EPOCHS},
        val_accuracy=0.85,
        train_accuracy=0.8,
        train_loss=0.5,
        throughput=1e6,
        train_time_s=20.0,
        epochs_completed=EPOCHS,
        history=history,
        test_accuracy=0.84,
        weights_artifact="x",
    )


def _study(url: str, name: str, trials: int) -> BudgetedStudy:
    storage = make_storage(url)
    _, spec = open_study(storage, name, {"model": "lenet"})
    study = BudgetedStudy(name, storage, SAMPLERS["tpe"](spec, 0), PRUNERS["none"](spec), study_lock(url, name))
    raise_target(study, trials, contextlib.nullcontext())
    return study


def per_call(study: BudgetedStudy, trials: int, k: int) -> None:
    attrs = record().attrs()
    for _ in range(trials):
        t = study.ask()
        t.suggest_float("lr", 1e-3, 0.5, log=True)
        for epoch in range(1, EPOCHS + 1):
            t.report(0.85, epoch)
        for key, value in attrs.items():
            t.set_user_attr(key, value)
        study.tell(t, 0.85)


def single(study: BudgetedStudy, trials: int, k: int) -> None:
    rec = record()
    store = backend(storage_of(study))
    for _ in range(trials):
        t = study.ask()
        t.suggest_float("lr", 1e-3, 0.5, log=True)
        store.write_trials(user_attrs={trial_id(t): rec.attrs("worker", "gpu")})
        for epoch in range(1, EPOCHS + 1):
            t.report(0.85, epoch)
        store.write_trials(user_attrs={trial_id(t): rec.attrs()})
        study.tell(t, 0.85)


def population(study: BudgetedStudy, trials: int, k: int) -> None:
    rec = record()
    store = backend(storage_of(study))
    done = 0
    while done < trials:
        asked = study.ask_many(k, lambda t: t.suggest_float("lr", 1e-3, 0.5, log=True))
        ids = [trial_id(t) for t, _ in asked]
        store.write_trials(user_attrs={i: rec.attrs("worker", "gpu") for i in ids})
        store.record_heartbeats(ids)
        for epoch in range(1, EPOCHS + 1):
            store.write_trials(intermediate=[(i, epoch, 0.85) for i in ids])
        for t, _ in asked:
            store.write_trials(user_attrs={trial_id(t): rec.attrs()})
            study.tell(t, 0.85)
        done += len(asked)


MODES = {"per-call": per_call, "single": single, "population": population}


def measure(url: str, trials: int, k: int) -> dict[str, float]:
    out = {}
    for mode, run in MODES.items():
        study = _study(url, f"store-{mode}", trials)
        t0 = time.perf_counter()
        run(study, trials, k)
        out[mode] = round((time.perf_counter() - t0) / trials * 1000, 2)  # ms per trial
        print(f"  {mode:10s} {out[mode]:7.2f} ms per trial", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=64)
    p.add_argument("--population", type=int, default=32)
    p.add_argument("--postgres", action="store_true", help="also on a throwaway PostgreSQL server (tests' helper)")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stores = {"sqlite": f"sqlite:///{tmp}/store.db"}
        if args.postgres:
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.conftest import PostgresServer

            server = PostgresServer()
            stack.callback(server.close)
            stores["postgresql"] = server.url
        for name, url in stores.items():
            print(f"{name}: store milliseconds per trial ({args.trials} trials, population {args.population})")
            results[name] = measure(url, args.trials, args.population)
    results["protocol"] = {
        "trials": args.trials,
        "population": args.population,
        "epochs": EPOCHS,
        "optuna": optuna.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
