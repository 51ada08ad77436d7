"""Reading studies back: the lines, rows and files the result commands show (studies, show,
export, report, plot) and the per-trial line a run prints. Data only; the CLI prints it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import optuna_dashboard
import pandas as pd

from ..core.config import setting_text
from ..core.errors import FmnistSearchError
from ..search.artifacts import OWNERS, owners
from ..search.results import (
    accuracy,
    best_trial,
    describe_objectives,
    front_frame,
    front_markdown,
    history_frame,
    pick,
    report_frame,
    state_counts,
    study_figures,
    summary_page,
    to_markdown,
    trials_frame,
    write_html,
)
from ..search.store import store_identity
from ..search.study import find_trial, load_study
from ..search.trials import TrialRecord, in_use, lr_of, objectives_of

if TYPE_CHECKING:  # annotations only
    from optuna.storages import RDBStorage
    from optuna.trial import FrozenTrial


def trial_line(trial: FrozenTrial, prefix: str = "") -> str:
    """``trial 3 COMPLETE: lr=0.05 val=0.9012 after 10 epochs, 21,000 samples/s test=0.8990``."""

    a = TrialRecord.of(trial)
    lr = lr_of(trial)
    model = f" {trial.params['model']}" if "model" in trial.params else ""  # a study that compares models
    line = f"{prefix}trial {trial.number} {trial.state.name}:{model} lr={lr:.4g}"
    if a.val_accuracy is not None:
        epochs = f"{a.epochs_completed} epoch" + ("" if a.epochs_completed == 1 else "s")
        line += f" val={a.val_accuracy:.4f} after {epochs}, {a.throughput or 0:,.0f} samples/s"
    if a.test_accuracy is not None:
        line += f" test={a.test_accuracy:.4f}"
    if a.fail_reason is not None:
        line += f" ({a.fail_reason})"
    return line


def trial_accuracy(study: optuna.Study, trial: FrozenTrial) -> float:
    """A trial's validation accuracy (its objective value, whatever else the study optimises)."""

    value = accuracy(trial, objectives_of(study))
    return float("nan") if value is None else value


def study_summary(study: optuna.Study) -> tuple[dict[str, int], str | None]:
    """(trials by state, the best trial's line, or None before a trial completes)."""

    counts = state_counts(study)
    best = best_trial(study)
    if best is None:
        return counts, None
    a = TrialRecord.of(best)
    test = a.test_accuracy if a.test_accuracy is not None else float("nan")
    return counts, (
        f"best trial {best.number}: val_accuracy={trial_accuracy(study, best):.4f} test_accuracy={test:.4f} "
        f"({setting_text({k: float(f'{v:.4g}') if isinstance(v, float) else v for k, v in best.params.items()})}) "
        f"throughput={a.throughput or 0:,.0f} samples/s on {a.device}"
    )


# the trials by state in one column that wraps (an 80-column terminal fits every study name whole)
STUDY_COLUMNS = ("study", "model", "trials", "best\nval", "its\ntest", "disk")


def study_records(store: RDBStorage, folder: Path) -> list[dict[str, Any]]:
    """One record per study in the store (``studies --json``): its name, model, trials by state,
    the best trial's validation and test accuracy, its artifacts' bytes in ``folder``."""

    records, sizes = [], file_sizes(folder)
    for s in optuna.get_all_study_summaries(store, include_best_trial=False):
        study = optuna.load_study(study_name=s.study_name, storage=store)
        best = best_trial(study)
        total_b, live_b = artifact_bytes(study, sizes)
        records.append(
            {
                "study": s.study_name,
                "model": study.user_attrs.get("model"),
                "trials": {k.lower(): v for k, v in state_counts(study).items()},
                "best_trial": None if best is None else best.number,
                "best_val_accuracy": None if best is None else trial_accuracy(study, best),
                "its_test_accuracy": None if best is None else TrialRecord.of(best).test_accuracy,
                "artifacts_bytes": total_b,
                "checkpoint_bytes": live_b,
            }
        )
    return records


