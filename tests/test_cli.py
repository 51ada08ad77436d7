"""The CLI through Typer's runner (and real subprocesses for Ctrl-C and the dashboard)."""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import os
import re
import signal
import socket
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from fmnist_search.cli import app
from fmnist_search.engine import data
from tests.conftest import Lines, cli_process, free_port, get_json, serving_dashboard

runner = CliRunner()
TINY = ["--epochs", "2", "--train-size", "4096", "--val-size", "2000", "--batch-size", "64"]


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture(scope="module")
def smoke_db(tmp_path_factory, real_data) -> str:
    """The issue's acceptance run: 3 LeNet trials, 2 epochs, 4096 training images, on the real data."""
    url = f"sqlite:///{tmp_path_factory.mktemp('smoke')}/fmnist.db"
    lr = ["--lr-min", "0.02", "--lr-max", "0.2"]
    result = invoke("run", "--model", "lenet", "--trials", "3", "--storage", url, *lr, *TINY)
    assert result.exit_code == 0, result.output
    return url


def test_smoke_run_stores_sane_trials(smoke_db):
    study = optuna.load_study(study_name="lenet", storage=smoke_db)
    assert len(study.trials) == 3
    for t in study.trials:
        assert t.state in (TrialState.COMPLETE, TrialState.PRUNED)
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert done
    for t in done:
        a = t.user_attrs
        assert a["device"] == "cpu" and a["epochs_completed"] == 2 and a["num_params"] == 44_426
        # 128 SGD steps on real data: far above chance (0.1), and test tracks validation.
        assert 0.4 < a["val_accuracy"] <= 1 and abs(a["test_accuracy"] - a["val_accuracy"]) < 0.1
        assert a["throughput"] > 0 and a["train_time_s"] > 0
    assert study.user_attrs["train_size"] == 4096 and study.user_attrs["epochs"] == 2


def test_export_csv_best_first(smoke_db, tmp_path):
    out = tmp_path / "best.csv"
    result = invoke("export", "--study", "lenet", "--storage", smoke_db, "--top", "5", "--output", str(out))
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open()))
    assert rows
    assert set(rows[0]) >= {"trial", "state", "val_accuracy", "test_accuracy", "throughput", "duration_s", "lr"}
    vals = [float(r["val_accuracy"]) for r in rows]
    assert vals == sorted(vals, reverse=True)
    assert all(r["state"] == "COMPLETE" for r in rows)


def test_export_to_stdout_with_all_states(smoke_db):
    result = invoke("export", "--study", "lenet", "--storage", smoke_db, "--all")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 3


