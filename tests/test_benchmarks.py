"""The benchmark scripts run end to end (tiny sizes); their figures are recorded, never asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_throughput_script_shapes_its_json(tmp_path, real_data):
    import throughput

    out = tmp_path / "t.json"
    args = ["--models", "lenet", "--device", "cpu", "--batches", "3", "--reps", "1", "--json", str(out)]
    results = throughput.main(args)
    saved = json.loads(out.read_text())
    assert saved == results
    assert set(saved["lenet"]) == {"baseline", "ours", "ratio", "reference", "ours_vs_reference"}
    assert saved["lenet"]["baseline"] > 0 and saved["lenet"]["ours"] > 0 and saved["lenet"]["reference"] > 0
    assert saved["hardware"]["device"] == "cpu"


def test_search_efficiency_script(tmp_path, real_data):
    import search_efficiency

    results = search_efficiency.main(
        ["--pruners", "median", "--trials", "2", "--epochs", "1", "--train-size", "512", "--val-size", "500"]
    )
    assert results["none"]["epochs"] == 2  # 2 trials x 1 epoch, nothing to prune
    assert "epochs_ratio" in results["median"]


def test_population_script_reports_the_k_sweep(tmp_path, real_data):
    import population

    out = tmp_path / "p.json"
    args = ["--models", "lenet", "--device", "cpu", "--sizes", "1,2", "--train-size", "512", "--reps", "1"]
    results = population.main([*args, "--json", str(out)])
    assert json.loads(out.read_text()) == results
    assert set(results["lenet"]) == {"1", "2", "sequential", "speedup"}  # the shape, plus ratios
    assert all(results["lenet"][k] > 0 for k in ("1", "2", "sequential"))


def test_store_script_measures_each_mode(tmp_path):
    import store

    results = store.main(["--trials", "4", "--population", "2"])
    assert set(results["sqlite"]) == {"per-call", "single", "population"}
    assert all(v > 0 for v in results["sqlite"].values())


@pytest.mark.slow
def test_gpu_check_flow_on_cpu(tmp_path, real_data):
    """The GPU script's whole flow, with SMOKE=1 on the CPU: syntax, arguments, outputs."""
    env = {**os.environ, "SMOKE": "1", "PY": sys.executable}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    log = (tmp_path / "gpu_check.log").read_text()
    assert "== done" in log
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert len(steps) == 12 and all(line.split()[-2] == "ok" for line in steps), steps  # every step ran and passed
    assert steps[0].startswith("1 the report's table") and steps[1].startswith("2 the main job")  # first things first
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("| model | lr |") and report.count("| lenet |") == 3  # the seed-report grid's rows
    assert len((tmp_path / "main-job.csv").read_text().splitlines()) == 4  # header + 3 trials
    assert "test_accuracy=" in log.split("3 accuracy: train --preset airbench-tuned")[1]
    throughput = json.loads((tmp_path / "throughput.json").read_text())
    assert throughput["lenet"]["ratio"] > 0 and throughput["airbench"]["ratio"] > 0  # both steps in one file
    assert throughput["graphs lenet"]["ours"] > 0  # --cuda-graphs (eager on the CPU), beside the others
    assert {"lenet", "graphs lenet", "hardware"} <= set(json.loads((tmp_path / "population.json").read_text()))
    assert "first training step" in json.loads((tmp_path / "startup.json").read_text())["stages_s"]
    assert (tmp_path / "compare.md").read_text().startswith("Pareto front of compare: accuracy (max), throughput")
    assert "| ema0.5 |" in log.split("7 the rung figure")[1]  # the fidelity table, in the log
    # A device run returns at most 8 plain files from its output folder: no databases, no weights.
    assert all(p.is_file() for p in tmp_path.iterdir()) and len(list(tmp_path.iterdir())) <= 8


