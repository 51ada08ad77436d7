"""The Typer CLI: parses, calls the application layer (fmnist_search/app/), prints, exits.

The only place that reads argv, prints and exits with codes; it imports nothing from the
engine or the search layer (tests/test_layers.py). Every command turns library errors
(``FmnistSearchError``) into one ``error:`` line on stderr and exit code 2; Ctrl-C exits
130 with the store intact.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .app.options import (
    RECIPE,
    ArtifactsOpt,
    CompileOpt,
    DataDirOpt,
    DeviceOpt,
    DownloadOpt,
    ModelOpt,
    PrecisionOpt,
    PresetOpt,
    StorageOpt,
    StudyOpt,
    StudyOptions,
    TrainSizeOpt,
    ValSizeOpt,
    WhereOpt,
    WorkOptions,
    artifact_dir,
    with_option_groups,
)
from .console import (
    LOG_ENV,
    Group,
    Panelled,
    RunProgress,
    echo,
    fail,
    log_to,
    out,
    print_summary,
    quiet_warnings,
    say,
    table,
)
from .core.config import DEFAULT_STORAGE
from .core.errors import FmnistSearchError

app = typer.Typer(
    cls=Group,
    help="Hyperparameter search for Fashion-MNIST classifiers on Optuna.",
    rich_markup_mode=None,  # plain click errors: one line, no boxes
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish, PowerShell
)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_INTERRUPTED = 130  # 128 + SIGINT
TrialOpt = Annotated[int | None, typer.Option(help="Trial number [default: the best trial].")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]
BarsOpt = Annotated[
    bool,
    typer.Option(help="Progress bars: trials, pruned, best, ETA (off: one line per trial).", rich_help_panel="Work"),
]
LogFileOpt = Annotated[
    Path | None,
    typer.Option(
        envvar=LOG_ENV,
        dir_okay=False,
        help="Also append every line shown, timestamped, to this file (the workers of --jobs too).",
        rich_help_panel="Work",
    ),
]


def _user_error(e: BaseException) -> FmnistSearchError | None:
    """The first of our own errors in ``e``'s cause/context chain."""
    from .core.interrupts import causes

    return next((x for x in causes(e) if isinstance(x, FmnistSearchError)), None)