def test_studies_and_show(smoke_db):
    study = optuna.load_study(study_name="lenet", storage=smoke_db)
    best = study.best_trial
    counts = {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    result = invoke("studies", "--storage", smoke_db)
    assert result.exit_code == 0
    row = next(line for line in result.stdout.splitlines() if "lenet" in line)
    cells = [c.strip() for c in row.strip("│| ").split("│")]
    states = ", ".join(f"{n} {state.lower()}" for state, n in counts.items() if n)  # the states it has
    assert cells[:3] == ["lenet", "lenet", states] and "complete" in states
    assert cells[3] == f"{best.value:.4f}" and cells[4] == f"{best.user_attrs['test_accuracy']:.4f}"
    result = invoke("show", "--study", "lenet", "--storage", smoke_db)
    assert result.exit_code == 0
    assert f"best trial {best.number}" in result.stdout
    table = {}
    for line in result.stdout.splitlines():
        parts = [c.strip() for c in line.strip("│| ").split("│")]
        if len(parts) == 2:
            table[parts[0]] = parts[1]
    assert table["val_accuracy"] == f"{best.value:.4f}"
    assert table["lr"] == f"{best.params['lr']:.6g}"
    assert table["test_accuracy"] == f"{best.user_attrs['test_accuracy']:.4f}" and table["device"] == "cpu"


def test_resume_adds_trials_and_refuses_conflicts(smoke_db):
    result = invoke("run", "--study", "lenet", "--trials", "1", "--storage", smoke_db)
    assert result.exit_code == 0, result.output
    assert len(optuna.load_study(study_name="lenet", storage=smoke_db).trials) == 4
    result = invoke("run", "--model", "lenet", "--trials", "1", "--storage", smoke_db, "--epochs", "5")
    assert result.exit_code == 2
    assert "created with epochs=2" in result.output and "Traceback" not in result.output


def test_data_command_reports_location(real_data):
    result = invoke("data")
    assert result.exit_code == 0, result.output
    assert "verified" in result.stdout and str(real_data.source) in result.stdout


def _error_line(result) -> str:
    assert "Traceback" not in result.output
    return result.output.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["run", "--model", "vgg"],
            "unknown model 'vgg'; choose one or more (comma-separated, distinct) of: "
            "airbench, lenet, resnet18, resnet34",
        ),
        (["run", "--model", "lenet", "--trials", "0"], "'--trials': Input should be greater than or equal to 1"),
        (["run", "--model", "lenet", "--trials", "many"], "'--trials': Input should be a valid integer"),
        (["run", "--model", "lenet", "--lr-min", "0.5", "--lr-max", "0.1"], "lr_min (0.5) must be below lr_max"),
        (["run", "--model", "lenet", "--lr-min", "-0.1"], "lr_min must be a number > 0, got -0.1"),
        (["run", "--model", "lenet", "--sampler", "bayes"], "unknown sampler 'bayes'; choose one of: cmaes, gp, grid"),
        (["run", "--model", "lenet", "--pruner", "magic"], "unknown pruner 'magic'"),
        (["run", "--model", "lenet", "--device", "cuda"], "asked for a CUDA GPU, but none is visible"),
        (
            ["run", "--model", "lenet", "--device", "cpu", "--cuda-graphs"],
            "--cuda-graphs needs a CUDA device; this run",
        ),
        (["worker", "--study", "x", "--device", "cpu", "--cuda-graphs"], "--cuda-graphs needs a CUDA device; this run"),
        (["run", "--model", "lenet", "--storage", "nonsense"], "cannot open storage nonsense"),
        (["run"], "give --model"),
        (["export", "--study", "ghost"], "no study store at"),  # tests/test_mistakes.py: the rest of them
        (["show", "--study", "ghost"], "no study store at"),
    ],
)
def test_bad_input_one_line_error(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert message in _error_line(result)
    if "--device" in args:  # refused before a store is opened
        assert not (tmp_path / "studies").exists()


def test_an_unreachable_database_is_one_line_without_its_password():
    result = invoke("run", "--model", "lenet", "--storage", "postgresql://u:hunter2@127.0.0.1:1/x")
    assert result.exit_code == 2, result.output
    line = _error_line(result)
    assert line.startswith("error: cannot open storage postgresql://u:***@127.0.0.1:1/x: ") and "refused" in line
    assert "hunter2" not in result.output


def test_data_not_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "no-debian")
    result = invoke("run", "--model", "lenet", "--no-download", "--trials", "1")
    assert result.exit_code == 2
    assert "Fashion-MNIST not found" in _error_line(result) and "apt-get install" in _error_line(result)
    assert not (tmp_path / "studies").exists()  # refused before a store is opened


def test_corrupt_data(tmp_path, monkeypatch, tiny_idx):
    monkeypatch.chdir(tmp_path)
    folder, _ = tiny_idx(compress=True)  # valid IDX files, but not the official contents
    result = invoke("run", "--model", "lenet", "--data-dir", str(folder), "--trials", "1")
    assert result.exit_code == 2
    assert "train-images-idx3-ubyte.gz is truncated or not Fashion-MNIST" in _error_line(result)


def test_diverging_trials_fail_with_reason(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/d.db"
    args = ["run", "--model", "lenet", "--trials", "2", "--storage", url, "--lr-min", "1e4", "--lr-max", "1e5"]
    result = invoke(*args, "--momentum", "0", "--epochs", "1", "--train-size", "1024", "--val-size", "1000")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="lenet", storage=url)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("training loss became" in t.user_attrs["fail_reason"] for t in study.trials)


_cli = functools.partial(cli_process, merge_output=False)