def test_gpu_check_skips_steps_once_its_budget_is_spent(tmp_path):
    env = {**os.environ, "SMOKE": "1", "PY": sys.executable, "BUDGET_S": "0"}
    proc = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    steps = (tmp_path / "steps.txt").read_text().splitlines()
    assert len(steps) == 12 and all(" skipped " in line for line in steps)


def test_distill_script_compares_three_ways(real_data):
    import distill

    results = distill.main(["--device", "cpu", "--train-size", "512", "--reps", "1"])
    assert set(results["epoch_time_vs_undistilled"]) == {"teacher per batch", "teacher looked up"}
    assert results["undistilled"] > 0 and results["table_s"] > 0 and results["table_load_s"] > 0


def test_a_population_step_makes_as_many_operations_whatever_its_size():
    """On a GPU a small model's step is bound by its operations (launches), not arithmetic:
    a population of 8 must make as many per step as a population of 2 (no per-model or
    per-layer loops in the step), and about as many kernel launches as one model's step
    (the same flat SGD and loss; the fused forward adds a few reshapes)."""
    import step_ops

    counts = step_ops.main(["--sizes", "2,8", "--images", "256"])["lenet"]
    assert counts["population 8"] == counts["population 2"]
    assert 0 < counts["single"]["kernel_ops"] <= counts["population 8"]["kernel_ops"]
    assert counts["population 8"]["kernel_ops"] < 1.2 * counts["single"]["kernel_ops"]


def test_checkpoints_script_measures_the_cost_of_one(tmp_path, real_data):
    import checkpoints

    out = tmp_path / "c.json"
    results = checkpoints.main(["--models", "lenet:1024", "--epochs", "2", "--device", "cpu", "--json", str(out)])
    lenet = results["lenet"]
    assert lenet["checkpoint_bytes"] > 2 * 44_426 * 4  # weights and momentum, float32
    assert lenet["checkpoint_ms"] > 0 and 0 < lenet["share_of_epoch"] < 1
    assert json.loads(out.read_text()) == results


def test_startup_script_times_every_stage(tmp_path, real_data):
    import startup

    results = startup.main(["--reps", "1", "--json", str(tmp_path / "s.json")])
    stages = results["stages_s"]
    assert list(stages)[:2] == ["import torch", "import optuna + sqlalchemy"] and "first training step" in stages
    assert results["torchvision_imported"] == [False]  # LeNet's worker path: the data's parse is cached (real_data)
    assert all(v >= 0 for v in stages.values()) and results["total_s"] == pytest.approx(sum(stages.values()), abs=0.01)