def command(*args: Any, stoppable: bool = False, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` that reports ``FmnistSearchError`` as one line and a non-zero exit.

    ``stoppable`` commands (those that write trials) handle Ctrl-C and SIGTERM with
    ``interrupts``: recorded, deferred out of storage calls, acted on at their check points.
    The others (reads, the dashboard) keep Python's own Ctrl-C, reported in one line too.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            from .app.processes import EXIT_FAILED, RUN_REPORTS, signal_name
            from .core.interrupts import handled, stop_in

            quiet_warnings()
            with handled() if stoppable else contextlib.nullcontext():
                try:
                    return fn(*a, **kw)
                except FmnistSearchError as e:
                    if not getattr(e, "error", True):
                        say(str(e))
                        raise typer.Exit(e.exit_code) from None
                    raise fail(str(e), e.exit_code) from None
                except (KeyboardInterrupt, Exception) as e:
                    stop = stop_in(e)
                    if stop is not None and os.environ.get(RUN_REPORTS):  # a worker of `run --jobs`, stopped early
                        say(f"stopped by {signal_name(stop.signum)}")
                        raise typer.Exit(stop.exit_code) from None
                    if stop is not None:
                        raise fail(f"interrupted by {signal_name(stop.signum)}", stop.exit_code) from None
                    # Optuna re-raises a storage failure inside its trial bookkeeping as its own
                    # AssertionError; the cause, ours, is what the user needs to read.
                    cause = _user_error(e)
                    if cause is None:
                        raise
                    raise fail(str(cause), EXIT_FAILED) from None

        app.command(*args, cls=Panelled, **kwargs)(wrapper)
        return fn

    return decorate


def _storage(url: str, **kwargs: Any):
    from .app.studies import open_study_store

    return open_study_store(url, say, **kwargs)


def _reader(url: str):
    """The store for a command that only reads: it must exist (nothing is created); a SQLite file on a
    read-only mount opens read-only."""
    return _storage(url, read_only=True, existing=True)


def _json(value: Any) -> None:
    """A command's output for scripts: JSON on stdout (non-finite numbers as null)."""
    import json
    import math

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    sys.stdout.write(json.dumps(clean(value), indent=2, default=str) + "\n")


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@command(stoppable=True)
@with_option_groups(options=StudyOptions)
def create(options: StudyOptions) -> None:
    """Create a study (or raise an existing one's target by TRIALS) without running trials: for `worker`s."""
    from .app.lines import store_text
    from .app.processes import finish_command, trial_count
    from .app.studies import create as create_studies

    for name, model, target in create_studies(options, say):
        where = store_text(options.storage)
        say(f"study {name!r} ({model}) in {where} has a target of {trial_count(target)}; start workers with:")
        say(f"  {finish_command(name, options.storage, WorkOptions())}")


@command(stoppable=True)
@with_option_groups(options=StudyOptions, work=WorkOptions)
def run(
    options: StudyOptions,
    work: WorkOptions,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.", rich_help_panel="Work")] = 1,
    gpus: Annotated[
        str | None, typer.Option(help="Comma-separated GPU ids: one worker per GPU.", rich_help_panel="Work")
    ] = None,
    workers_per_gpu: Annotated[
        int, typer.Option(min=1, help="Workers packed on each GPU of --gpus.", rich_help_panel="Work")
    ] = 1,
    bars: BarsOpt = True,
    log_file: LogFileOpt = None,
) -> None:
    """Create or resume a study and run TRIALS more trials in it (in one or many processes)."""
    from .app.studies import run as run_studies

    if log_file is not None:
        log_to(log_file)
    progress = functools.partial(RunProgress, bars=bars)
    run_studies(options, work, jobs, gpus, workers_per_gpu, progress, print_summary, say)


@command(stoppable=True)
@with_option_groups(work=WorkOptions)
def worker(
    study: StudyOpt,
    work: WorkOptions,
    storage: StorageOpt = DEFAULT_STORAGE,
    label: Annotated[str | None, typer.Option(help="Name shown on this worker's lines and trials.")] = None,
    bars: BarsOpt = True,
    log_file: LogFileOpt = None,
) -> None:
    """Join a study (on any machine that reaches its storage) and work until it has its trials; one started
    before its database or study (containers, Kubernetes) waits for both, up to --storage-patience seconds."""
    from .app.studies import join_study

    if log_file is not None:
        log_to(log_file)
    prefix = f"[{label}] " if label else ""
    progress = functools.partial(RunProgress, bars=bars, prefix=prefix)
    join_study(study, storage, work, label, progress, print_summary, say)


@command()
def studies(storage: StorageOpt = DEFAULT_STORAGE, artifacts: ArtifactsOpt = None, json_out: JsonOpt = False) -> None:
    """List studies: name, model, trials by state, best validation and test accuracy, artifacts' space."""
    from .app.results import STUDY_COLUMNS, list_studies, study_records

    if json_out:
        _json(study_records(_reader(storage), artifact_dir(storage, artifacts)))
        return
    rows = list_studies(_reader(storage), artifact_dir(storage, artifacts))
    if not rows:
        out.print("no studies yet; start one with: fmnist-search run --model lenet")
        return
    out.print(table(STUDY_COLUMNS, rows))


@command()
def show(
    study: StudyOpt,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifacts: ArtifactsOpt = None,
    where: WhereOpt = None,
    trial: TrialOpt = None,
    curve: Annotated[
        bool, typer.Option(help="Draw the trial's learning curve (validation accuracy by epoch).")
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """A study's best trial (or --trial N, or its pick --where): params, accuracies, throughput, device; its
    settings, trials by state and artifacts' space."""
    from .app.results import curve_rows, shown_trial, space_text, trial_rows
    from .core.config import setting_text

    if trial is not None and where:
        raise FmnistSearchError("give --trial N or --where conditions, not both")
    shown = shown_trial(_reader(storage), study, artifact_dir(storage, artifacts), where or (), trial)
    if json_out:
        _json(shown)
        return
    settings = [(k, setting_text(v)) for k, v in shown["settings"].items()]
    out.print(table(("setting", "value"), settings, title=f"study {study}"))
    space = space_text(shown["artifacts_bytes"], shown["checkpoint_bytes"])
    echo("trials: " + ", ".join(f"{n} {k}" for k, n in shown["trials"].items()) + f"; artifacts {space}")
    if shown["trial"] is None:
        raise FmnistSearchError(f"study {study!r} has no completed trial yet")
    t = shown["trial"]
    title = f"trial {t['number']}" if trial is not None else f"best trial {t['number']}"
    out.print(table(("key", "value"), trial_rows(t), title=title, show_header=False))
    if curve:
        out.print(
            table(("epoch", "train loss", "val acc", ""), curve_rows(t), title=f"trial {t['number']}: learning curve")
        )


@command()
def export(
    study: StudyOpt,
    storage: StorageOpt = DEFAULT_STORAGE,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="CSV file [default: stdout].")] = None,
    top: Annotated[int | None, typer.Option(min=1, help="Only the best N trials.")] = None,
    all_states: Annotated[bool, typer.Option("--all", help="Every trial, not just completed ones.")] = False,
    front: Annotated[bool, typer.Option("--front", help="Only the Pareto front (several objectives).")] = False,
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="Every trial's learning curve instead: a row per trial and epoch (train loss and accuracy, "
            "validation accuracy and loss, the lr at the epoch's end, its training time).",
        ),
    ] = False,
) -> None:
    """Write the study's trials as CSV, best first (or, with --history, every trial's epochs)."""
    from .app.results import export_frame

    _outputs(output)
    frame = export_frame(_reader(storage), study, all_states, top, front, history)
    _write(output, frame.to_csv(index=False), what=f"{len(frame)} {'epochs' if history else 'trials'}")


@command()
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8080,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Serve optuna-dashboard on the same store (and its artifact folder: trial weights); Ctrl-C or SIGTERM stops it."""
    from .app.serve import serve_dashboard

    serve_dashboard(_reader(storage), storage, host, port, artifact_dir(storage, artifacts), say)


@command("prune-artifacts")
def prune_artifacts(
    storage: StorageOpt = DEFAULT_STORAGE,
    artifacts: ArtifactsOpt = None,
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed.")] = False,
    min_age: Annotated[
        float, typer.Option(min=0, help="Keep files younger than SECONDS (a running trial's newest checkpoint).")
    ] = 3600,
) -> None:
    """Remove artifact files no study uses: checkpoints of trials that will not resume, interrupted writes."""
    from .app.results import prune_artifacts as prune

    names, size = prune(_storage(storage, existing=True), storage, artifact_dir(storage, artifacts), dry_run, min_age)
    for name in names:
        echo(name)
    say(f"{'would remove' if dry_run else 'removed'} {len(names)} files, {size / 1e6:.1f} MB")


@command()
def delete(
    study: StudyOpt,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifacts: ArtifactsOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    force: Annotated[bool, typer.Option(help="Delete it even with RUNNING trials (its workers stopped).")] = False,
) -> None:
    """Delete a study and its artifact files (every trial's weights and checkpoints); asks first."""
    from .app.results import delete_study, deletion

    store = _storage(storage, existing=True)
    trials, paths, size = deletion(store, study, artifact_dir(storage, artifacts), force)
    what = f"study {study!r} ({trials} trials) and its {len(paths)} artifact files ({size / 1e6:.1f} MB)"
    try:
        sure = yes or typer.confirm(f"delete {what}?", default=False, err=True)
    except typer.Abort:  # end of input while asking (it would print "Aborted!")
        raise fail("nothing deleted: no answer; add --yes to delete without asking", 1) from None
    if not sure:
        raise fail("nothing deleted", 1)
    delete_study(store, study, paths)
    say(f"deleted {what}")


@command("data")
def data_cmd(
    data_dir: Annotated[Path | None, typer.Option(envvar="FMNIST_DATA_DIR", help="Folder with the data.")] = None,
    verify: Annotated[bool, typer.Option(help="Check the SHA-256 of the files found.")] = True,
) -> None:
    """Where the data was found, whether it verified, and how to get it."""
    from .app.models import survey_data

    for line in survey_data(data_dir, verify):
        echo(line)


@command()
def report(
    study: Annotated[list[str], typer.Option("--study", help="Study name (repeatable).")],
    storage: StorageOpt = DEFAULT_STORAGE,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Markdown file [default: stdout].")] = None,
    csv: Annotated[Path | None, typer.Option(help="Also write the table as CSV.")] = None,
    json_out: JsonOpt = False,
) -> None:
    """The report's Table 1 for these studies, with the report's figures alongside."""
    from .app.results import report_table

    _outputs(output, csv)
    markdown, table_csv, rows, records = report_table(_reader(storage), study)
    if json_out:
        _write(output, records + "\n", what=f"{rows} rows")
        return
    _write(output, markdown, what=f"{rows} rows")
    if csv is not None:
        _write(csv, table_csv, what=f"{rows} rows")


def _outputs(*files: Path | None, folders: tuple[Path | None, ...] = ()) -> None:
    """Every output a command was given, checked before it does its work (core.files.check_output)."""
    from .core.files import check_output

    for path in files:
        if path is not None:
            check_output(path)
    for folder in folders:
        if folder is not None:
            check_output(folder, folder=True)


def _write(path: Path | None, text: str, what: str) -> None:
    """``text`` to stdout, or to ``path``: the one rule of every output file (its folder is
    created; a folder or an unwritable place is one line naming it)."""
    if path is None:
        echo(text, end="")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise FmnistSearchError(f"cannot write {path}: {e.strerror or e}") from None
    say(f"wrote {what} to {path}")


@command()
def plot(
    study: StudyOpt,
    storage: StorageOpt = DEFAULT_STORAGE,
    output_dir: Annotated[Path, typer.Option(help="Folder for the HTML files.")] = Path("plots"),
    dashboard: Annotated[
        bool, typer.Option(help="Also attach the learning curves to the study for optuna-dashboard.")
    ] = True,
) -> None:
    """The study on one page (index.html: settings, counts, best trial, report table, figures), plus each figure."""
    from .app.results import plot as plot_study

    _outputs(folders=(output_dir,))
    paths, note = plot_study(_reader(storage), study, output_dir, dashboard)
    if note:
        say(note)
    say(f"wrote {len(paths)} files to {output_dir}/: {', '.join(p.name for p in paths)}")


WeightsOpt = Annotated[Path | None, typer.Option(help="A weights file saved by `train --save` (instead of --study).")]


@command()
def evaluate(
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    trial: TrialOpt = None,
    weights: WeightsOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifacts: ArtifactsOpt = None,
    output_dir: Annotated[
        Path | None, typer.Option(help="Also write the confusion matrix as HTML in this folder.")
    ] = None,
    tta_flip: Annotated[
        bool | None,
        typer.Option(
            help="Average each image's and its mirror image's predictions [default: as the trial's recipe or "
            "the weights file was measured, so its test accuracy is reproduced]."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = True,
) -> None:
    """Test accuracy, per-class accuracy and the confusion matrix of a trial's (or a file's) weights."""
    from .app.models import evaluate as evaluate_model

    _outputs(folders=(output_dir,))
    e = evaluate_model(
        study,
        trial,
        weights,
        lambda: _reader(storage),
        artifact_dir(storage, artifacts),
        tta_flip=tta_flip,
        device=device,
        data_dir=data_dir,
        download=download,
        output_dir=output_dir,
    )
    how = " with flip TTA" if e.tta_flip else ""
    echo(f"{e.label}: test accuracy {e.accuracy:.4f} on {e.images} images{how}")
    for title, columns, rows in e.tables():
        out.print(table(columns, rows, title=title))
    echo(f"test_accuracy={e.accuracy:.4f}")
    if e.html is not None:
        say(f"wrote {e.html}")


@command()
def predict(
    images: Annotated[list[Path], typer.Argument(help="PNG/JPEG files.")],
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    trial: TrialOpt = None,
    weights: WeightsOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Class and probability for each image (light garment on dark, like Fashion-MNIST; the inverse is flipped)."""
    from .app.models import predict as predict_images

    label, rows = predict_images(
        images, study, trial, weights, lambda: _reader(storage), artifact_dir(storage, artifacts)
    )
    for path, name, prob, inverted in rows:
        note = " (inverted: dark garment on light background)" if inverted else ""
        echo(f"{path}: {name} {prob:.3f}{note}")
    say(f"model: {label}")


@command(stoppable=True)
def train(
    model: ModelOpt = None,
    preset: PresetOpt = None,
    params: Annotated[
        str | None, typer.Option(help="Hyperparameters as JSON, e.g. '{\"lr\": 0.05}'.", rich_help_panel=RECIPE)
    ] = None,
    from_study: Annotated[str | None, typer.Option(help="Use this study's best (or --trial N) configuration.")] = None,
    trial: TrialOpt = None,
    where: WhereOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    epochs: Annotated[
        int | None, typer.Option(help="Override the configuration's epochs.", rich_help_panel=RECIPE)
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Weights, batch order and split seed [default: 0; with --from-study the trial's seeds, on the "
            "study's split, which --seed leaves as it is]."
        ),
    ] = None,
    full_train: Annotated[
        bool | None,
        typer.Option(help="Train on train+validation (no validation metrics) [default: the preset's, else no]."),
    ] = None,
    val_size: ValSizeOpt = None,
    train_size: TrainSizeOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = True,
    save: Annotated[Path | None, typer.Option(help="Save the final weights (for evaluate/predict --weights).")] = None,
) -> None:
    """Train one configuration without a study; the last line is `test_accuracy=...`."""
    from .app.models import train as train_one

    _outputs(save)  # before any training
    flags = _given(val_size=val_size, train_size=train_size, seed=seed, full_train=full_train)
    done = train_one(
        model,
        preset,
        params,
        from_study,
        trial,
        lambda: _reader(storage),
        where=where or (),
        epochs=epochs,
        split_flags=flags,
        device=device,
        precision=precision,
        compile=compile,
        data_dir=data_dir,
        download=download,
        save=save,
        show=echo,
        say=say,
    )
    if done.saved is not None:
        say(f"saved weights to {done.saved}")
    echo(f"test_accuracy={done.test_accuracy:.4f}")


def _version(value: bool) -> None:
    if value:
        from .app.about import versions

        echo(versions())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="Show the version, the libraries' and the device's, then exit.",
        ),
    ] = False,
) -> None:
    """Hyperparameter search for Fashion-MNIST classifiers on Optuna."""


def main() -> None:
    app()