def list_studies(store: RDBStorage, folder: Path) -> list[tuple[str, ...]]:
    """``STUDY_COLUMNS`` per study in the store (artifacts: its weights and live checkpoints in ``folder``)."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    rows = []
    for r in study_records(store, folder):
        counts = {state: n for state, n in r["trials"].items() if n}
        rows.append(
            (
                r["study"],
                ", ".join(str(r["model"] or "?").split(",")),  # (a comparison's models wrap at their commas)
                ", ".join(f"{n} {state}" for state, n in counts.items()) or "0",
                cell(r["best_val_accuracy"]),
                cell(r["its_test_accuracy"]) if r["best_trial"] is not None else "-",
                space_text(r["artifacts_bytes"], r["checkpoint_bytes"]),
            )
        )
    return rows


def shown_trial(
    store: RDBStorage, name: str, folder: Path, where: tuple[str, ...] | list[str] = (), number: int | None = None
) -> dict[str, Any]:
    """What `show` shows (``--json`` as it is): the study's settings, its trials by state and its
    artifacts' space, and one trial — number ``number``, else the best (or the pick ``where`` says:
    search/results/front.py; None before a trial completes) — with its params, attrs and curve."""

    s = load_study(store, name)
    t = find_trial(s, number) if number is not None else (pick(s, where) if where else best_trial(s))
    shown: dict[str, Any] = {
        "study": name,
        "settings": dict(s.user_attrs),
        "trials": {k.lower(): v for k, v in state_counts(s).items()},
        **dict(zip(("artifacts_bytes", "checkpoint_bytes"), artifact_bytes(s, file_sizes(folder)), strict=True)),
        "trial": None,
    }
    if t is not None:
        record = TrialRecord.of(t)
        shown["trial"] = {
            "number": t.number,
            "state": t.state.name,
            "val_accuracy": trial_accuracy(s, t) if t.state.name == "COMPLETE" else record.val_accuracy,
            "params": dict(t.params),
            "attrs": {k: v for k, v in t.user_attrs.items() if k not in ("history", "val_accuracy")},
            "curve": [
                {k: h.get(k) for k in ("epoch", "train_loss", "train_accuracy", "val_accuracy")} for h in record.history
            ],
        }
    return shown


def trial_rows(trial: dict[str, Any]) -> list[tuple[str, str]]:
    """The trial of ``shown_trial`` as (key, value) rows, each value once."""

    def text(v: Any) -> str:
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    rows = [
        ("state", trial["state"]),
        ("val_accuracy", "-" if trial["val_accuracy"] is None else f"{trial['val_accuracy']:.4f}"),
    ]
    rows += [(k, text(v)) for k, v in trial["params"].items()]
    # (an emptied attr, such as a completed trial's removed ``checkpoint``, is not shown: Optuna cannot delete one)
    rows += [(k, text(v)) for k, v in trial["attrs"].items() if k not in trial["params"] and v not in ({}, [], None)]
    return rows


def curve_rows(trial: dict[str, Any], width: int = 40) -> list[tuple[str, str, str, str]]:
    """The trial's learning curve as text rows: epoch, train loss, validation accuracy and a bar
    of it (scaled from the curve's lowest value to 1), for the terminal."""

    points = [p for p in trial["curve"] if p.get("val_accuracy") is not None]
    low = min((p["val_accuracy"] for p in points), default=0.0)
    span = max(1.0 - low, 1e-9)
    return [
        (
            str(p["epoch"]),
            f"{p['train_loss']:.4f}",
            f"{p['val_accuracy']:.4f}",
            "█" * max(1, round(width * (p["val_accuracy"] - low) / span)),
        )
        for p in points
    ]


def export_frame(
    store: RDBStorage, name: str, include_all: bool, top: int | None, front: bool = False, history: bool = False
) -> pd.DataFrame:
    """The study's trials (or its Pareto front) as a DataFrame, best first; with ``history`` every
    trial's epochs instead, a row each (``search.export``)."""

    if history and (top is not None or front):
        raise FmnistSearchError("--history exports every trial's epochs; drop --top/--front")
    study = load_study(store, name)
    frame = history_frame(study) if history else trials_frame(study, include_all=include_all, top=top, front_only=front)
    if frame.empty:  # a header alone would say nothing; say why there is nothing
        what = "trial" if include_all else "completed trial"
        if history:
            what = "trial that finished an epoch"
        hint = "" if include_all or history else " (--all writes every trial)"
        raise FmnistSearchError(f"study {name!r} has no {what} yet: nothing to export{hint}")
    return frame


def report_table(store: RDBStorage, names: list[str]) -> tuple[str, str, int, str]:
    """The report's Table 1 for these studies, and the Pareto front of each study with several
    objectives, the report's rows of its models beside it: (markdown, CSV, rows, JSON records)."""

    studies = [load_study(store, name) for name in dict.fromkeys(names)]  # a study named twice is shown once
    single = [s for s in studies if len(objectives_of(s)) == 1]
    parts, frames = [], []
    if single:
        frames.append(report_frame(single))
        parts.append(to_markdown(frames[-1]))
    for s in studies:
        if len(objectives_of(s)) > 1:
            frames.append(front_frame(s))
            title = f"Pareto front of {s.study_name}: {describe_objectives(objectives_of(s))}; chosen on validation"
            parts.append(f"{title}\n\n{front_markdown(frames[-1], objectives_of(s))}")
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if frame.empty:
        names = ", ".join(repr(s.study_name) for s in studies)
        raise FmnistSearchError(f"no completed trial in study {names} yet: nothing to report")
    return "\n".join(parts), frame.to_csv(index=False), len(frame), frame.to_json(orient="records", indent=2)


def plot(store: RDBStorage, name: str, output_dir: Path, dashboard: bool) -> tuple[list[Path], str | None]:
    """The study on one page plus each figure, written to ``output_dir``; with ``dashboard`` its
    learning curves attached to the study for optuna-dashboard (not on a read-only store: a note says so)."""

    s = load_study(store, name)
    if not any(t.intermediate_values or t.state.name == "COMPLETE" for t in s.get_trials(deepcopy=False)):
        raise FmnistSearchError(f"study {name!r} has no trial that finished an epoch yet: nothing to plot")
    figures = study_figures(s)
    title = f"fmnist-search: {name}"
    try:
        paths = write_html(figures, output_dir, title, page=summary_page(s, figures, title))
    except OSError as e:
        raise FmnistSearchError(f"cannot write to {output_dir}: {e.strerror}") from None
    if dashboard and getattr(store, "read_only", False):
        return paths, "the store is read-only: the learning curves are not attached for optuna-dashboard"
    if dashboard:  # optuna-dashboard draws Optuna's plots itself; this adds the learning curves
        optuna_dashboard.save_plotly_graph_object(s, figures["learning_curves"], graph_object_id="learning-curves")
    return paths, None


def file_sizes(folder: Path) -> dict[str, int]:
    """Each artifact file's bytes, by its id (its name), read once per command."""
    return {p.name: p.stat().st_size for p in folder.iterdir()} if folder.is_dir() else {}


def artifact_bytes(study: optuna.Study, sizes: dict[str, int]) -> tuple[int, int]:
    """(bytes of its weights and live checkpoints, bytes of those checkpoints) among ``sizes``."""

    weights, live = in_use(study)
    weights_b, live_b = (sum(sizes.get(a, 0) for a in ids) for ids in (weights, live))
    return weights_b + live_b, live_b


def space_text(total_b: int, live_b: int) -> str:
    """``1.3 MB`` (weights and checkpoints), ``, 0.4 ckpt`` when checkpoints may still resume."""
    return f"{total_b / 1e6:.1f} MB" + (f", {live_b / 1e6:.1f} ckpt" if live_b else "")


def deletion(store: RDBStorage, name: str, folder: Path, force: bool) -> tuple[int, list[Path], int]:
    """What deleting study ``name`` removes: (its trials, its artifact files in ``folder`` — every
    trial's weights and checkpoints — and their bytes). A study with RUNNING trials is refused
    unless ``force``: a worker may be training them (their results would have nowhere to go)."""

    study = load_study(store, name)
    trials = study.get_trials(deepcopy=False)
    running = [t.number for t in trials if t.state.name == "RUNNING"]
    if running and not force:
        raise FmnistSearchError(
            f"study {name!r} has {len(running)} RUNNING trial(s) ({', '.join(map(str, running[:5]))}): a worker may "
            "be training them; stop its workers first, or give --force"
        )
    files = set(in_use(study)[0])
    files |= {c["artifact"] for t in trials if (c := TrialRecord.of(t).checkpoint) and c.get("artifact")}
    paths = sorted(p for p in (folder / f for f in files) if p.is_file())
    return len(trials), paths, sum(p.stat().st_size for p in paths)


def delete_study(store: RDBStorage, name: str, paths: list[Path]) -> None:
    """Delete the study, then its files: a stop in between leaves files (`prune-artifacts` removes
    them), never a study that names missing ones."""

    optuna.delete_study(study_name=name, storage=store)
    for p in paths:
        p.unlink(missing_ok=True)


def prune_artifacts(
    store: RDBStorage, url: str, folder: Path, dry_run: bool, min_age_s: float
) -> tuple[list[str], int]:
    """Remove the files in ``folder`` no study of ``store`` uses (the weights of any trial, the
    checkpoints that may still resume): leftovers of trials that will not resume, interrupted
    writes. Never a file younger than ``min_age_s`` seconds (a checkpoint is written before its
    trial's attr names it), nor any file of a folder other stores write into too (they name files
    this store cannot see). Returns (the files, their bytes); with ``dry_run`` nothing is removed."""

    if not folder.is_dir():
        raise FmnistSearchError(f"artifact folder {folder} not found; pass --artifacts DIR")
    others = owners(folder) - {store_identity(url)}
    if others:
        raise FmnistSearchError(
            f"artifact folder {folder} also holds the trials of {', '.join(sorted(others))}, which this command "
            f"cannot see; nothing removed (give each store its own --artifacts folder; {folder / OWNERS} lists them)"
        )
    used: set[str] = set()
    for summary in optuna.get_all_study_summaries(store, include_best_trial=False):
        weights, live = in_use(optuna.load_study(study_name=summary.study_name, storage=store))
        used |= weights | live
    young = time.time() - min_age_s
    leftovers = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name not in used and p.stat().st_mtime < young
    )
    size = sum(p.stat().st_size for p in leftovers)
    if not dry_run:
        for p in leftovers:
            p.unlink(missing_ok=True)
    return [p.name for p in leftovers], size