@pytest.mark.slow
def test_pareto_script_runs_both_studies_and_replays_each_pruner(tmp_path, real_data):
    import pareto

    out = tmp_path / "p.json"
    # throughput, a timed figure: the pruned run reads the unpruned run's (shared through the study),
    # so the two fronts differ by the pruning alone, not by the machine's load
    results = pareto.main(
        [
            "--trials",
            "3",
            "--epochs",
            "2",
            "--train-size",
            "512",
            "--val-size",
            "256",
            "--preset",
            "compare",
            "--json",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == results
    assert results["unpruned"]["epochs_trained"] == 6 and results["unpruned"]["pruned"] == 0  # 3 trials x 2
    assert results["pruned"]["epochs_trained"] <= 6 and results["pruned"]["pruner"] == "sha"
    assert set(results["replayed"]) == {"median", "sha", "hyperband", "moasha"}
    # a replay is the real run's decisions when training is deterministic, as it is on one CPU
    assert results["replayed"]["sha"]["epochs_trained"] == results["pruned"]["epochs_trained"]
    assert results["replayed"]["sha"]["lost"] == results["pruned"]["lost"]
    assert results["pruned"]["same_measured_figures"]
    assert pareto.main(["--replay", str(out)])["replayed"] == results["replayed"]  # from the recorded curves alone
    for model, r in results["winner_ranks"].items():  # the most accurate trial of each model ranks first at the end
        assert r["rank_by_epoch"][-1] == 1 and len(r["rank_by_epoch"]) == 2 and 1 <= max(r["rank_by_epoch"]) <= r["of"]
        assert results["replayed"]["median"]["behind_points"][model] >= 0
    # each model's best configuration trained once more, under another seed, on the same splits
    again = pareto.main(["--reseed", str(out), "--top", "1", "--repeats", "1"])
    recorded = {t["trial"]: t for t in results["trials"]}
    models = {t["params"]["model"] for t in results["trials"]}
    assert set(again["models"]) == models and again["hardware"]["seed"] == 0
    assert again["hardware"]["objectives"] == ["accuracy", "throughput"]  # the recording's study settings
    assert results["hardware"]["preset"] == again["hardware"]["preset"] == "compare"  # each model's own recipe
    assert results["hardware"]["objectives"] == ["accuracy", "throughput"]
    assert "throughput" in results["unpruned"]["front"][0]
    for model, r in again["models"].items():
        (config,) = r["configurations"]
        assert recorded[config["trial"]]["params"]["model"] == model
        assert config["val_accuracy"][0] == recorded[config["trial"]]["values"][0]  # the recording's, then the repeat's
        assert len(config["val_accuracy"]) == 2 and 0 < config["val_accuracy"][1] <= 1
        assert r["winner_by_seed"] == [config["trial"]] * 2


def test_pareto_grid_replays_each_rule_and_its_named_pruners_match_the_studys(tmp_path):
    import pareto

    recording = ROOT / "benchmarks/results/pareto-cpu-compare-seed0.json"
    saved = json.loads(recording.read_text())
    rules = pareto.grid_rules()
    assert len(rules) == 339  # 26 pruner settings x 4 competitor sets x 3 signals, 9 MOASHA settings x 3 signals
    # the grid's settings of the study's own pruners (search/study.py) decide as those pruners do
    for name, rule in {
        "sha": "sha from 1 eta 4, epoch",
        "hyperband": "hyperband from 1 eta 3, epoch",
        "moasha": "moasha from 1 eta 3, epoch",
    }.items():
        ours = pareto.replay(saved["trials"], name, 10, ["accuracy", "throughput"])
        theirs = pareto.replay(saved["trials"], rules[rule]["pruner"], 10, ["accuracy", "throughput"])
        assert ours == theirs
    # within a model, a trial competes only with higher lrs: the fastest model's highest-lr trial competes with none
    lenet = max((t for t in saved["trials"] if t["params"]["model"] == "lenet"), key=lambda t: t["params"]["lr_lenet"])
    front_rule = pareto.replay(saved["trials"], "sha", 10, ["accuracy", "throughput"])
    assert lenet["trial"] in front_rule["pruned"]  # (lr 0.37: it ends at 59.5%)
    for ratio in (1.0, 2.0):
        r = pareto.replay(saved["trials"], "sha", 10, ["accuracy", "throughput"], lr_ratio=ratio)
        assert lenet["trial"] not in r["pruned"] and r["epochs_trained"] > front_rule["epochs_trained"]
    assert pareto.SIGNALS["mean2"]({1: 0.2, 2: 0.4, 3: 0.9}) == pytest.approx({1: 0.2, 2: 0.3, 3: 0.65})
    assert pareto.SIGNALS["best"]({1: 0.5, 2: 0.3}) == {1: 0.5, 2: 0.5}


def test_pareto_judge_keeps_a_front_within_its_own_noise(tmp_path):
    """The criterion of docs/pareto.md on two recordings of one setting: hypervolume within the
    unpruned study's seed-to-seed sd, every front point within its configuration's spread."""
    import pareto

    files = [ROOT / f"benchmarks/results/pareto-cpu-compare-seed{s}.json" for s in (0, 1)]
    spreads = ROOT / "benchmarks/results/pareto-cpu-compare-reseed-seed0.json"
    args = ["--judge", *map(str, files), "--spreads", str(spreads), "--json", str(tmp_path / "j.json")]
    results = pareto.main([*args, "--rule", "sha from 1 eta 2, mean2", "--csv", str(tmp_path / "j.csv")])
    rows = {row["rule"]: row for row in results["rules"]}
    assert set(rows) == {*pareto.JUDGED, "sha from 1 eta 2, mean2"}
    hv = results["hypervolume"]
    assert hv[files[0].name]["sd"] == hv[files[1].name]["sd"] > 0  # one spread for the setting's recordings
    for row in rows.values():
        for c in row["recordings"].values():
            within = c["hv_below_sd"] <= 1 and all(b <= 0 for b in c["points_behind"].values())
            assert c["kept"] == within and 0 < c["share"] <= 1 and 0 <= c["hv_ratio"] <= 1.0001
        assert row["met"] == sum(c["kept"] and c["share"] <= pareto.GOAL for c in row["recordings"].values())
    # the preset's pruner keeps both fronts at 60% and 55% of the epochs; Syne Tune's MOASHA drops lenet's
    # point on seed 1 (a model's trials dominate each other: its best is the only one on the first front)
    assert rows["hyperband"]["met"] == 2
    moasha = rows["moasha"]["recordings"][files[1].name]
    assert not moasha["kept"] and moasha["hv_ratio"] < 0.5
    # a configuration's measured spread counts (trial 1 of seed 0: 2.69 points over three seeds)
    assert rows["hyperband"]["recordings"][files[0].name]["points_behind"]["1"] == pytest.approx(-2.69)
    lines = (tmp_path / "j.csv").read_text().splitlines()
    assert len(lines) == 1 + len(rows) and lines[0].startswith("rule,met,kept,")
    # a trial that diverged in the run (failed: no values) fails in the replay too, after the same epochs
    saved = json.loads(files[0].read_text())
    lenet = [t for t in saved["trials"] if t["params"]["model"] == "lenet"]
    best = max(lenet, key=lambda t: t["values"][0])
    best["values"], best["curve"] = None, {"1": 0.35, "2": 0.1}
    diverged = tmp_path / files[0].name  # (the same name: the same setting as seed 1's)
    diverged.write_text(json.dumps(saved))
    r = pareto.replay(saved["trials"], "none", 10, ["accuracy", "throughput"])
    assert r["epochs_trained"] == saved["unpruned"]["epochs_trained"] - 8 and best["trial"] not in r["front"]
    judged = pareto.judge([diverged, files[1]], {"hyperband": {"pruner": "hyperband"}})
    assert judged["hypervolume"][files[0].name]["unpruned"] < hv[files[0].name]["unpruned"]  # its point gone


def test_pareto_families_stop_as_optunas_halving_and_promote_as_asha(tmp_path):
    """The simulated families (benchmarks/pareto_families.py): with no margin and no pausing, the
    lifecycle's successive halving on a recording; a margin keeps near-ties; promotion pauses the
    first trials at a rung until eta have reached it."""
    import pareto
    import pareto_families as families
    from optuna.pruners import SuccessiveHalvingPruner

    recording = ROOT / "benchmarks/results/pareto-cpu-compare-seed0.json"
    saved = json.loads(recording.read_text())
    objectives = ["accuracy", "throughput"]
    for r, eta, signal in ((1, 3, "epoch"), (2, 2, "mean2"), (1, 4, "best")):
        ours = families.halving(saved["trials"], 10, objectives, r, eta, signal)
        optunas = pareto.replay(
            saved["trials"], lambda spec, r=r, eta=eta: SuccessiveHalvingPruner(r, eta), 10, objectives, signal=signal
        )
        assert (ours["epochs_trained"], ours["pruned"]) == (optunas["epochs_trained"], optunas["pruned"])
    plain = families.halving(saved["trials"], 10, objectives, 1, 3)
    lenient = families.halving(saved["trials"], 10, objectives, 1, 3, margin=0.01)
    assert set(lenient["pruned"]) < set(plain["pruned"]) and lenient["epochs_trained"] > plain["epochs_trained"]

    # three trials of one model (the same throughput), rungs at 1 and 3 of 4 epochs, eta 3
    def trial(n: int, curve: list[float]) -> dict:
        return {
            "trial": n,
            "params": {"model": "lenet", "lr_lenet": 0.1},
            "curve": {str(e + 1): v for e, v in enumerate(curve)},
            "measured": {"throughput": 1000.0},
            "values": [curve[-1], 1000.0],
        }

    trials = [trial(0, [0.5, 0.6, 0.7, 0.8]), trial(1, [0.6, 0.7, 0.8, 0.9]), trial(2, [0.4, 0.5, 0.6, 0.7])]
    stopping = families.halving(trials, 4, objectives, 1, 3)
    assert stopping["pruned"] == [2] and stopping["epochs_trained"] == 4 + 4 + 1  # the first at a rung goes on
    promotion = families.halving(trials, 4, objectives, 1, 3, pause=True)
    # all three wait at epoch 1 until the third arrives; then only the best of three (trial 1) goes on, and
    # at epoch 3 it is alone, so it waits there: none completes, 1 + 3 + 1 epochs
    assert promotion == {"epochs_trained": 5, "pruned": [0, 1, 2]}
    rules = families.family_rules()
    assert len(rules) == 2 * 3 * 3 * len(families.MARGINS) * len(pareto.SIGNALS)
    files = [ROOT / f"benchmarks/results/pareto-cpu-compare-seed{s}.json" for s in (0, 1)]
    out = tmp_path / "f.csv"
    rows = families.main(
        ["--recordings", *map(str, files), "--rule", "hyperband from 1 eta 3, epoch", "--csv", str(out)]
    )
    hyperband = next(row for row in rows if row["rule"] == "hyperband from 1 eta 3, epoch")
    assert hyperband["met"] == 2  # as pareto.py --judge finds it on these two recordings
    assert len(out.read_text().splitlines()) == 1 + len(rules) + 1
    pick = "promotion from 2 eta 3, margin 0.5, epoch"
    rows = families.main(["--recordings", *map(str, files), "--only", pick, "--json", str(tmp_path / "f.json")])
    (judged,) = json.loads((tmp_path / "f.json").read_text())["sets"]
    assert [row["rule"] for row in rows] == [row["rule"] for row in judged["rules"]] == [pick]
    assert set(judged["rules"][0]["recordings"]) == {f.name for f in files}
    with pytest.raises(SystemExit, match="--only: no rule named 'promotion from 9'"):
        families.main(["--recordings", str(files[0]), "--only", "promotion from 9"])


def test_the_gpu_scripts_parse():
    """bash -n on the device scripts (seconds): the whole flow runs under the slow marker."""
    for script in ("gpu_check.sh", "gpu_prepare.sh"):
        proc = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / script)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_fidelity_records_the_raw_weights_beside_the_averages_whatever_the_recipe_judges(tmp_path, real_data):
    """airbench-tuned's recipe judges an average (ema 0.5); the recording's ``raw`` figure is
    still the raw weights' (a recording once read the judged average as raw), the averages
    candidates beside it."""
    import fidelity

    args = ["--models", "airbench", "--seeds", "0", "--trials", "2", "--epochs", "2", "--train-size", "512"]
    args += ["--val-size", "500", "--no-tta", "--halflives", "0.5", "--out", str(tmp_path)]
    assert fidelity.main(args) == 0
    (path,) = tmp_path.glob("fidelity-*-airbench-seed0.json")
    for trial in json.loads(path.read_text())["trials"]:
        assert set(trial["curves"]) == {"raw", "ema0.5"}
        assert trial["curves"]["raw"] != trial["curves"]["ema0.5"], trial["curves"]