def test_dashboard_serves_trials_with_attrs(smoke_db):
    with serving_dashboard(smoke_db) as (base, studies):
        study = next(s for s in studies if s["study_name"] == "lenet")
        detail = get_json(f"{base}/api/studies/{study['study_id']}")
        assert len(detail["trials"]) >= 3
        keys = {a["key"] for a in detail["trials"][0]["user_attrs"]}
        assert {"val_accuracy", "throughput", "device"} <= keys


def test_dashboard_on_a_busy_port_is_one_line(smoke_db):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _cli("dashboard", "--storage", smoke_db, "--port", str(port))
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines() == [  # the only line: nothing announced before the port was bound
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use; try --port or --host"
    ]


def test_dashboard_stopped_by_sigterm_exits_143(smoke_db):
    port = free_port()
    proc = _cli("dashboard", "--storage", smoke_db, "--port", str(port))
    lines = Lines(proc, "stderr")
    lines.until(f"on http://127.0.0.1:{port}/")  # bound and serving
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert lines.finish(5).strip().splitlines()[-1] == "error: optuna-dashboard stopped by SIGTERM"


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "fmnist_search", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    listed = {line.split()[0] for line in out.stdout.splitlines() if line.startswith("  ") and line.split()}
    registered = {c.name or c.callback.__name__ for c in app.registered_commands}
    assert registered == {
        "create",
        "run",
        "worker",
        "data",
        "dashboard",
        "studies",
        "show",
        "export",
        "report",
        "plot",
        "evaluate",
        "predict",
        "train",
        "prune-artifacts",
        "delete",
    }
    assert registered <= listed, out.stdout


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["worker", "--help"], ["train", "--help"]])
def test_help_answers_without_importing_the_heavy_libraries(args):
    """Help and shell completion must answer at once: torch alone takes seconds to import."""
    code = (
        "import sys\nfrom fmnist_search.cli import main\n"
        f"sys.argv = ['fmnist-search', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "print('HEAVY', sorted(m for m in ('torch', 'optuna', 'sqlalchemy', 'pandas', 'plotly') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "HEAVY []", out.stdout[-300:]


def test_study_options_are_study_settings_or_say_which_study():
    """An option renamed away from its StudySpec field would silently stop reaching the study."""
    from fmnist_search.cli import StudyOptions
    from fmnist_search.core.config import SPEC_FIELDS

    assert set(StudyOptions.SETTINGS) <= SPEC_FIELDS
    others = {f.name for f in dataclasses.fields(StudyOptions)} - set(StudyOptions.SETTINGS)
    assert others == {
        "model",
        "trials",
        "target",
        "study",
        "storage",
        "preset",
        "models",
        "fix",
        "objectives",
        "keep_weights",
    }
    given = StudyOptions(
        epochs=3, sampler="random", fix=["schedule=cosine", "crop=2"], objectives="accuracy, params"
    ).settings()
    assert given == {
        "epochs": 3,
        "sampler": "random",
        "fixed": {"schedule": "cosine", "crop": 2},
        "objectives": ("accuracy", "params"),
    }


def test_work_options_reach_worker_processes_unchanged(tmp_path):
    """`run --jobs` hands its options to `worker` processes as argv built from the same declaration."""
    import typer

    from fmnist_search.app.processes import as_argv
    from fmnist_search.cli import WorkOptions

    work = WorkOptions(
        device="cpu",
        precision="fp32",
        compile=True,
        download=False,
        timeout=12.5,
        heartbeat_interval=3,
        grace_period=9,
        storage_patience=42.0,
        artifacts=tmp_path,
        save_weights=False,
    )
    group = typer.main.get_command(app)
    with group.make_context("fmnist-search", ["worker"]) as ctx:
        parsed = group.get_command(ctx, "worker").make_context("worker", ["--study", "s", *as_argv(work)], parent=ctx)
    assert WorkOptions(**{f.name: parsed.params[f.name] for f in dataclasses.fields(WorkOptions)}) == work


def test_a_study_without_a_completed_trial_is_one_line_for_train_and_evaluate(tmp_path):
    url = f"sqlite:///{tmp_path}/empty.db"
    assert invoke("create", "--model", "lenet", "--trials", "2", "--storage", url).exit_code == 0
    for args in (
        ["train", "--from-study", "lenet"],
        ["evaluate", "--study", "lenet"],
        ["train", "--from-study", "lenet", "--trial", "7"],
    ):
        result = invoke(*args, "--storage", url)
        assert result.exit_code == 2, result.output
        assert _error_line(result) in (
            "error: study 'lenet' has no completed trial yet",
            "error: study 'lenet' has no trial 7",
        )


def test_run_help_groups_its_options_and_states_per_model_defaults():
    result = invoke("run", "--help")
    assert result.exit_code == 0
    headings = [line[:-1] for line in result.output.splitlines() if line.endswith(":") and line[:1].isupper()]
    assert headings == ["Study", "Recipe", "Search", "Data", "Work", "Store", "Options"]
    text = " ".join(result.output.split())
    assert "SGD batch size [default: 256; lenet: 128]" in text  # LeNet's base recipe, as a new study gets it
    assert "Fixed SGD momentum [default: 0.9; lenet: 0.955]" in text
    section = result.output.split("\nRecipe:")[1].split("\nSearch:")[0]
    assert "--epochs" in section and "--fix" in section and "--storage" not in section


def test_shell_completion_is_offered(monkeypatch):
    # Typer's own switch for tests, read when the command is built: `--show-completion SHELL` with_option_groups
    # the shell named, rather than one detected from the parent processes (a test run started in
    # the background, whose shell has exited, has none: "Shell  not supported").
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    result = invoke("--show-completion", "bash")
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert "COMPLETE=complete_bash" in result.output and "complete -o default" in result.output


def test_a_pick_retrains_to_what_it_was_and_its_weights_evaluate_as_train_measured(smoke_db, tmp_path):
    """`train --from-study` retrains the trial as it ran (its seeds, on the study's split; printed),
    so its curve is the trial's; the saved file carries flip TTA, so `evaluate --weights` prints
    the figure `train` printed; `--seed N` retrains with other seeds on the same split."""
    study = optuna.load_study(study_name="lenet", storage=smoke_db)
    best = study.best_trial
    saved = tmp_path / "pick.pt"
    result = invoke("train", "--from-study", "lenet", "--storage", smoke_db, "--save", str(saved))
    assert result.exit_code == 0, result.output
    seed, order = best.user_attrs["config"]["seed"], best.user_attrs["config"]["data_seed"]
    assert seed == study.user_attrs["seed"] + best.number  # the study's seed plus the trial's number
    assert f"trial {best.number} of 'lenet' as it ran: weights seed {seed}, batch order seed {order}" in result.output
    assert "--seed N retrains it with other seeds" in result.output
    last_epoch = next(line for line in result.output.splitlines() if line.startswith("epoch 2/2"))
    assert f"val_acc={best.value:.4f}" in last_epoch  # the trial's own last validation accuracy
    trained = result.output.strip().splitlines()[-1]
    assert trained == f"test_accuracy={best.user_attrs['test_accuracy']:.4f}"
    evaluated = invoke("evaluate", "--weights", str(saved), "--output-dir", str(tmp_path))
    assert evaluated.exit_code == 0, evaluated.output
    assert "with flip TTA" in evaluated.output and trained in evaluated.output.splitlines()
    other = invoke("train", "--from-study", "lenet", "--storage", smoke_db, "--seed", "1", "--epochs", "1")
    assert other.exit_code == 0, other.output
    assert "retrained with other seeds: weights seed 1, batch order seed 1, the study's split (seed 0)" in other.output


def test_version_names_the_package_its_libraries_and_the_device():
    import torch

    result = invoke("--version")
    assert result.exit_code == 0
    line = result.output.strip()
    assert line.startswith("fmnist-search 0.") and f"torch {torch.__version__}," in line and "optuna " in line
    from fmnist_search.core.hardware import maybe_accelerated

    if maybe_accelerated():
        return  # torch is asked where a GPU may be
    assert "device cpu: " in line
    # without importing a library (on a machine with no GPU driver): not a timing, what it loads
    code = "import sys; from fmnist_search.cli import main; sys.argv = ['fmnist-search', '--version']\n"
    code += "try:\n main()\nexcept SystemExit:\n pass\n"
    code += "print(sorted(m for m in ('torch', 'optuna', 'optuna_dashboard', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_run_without_bars_and_with_a_log_file_keeps_every_line(tmp_path, real_data, monkeypatch):
    """`run --no-bars --log-file`: the lines the console shows, each timestamped, in the file (the
    environment variable hands it to the workers of --jobs)."""
    from fmnist_search import console

    monkeypatch.setenv("FMNIST_LOG_FILE", "-")
    monkeypatch.delenv("FMNIST_LOG_FILE")  # absent now, and again after the test (log_to sets it)
    monkeypatch.setattr(console, "_log", [])  # the process's log file: this test's only
    log = tmp_path / "run.log"
    url = f"sqlite:///{tmp_path}/s.db"
    args = ["run", "--model", "lenet", "--trials", "2", "--storage", url, "--no-bars", "--log-file", str(log), *TINY]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = log.read_text().splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert all(re.match(stamp, line) for line in lines)
    text = "\n".join(line[20:] for line in lines)
    assert "study 'lenet' in" in text and "trial 0 " in text and "trial 1 " in text
    assert "best trial" in text and "│ trials │ COMPLETE │" in text.replace("┃", "│")
    assert os.environ.get("FMNIST_LOG_FILE") == str(log.absolute())  # for worker processes
    bad = invoke(*args[:-4], "--log-file", str(tmp_path / "no" / "such" / "dir.log"), *TINY)
    assert bad.exit_code == 2 and "cannot write the log file" in bad.output


def test_the_study_bar_says_pruned_best_and_the_stop_reason_says_it_once():
    """The progress's study line counts trials, pruned ones and the best validation accuracy so far;
    its bar counts trial-epochs (the ETA's work: every population row's epoch, less what a pruned
    trial will not train); a stopped trial's reason names the signal once."""
    from types import SimpleNamespace

    from fmnist_search.console import RunProgress
    from fmnist_search.core.interrupts import stopped_reason

    study = optuna.create_study(direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(0.01, 1.0)}
    bars = RunProgress(3, 2, bars=False)
    work = bars.progress.tasks[0]
    assert bars.study_line() == "trials 0/3 (0 pruned)" and work.total == 6  # 3 trials x 2 epochs
    for number in (0, 1, 2):  # a population of three: each row's first epoch
        bars.on_epoch(number, SimpleNamespace(epoch=1, val_accuracy=0.5))
    assert work.completed == 3
    for state, value in ((TrialState.PRUNED, None), (TrialState.COMPLETE, 0.8), (TrialState.COMPLETE, 0.9)):
        t = optuna.trial.create_trial(state=state, value=value, params={"lr": 0.1}, distributions=dist)
        study.add_trial(t)
        if state == TrialState.PRUNED:  # trial 0, pruned after its first epoch: one epoch fewer to come
            bars.on_trial(study, study.trials[-1])
            assert (work.total, work.completed) == (5, 3)
            for number in (1, 2):
                bars.on_epoch(number, SimpleNamespace(epoch=2, val_accuracy=0.6))
        else:
            bars.on_trial(study, study.trials[-1])
    assert bars.study_line() == "trials 3/3 (1 pruned, best val 0.9000)"
    assert work.description == bars.study_line() and work.completed == work.total == 5 and work.finished
    assert RunProgress(None, 2, bars=False).study_line() == "trials 0 (0 pruned)"  # a worker: no target, no ETA
    assert stopped_reason("interrupted by SIGINT") == "interrupted by SIGINT"
    assert stopped_reason("the database went away") == "interrupted: the database went away"


def test_top_level_help_shows_each_commands_whole_summary():
    result = runner.invoke(app, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    commands = result.output.split("Commands:")[1]
    assert "…" not in commands and "..." not in commands.replace("test_accuracy=...", "")
    assert "work until it has its trials; one started before its database or study" in text  # `worker`, wrapped


def test_studies_fit_80_columns_by_wrapping_never_cutting_a_name(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    names = {"lenet+airbench+resnet18": "lenet,airbench,resnet18", "airbench-tuned-lr-sweep": "airbench"}
    for name, model in names.items():
        study = optuna.create_study(study_name=name, storage=url, direction="maximize")
        study.set_user_attr("model", model)
        study.add_trial(optuna.trial.create_trial(value=0.91234, user_attrs={"test_accuracy": 0.9}))
        study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED))
    shown = cli_process("studies", "--storage", url, env={"COLUMNS": "80"})
    text, _ = shown.communicate(timeout=120)
    assert shown.returncode == 0, text
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in text
    for name in names:  # whole, on one line, as `show --study NAME` needs it
        assert any(f"│ {name} │" in line for line in lines)
    assert "complete," in text and "1 pruned" in text and "0.9123" in text and "resnet18" in text  # wrapped, all there


def test_export_history_is_every_trials_learning_curve(smoke_db):
    """`export --history`: a row per trial and epoch, the curve the trial reported, the lr its
    schedule gave the epoch's last step."""
    from fmnist_search.engine.schedules import lr_factors

    study = optuna.load_study(study_name="lenet", storage=smoke_db)
    result = invoke("export", "--study", "lenet", "--storage", smoke_db, "--history")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert list(rows[0]) == [
        "trial",
        "state",
        "epoch",
        "train_loss",
        "train_accuracy",
        "val_accuracy",
        "val_loss",
        "lr",
        "train_time_s",
    ]
    for t in study.trials:
        mine = [r for r in rows if int(r["trial"]) == t.number]
        assert [int(r["epoch"]) for r in mine] == sorted(t.intermediate_values)
        assert [round(float(r["val_accuracy"]), 6) for r in mine] == [
            round(v, 6) for _, v in sorted(t.intermediate_values.items())
        ]
        cfg = t.user_attrs["config"]
        steps = -(-4096 // cfg["batch_size"])  # TINY: 4,096 training images
        table = lr_factors(cfg["schedule"], cfg["epochs"] * steps, cfg["warmup_frac"])
        assert float(mine[0]["lr"]) == pytest.approx(cfg["lr"] * table[steps - 1])
    refused = invoke("export", "--study", "lenet", "--storage", smoke_db, "--history", "--top", "2")
    assert refused.exit_code == 2 and "drop --top/--front" in refused.output


def test_delete_asks_removes_the_study_and_only_its_files_and_refuses_a_running_one(tmp_path, real_data):
    url = f"sqlite:///{tmp_path}/s.db"
    small = ["--trials", "2", "--epochs", "1", "--train-size", "1024", "--val-size", "500", "--storage", url]
    for name in ("gone", "kept"):
        assert invoke("run", "--model", "lenet", "--study", name, *small).exit_code == 0
    folder = tmp_path / "s-artifacts"  # beside the SQLite file, named for it
    files = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
    mine = {optuna.load_study(study_name="gone", storage=url).trials[i].user_attrs["weights_artifact"] for i in (0, 1)}
    assert mine < files
    declined = runner.invoke(app, ["delete", "--study", "gone", "--storage", url], input="n\n")
    assert declined.exit_code == 1 and "delete study 'gone' (2 trials) and its 2 artifact files" in declined.output
    assert "nothing deleted" in declined.output and "gone" in optuna.get_all_study_names(url)
    done = invoke("delete", "--study", "gone", "--storage", url, "--yes")
    assert done.exit_code == 0 and "deleted study 'gone'" in done.output
    assert optuna.get_all_study_names(url) == ["kept"]
    assert {p.name for p in folder.iterdir() if not p.name.startswith(".")} == files - mine
    kept = optuna.load_study(study_name="kept", storage=url)
    kept.ask()  # a trial a worker would be training
    refused = invoke("delete", "--study", "kept", "--storage", url, "--yes")
    assert refused.exit_code == 2 and "has 1 RUNNING trial(s) (2)" in refused.output and "--force" in refused.output
    assert invoke("delete", "--study", "kept", "--storage", url, "--yes", "--force").exit_code == 0
    assert optuna.get_all_study_names(url) == []
    missing = invoke("delete", "--study", "kept", "--storage", url, "--yes")
    assert missing.exit_code == 2 and "no study named 'kept'" in missing.output


def test_json_for_scripts_and_show_of_any_trial_with_its_curve(smoke_db):
    """`studies`, `show` (best or --trial N) and `report` print JSON that parses, with the fields
    docs/commands.md names; `show` lists each value once; `--curve` draws the trial's curve."""
    import json

    study = optuna.load_study(study_name="lenet", storage=smoke_db)
    best, other = study.best_trial, next(t for t in study.trials if t.number != study.best_trial.number)
    listed = json.loads(invoke("studies", "--storage", smoke_db, "--json").stdout)
    (row,) = [r for r in listed if r["study"] == "lenet"]
    assert set(row) == {
        "study",
        "model",
        "trials",
        "best_trial",
        "best_val_accuracy",
        "its_test_accuracy",
        "artifacts_bytes",
        "checkpoint_bytes",
    }
    assert row["best_trial"] == best.number and row["best_val_accuracy"] == best.value
    assert row["trials"]["complete"] == sum(t.state == TrialState.COMPLETE for t in study.trials)
    shown = json.loads(
        invoke("show", "--study", "lenet", "--storage", smoke_db, "--trial", str(other.number), "--json").stdout
    )
    assert set(shown) == {"study", "settings", "trials", "artifacts_bytes", "checkpoint_bytes", "trial"}
    assert (shown["artifacts_bytes"], shown["checkpoint_bytes"]) == (row["artifacts_bytes"], row["checkpoint_bytes"])
    t = shown["trial"]
    assert t["number"] == other.number and t["params"] == other.params and "history" not in t["attrs"]
    assert [p["epoch"] for p in t["curve"]] == sorted(other.intermediate_values)
    assert [p["val_accuracy"] for p in t["curve"]] == [v for _, v in sorted(other.intermediate_values.items())]
    text = invoke("show", "--study", "lenet", "--storage", smoke_db, "--trial", str(other.number), "--curve")
    assert text.exit_code == 0 and f"trial {other.number}: learning curve" in text.stdout and "█" in text.stdout
    keys = [line.strip("│ ").split("│")[0].strip() for line in text.stdout.splitlines() if line.startswith("│")]
    assert keys.count("val_accuracy") == 1 and keys.count("lr") == 1  # each value once
    shown_best = invoke("show", "--study", "lenet", "--storage", smoke_db).stdout
    best_keys = [line.strip("│ ").split("│")[0].strip() for line in shown_best.splitlines() if line.startswith("│")]
    assert "test_accuracy" in best_keys and "checkpoint" not in best_keys  # removed once it completed: not "{}"
    assert best.user_attrs.get("checkpoint") == {}  # (what the store holds)
    report = json.loads(invoke("report", "--study", "lenet", "--storage", smoke_db, "--json").stdout)
    assert report and {"model", "lr"} <= set(report[0])


def test_a_worker_counts_toward_what_the_target_lacks_and_shows_the_study_at_the_end(tmp_path, real_data, monkeypatch):
    from fmnist_search import console

    totals = []
    original = console.RunProgress.__init__

    def init(self, trials, epochs, *args, **kwargs):
        totals.append(trials)
        original(self, trials, epochs, *args, **kwargs)

    monkeypatch.setattr(console.RunProgress, "__init__", init)
    url = f"sqlite:///{tmp_path}/w.db"
    made = invoke(
        "create", "--model", "lenet", "--trials", "2", "--storage", url, "--epochs", "1", "--train-size", "512"
    )
    assert made.exit_code == 0, made.output
    worked = invoke("worker", "--study", "lenet", "--storage", url, "--no-bars")
    assert worked.exit_code == 0, worked.output
    assert totals == [2]  # the bar's total: "trials 0/2", with an ETA
    assert "study lenet" in worked.stdout and "best trial " in worked.stdout  # the summary, as `run` ends
