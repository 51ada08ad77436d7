"""The Typer CLI: the only place that reads argv/env, prints, and exits with codes.

Every command turns library errors (``FmnistSearchError``) into one ``error:`` line on
stderr and exit code 2; Ctrl-C exits 130 with the store intact.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, get_type_hints

import typer
from rich.console import Console
from rich.table import Table

from .core.config import DEFAULT_STORAGE, GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, PATIENCE_S
from .core.errors import FmnistSearchError

app = typer.Typer(
    help="Hyperparameter search for Fashion-MNIST classifiers on Optuna.",
    rich_markup_mode=None,  # plain click errors: one line, no boxes
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    add_completion=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

EXIT_USAGE = 2  # bad input, as click uses for usage errors
EXIT_INTERRUPTED = 130  # 128 + SIGINT


def _user_error(e: BaseException) -> FmnistSearchError | None:
    """The first of our own errors in ``e``'s cause/context chain."""
    from .core.interrupts import causes

    return next((x for x in causes(e) if isinstance(x, FmnistSearchError)), None)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def command(*args: Any, stoppable: bool = False, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` that reports ``FmnistSearchError`` as one line and a non-zero exit.

    ``stoppable`` commands (those that write trials) handle Ctrl-C and SIGTERM with
    ``interrupts``: recorded, deferred out of storage calls, acted on at their check points.
    The others (reads, the dashboard) keep Python's own Ctrl-C, reported in one line too.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            from .app import EXIT_FAILED, signal_name
            from .core.interrupts import handled, stop_in

            with handled() if stoppable else contextlib.nullcontext():
                try:
                    return fn(*a, **kw)
                except FmnistSearchError as e:
                    raise _fail(str(e), e.exit_code) from None
                except (KeyboardInterrupt, Exception) as e:
                    stop = stop_in(e)
                    if stop is not None:
                        raise _fail(f"interrupted by {signal_name(stop.signum)}", stop.exit_code) from None
                    # Optuna re-raises a storage failure inside its trial bookkeeping as its own
                    # AssertionError; the cause, ours, is what the user needs to read.
                    cause = _user_error(e)
                    if cause is None:
                        raise
                    raise _fail(str(cause), EXIT_FAILED) from None

        app.command(*args, **kwargs)(wrapper)
        return fn

    return decorate


def _model_help() -> str:
    from .core.config import MODEL_NAMES  # not models.list_models: --help must not import torch

    return f"Network to train: {', '.join(MODEL_NAMES)}."


StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="FMNIST_STORAGE",
        help="Optuna storage, any SQLAlchemy URL (sqlite:///..., postgresql://...).",
    ),
]
StudyOpt = Annotated[str, typer.Option("--study", help="Study name.")]


def _storage(url: str, **kwargs: Any):
    from .app import open_store

    return open_store(url, _say, **kwargs)


def _reader(url: str):
    """The store for a command that only reads: a SQLite file on a read-only mount opens read-only."""
    return _storage(url, read_only=True)


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# Options shared by `run` and `worker`: how a process trains, not what the study is.
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto: GPU when present).")]
PrecisionOpt = Annotated[str, typer.Option(help="auto, bf16, fp16 or fp32 (auto: bf16 on GPU, fp32 on CPU).")]
CompileOpt = Annotated[bool, typer.Option(help="torch.compile the model once per process (GPU).")]
DataDirOpt = Annotated[Path | None, typer.Option(envvar="FMNIST_DATA_DIR", help="Folder with the data.")]
DownloadOpt = Annotated[bool, typer.Option(help="Download the data when it is not found.")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Stop starting trials after SECONDS.")]
HeartbeatOpt = Annotated[int, typer.Option(min=1, help="Seconds between a running trial's heartbeats.")]
GraceOpt = Annotated[int, typer.Option(min=2, help="Seconds without heartbeat before a trial counts as dead.")]
PatienceOpt = Annotated[
    float,
    typer.Option(
        min=0,
        envvar="FMNIST_STORAGE_PATIENCE",
        help="Seconds to keep retrying a database that went away (restart, failover) before giving up.",
    ),
]


ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(envvar="FMNIST_ARTIFACTS", help="Artifact folder for weights [default: beside the SQLite file]."),
]
SaveWeightsOpt = Annotated[bool, typer.Option(help="Save each completed trial's weights as an Optuna artifact.")]
PopulationOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Trials trained together as one fused model, each with its own hyperparameters "
        "[default: auto: 32 LeNets or airbenches on a GPU, 1 otherwise].",
    ),
]


def _artifact_dir(storage: str, artifacts: Path | None) -> Path:
    from .search.artifacts import default_dir

    return artifacts if artifacts is not None else default_dir(storage)


# Options that define a study (stored with it; a resume that disagrees is refused).
ModelOpt = Annotated[str | None, typer.Option(help=_model_help())]
EpochsOpt = Annotated[int | None, typer.Option(help="Epochs per trial [default: 10].")]
BatchOpt = Annotated[int | None, typer.Option(help="SGD batch size [default: 256].")]
LrMinOpt = Annotated[float | None, typer.Option(help="Lower end of the log-uniform lr [default: 1e-3; LeNet: 0.01].")]
LrMaxOpt = Annotated[float | None, typer.Option(help="Upper end of the lr range [default: 0.5; LeNet: 0.4].")]
MomentumOpt = Annotated[float | None, typer.Option(help="Fixed SGD momentum [default: 0.9].")]
SamplerOpt = Annotated[str | None, typer.Option(help="tpe, random, cmaes, gp, qmc or grid [default: tpe].")]
PrunerOpt = Annotated[str | None, typer.Option(help="median, sha, hyperband or none [default: median].")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampler, split and training seed [default: 0].")]
ValSizeOpt = Annotated[int | None, typer.Option(help="Stratified validation images [default: 10000].")]
TrainSizeOpt = Annotated[int | None, typer.Option(help="Train on a stratified subset of this many images.")]
NewStudyOpt = Annotated[str | None, typer.Option("--study", help="Study name [default: the model name].")]


PresetOpt = Annotated[
    str | None, typer.Option(help="A shipped preset (e.g. seed-report), your studies/NAME.toml, or a .toml path.")
]
ModelsOpt = Annotated[str | None, typer.Option(help="With --preset: only these of its models (comma-separated).")]
SpaceOpt = Annotated[str | None, typer.Option(help="Search space: lr (lr only) or full [default: lr].")]
FixOpt = Annotated[
    list[str] | None, typer.Option(help="Hold a hyperparameter fixed, e.g. --fix schedule=cosine (repeatable).")
]


TrialsOpt = Annotated[
    int | None, typer.Option(min=1, help="Trials to add to the study [default: 30, or the preset's].")
]


# --- option groups: each declared once, taken whole by the commands that share it ---


@dataclass(frozen=True)
class StudyOptions:
    """Which study to create or resume, and the settings it is created with (create, run)."""

    model: ModelOpt = None
    trials: TrialsOpt = None
    study: NewStudyOpt = None
    storage: StorageOpt = DEFAULT_STORAGE
    preset: PresetOpt = None
    models: ModelsOpt = None
    epochs: EpochsOpt = None
    batch_size: BatchOpt = None
    lr_min: LrMinOpt = None
    lr_max: LrMaxOpt = None
    momentum: MomentumOpt = None
    sampler: SamplerOpt = None
    pruner: PrunerOpt = None
    seed: SeedOpt = None
    val_size: ValSizeOpt = None
    train_size: TrainSizeOpt = None
    space: SpaceOpt = None
    fix: FixOpt = None

    # The options that are StudySpec fields of the same name (tests/test_cli.py checks them).
    SETTINGS: ClassVar[tuple[str, ...]] = (
        "epochs", "batch_size", "lr_min", "lr_max", "momentum", "sampler", "pruner", "seed", "val_size",
        "train_size", "space",
    )  # fmt: skip

    def settings(self) -> dict[str, Any]:
        """The study settings these options give (an option left out gives none)."""
        given = {k: getattr(self, k) for k in self.SETTINGS if getattr(self, k) is not None}
        from .core.config import parse_fixed

        fixed = parse_fixed(self.fix)
        if fixed:
            given["fixed"] = fixed
        return given


@dataclass(frozen=True)
class WorkOptions:
    """How a worker process trains and holds on to its store (run, worker)."""

    device: DeviceOpt = "auto"
    precision: PrecisionOpt = "auto"
    compile: CompileOpt = False
    data_dir: DataDirOpt = None
    download: DownloadOpt = True
    timeout: TimeoutOpt = None
    heartbeat_interval: HeartbeatOpt = HEARTBEAT_INTERVAL_S
    grace_period: GraceOpt = GRACE_PERIOD_S
    storage_patience: PatienceOpt = PATIENCE_S
    artifacts: ArtifactsOpt = None
    save_weights: SaveWeightsOpt = True
    population: PopulationOpt = None

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:  # Typer's min is inclusive
            raise FmnistSearchError(f"--timeout must be a number of seconds > 0, got {self.timeout:g}")

    @property
    def beat(self) -> dict[str, Any]:
        return {"heartbeat_interval": self.heartbeat_interval, "grace_period": self.grace_period}

    def artifact_dir(self, storage: str) -> Path | None:
        return _artifact_dir(storage, self.artifacts) if self.save_weights else None


def takes(**groups: type) -> Callable[[F], F]:
    """Give a command whole option groups: ``@takes(study=StudyOptions)`` makes every field
    of StudyOptions an option of the command, and calls it with ``study=StudyOptions(...)``."""

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        hints = get_type_hints(fn, include_extras=True)
        params = []
        for p in signature.parameters.values():
            if p.name in groups:
                group_hints = get_type_hints(groups[p.name], include_extras=True)
                params += [
                    inspect.Parameter(
                        f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=group_hints[f.name]
                    )
                    for f in dataclasses.fields(groups[p.name])
                ]
            else:
                params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints[p.name]))

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            for name, group in groups.items():
                kwargs[name] = group(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(group)})
            return fn(**kwargs)

        wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper  # type: ignore[return-value]

    return decorate


@command(stoppable=True)
@takes(options=StudyOptions)
def create(options: StudyOptions) -> None:
    """Create a study (or raise an existing one's target by TRIALS) without running trials: for `worker`s."""
    from .app import open_with_target, plan_studies

    o = options
    beat = {"heartbeat_interval": HEARTBEAT_INTERVAL_S, "grace_period": GRACE_PERIOD_S}
    for name, requested, n, base in plan_studies(o.preset, o.model, o.models, o.study, o.settings(), o.trials):
        _, _, spec, target = open_with_target(o.storage, name, requested, n, beat, _say, base)
        _say(f"study {name!r} ({spec.model}) has a target of {target} trials; start workers with:")
        _say(f"  fmnist-search worker --study {name} --storage URL")


@command(stoppable=True)
@takes(options=StudyOptions, work=WorkOptions)
def run(
    options: StudyOptions,
    work: WorkOptions,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 1,
    gpus: Annotated[str | None, typer.Option(help="Comma-separated GPU ids: one worker per GPU.")] = None,
    workers_per_gpu: Annotated[int, typer.Option(min=1, help="Workers packed on each GPU of --gpus.")] = 1,
) -> None:
    """Create or resume a study and run TRIALS more trials in it (in one or many processes)."""
    import os

    from .app import open_with_target, plan_studies, resolve_runtime, spawn_workers, work_here
    from .search.workers import plan_workers

    o = options
    if gpus is None and workers_per_gpu != 1:
        raise FmnistSearchError("--workers-per-gpu needs --gpus")
    if gpus is not None and jobs != 1:
        raise FmnistSearchError("use --jobs (CPU processes) or --gpus (one worker per GPU), not both")
    gpu_ids = [g.strip() for g in gpus.split(",")] if gpus is not None else None
    if gpu_ids is not None and not all(g.isdigit() for g in gpu_ids):
        raise FmnistSearchError(f"--gpus takes comma-separated GPU numbers like 0,1,2, got {gpus!r}")
    plan = plan_studies(o.preset, o.model, o.models, o.study, o.settings(), o.trials)
    workers = plan_workers(jobs, gpu_ids, workers_per_gpu, os.cpu_count() or 1)
    here = len(workers) == 1 and gpu_ids is None
    if here:
        resolve_runtime(work.device, work.precision)  # a bad --device fails before the store is touched
    beat = {**work.beat, "patience": work.storage_patience}
    for name, requested, n, base in plan:
        store, opt_study, spec, target = open_with_target(o.storage, name, requested, n, beat, _say, base)
        if here:
            with _RunProgress(n, spec.epochs) as progress:
                work_here(store, o.storage, name, spec, work, progress, _say)
        else:
            spawn_workers(workers, name, o.storage, work, target, _say)
        _print_summary(opt_study)


def _say(message: str) -> None:
    err.print(message, markup=False, highlight=False)


@command(stoppable=True)
@takes(work=WorkOptions)
def worker(
    study: StudyOpt,
    work: WorkOptions,
    storage: StorageOpt = DEFAULT_STORAGE,
    label: Annotated[str | None, typer.Option(help="Name shown on this worker's lines and trials.")] = None,
    bars: Annotated[bool, typer.Option(help="Progress bars (off: one line per trial).")] = True,
) -> None:
    """Join a study (on any machine that reaches its storage) and work until it has its trials.

    A worker started before its database or study is ready (containers, Kubernetes) waits
    for both, up to --storage-patience seconds, saying so.
    """
    from .app import resolve_runtime, work_here
    from .search.study import stored_spec
    from .search.workers import wait_for_study

    if work.grace_period <= work.heartbeat_interval:
        raise FmnistSearchError("--grace-period must be longer than --heartbeat-interval")
    resolve_runtime(work.device, work.precision)
    store = _storage(storage, heartbeat=True, wait=True, patience=work.storage_patience, **work.beat)
    existing = wait_for_study(store, study, work.storage_patience, say=_say)
    spec = stored_spec(existing)
    with _RunProgress(None, spec.epochs, bars=bars, prefix=f"[{label}] " if label else "") as progress:
        work_here(store, storage, study, spec, work, progress, _say, label=label)


class _RunProgress:
    """Rich progress: the study's trials and the current trial's epochs, plus a line per trial."""

    def __init__(self, trials: int | None, epochs: int, bars: bool = True, prefix: str = "") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.epochs = epochs
        self.prefix = prefix
        self.waited = False
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
            transient=True,  # the bars go when done; the per-trial lines stay
            disable=not bars,
        )
        self.study_task = self.progress.add_task("trials", total=trials)
        self.epoch_task = self.progress.add_task("epochs", total=epochs)

    def __enter__(self) -> _RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stop(self) -> None:
        self.progress.stop()

    def on_epoch(self, number: int, m: Any) -> None:
        self.progress.update(
            self.epoch_task,
            completed=m.epoch,
            description=f"trial {number}: epoch {m.epoch}/{self.epochs} val {m.val_accuracy:.4f}",
        )

    def on_trial(self, study: Any, trial: Any) -> None:
        from .search.record import TrialRecord

        a = TrialRecord.of(trial)
        line = f"{self.prefix}trial {trial.number} {trial.state.name}: lr={trial.params.get('lr', float('nan')):.4g}"
        if a.val_accuracy is not None:
            line += f" val={a.val_accuracy:.4f} after {a.epochs_completed} epochs, {a.throughput or 0:,.0f} samples/s"
        if a.test_accuracy is not None:
            line += f" test={a.test_accuracy:.4f}"
        if a.fail_reason is not None:
            line += f" ({a.fail_reason})"
        if self.progress.disable:
            _say(line)
        else:
            self.progress.console.print(line, markup=False, highlight=False)
        self.progress.advance(self.study_task)
        self.progress.reset(self.epoch_task, description="epochs")

    def on_wait(self, census: Any) -> None:
        if not self.waited:
            _say(f"{self.prefix}all trials handed out; waiting for {census.running} running trial(s) to finish")
            self.waited = True


def _print_summary(study: Any) -> None:
    from .search.export import best_trial, state_counts
    from .search.record import TrialRecord

    counts = state_counts(study)
    table = Table(title=f"study {study.study_name}")
    for col in ("trials", *counts):
        table.add_column(col, justify="right")
    table.add_row(str(sum(counts.values())), *(str(v) for v in counts.values()))
    out.print(table)
    best = best_trial(study)
    if best is None:
        out.print("no completed trial yet")
        return
    a = TrialRecord.of(best)
    test = a.test_accuracy if a.test_accuracy is not None else float("nan")
    out.print(
        f"best trial {best.number}: val_accuracy={best.value:.4f} test_accuracy={test:.4f} "
        f"params={best.params} throughput={a.throughput or 0:,.0f} samples/s on {a.device}",
        markup=False,
        highlight=False,
    )


@command()
def studies(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """List studies: name, model, trials by state, best validation and test accuracy."""
    import optuna

    from .search.export import best_trial, state_counts
    from .search.record import TrialRecord

    store = _reader(storage)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    if not summaries:
        out.print("no studies yet; start one with: fmnist-search run --model lenet")
        return
    table = Table()
    for col in ("study", "model", "complete", "pruned", "fail", "running", "best val", "its test"):
        table.add_column(col)
    for s in summaries:
        study = optuna.load_study(study_name=s.study_name, storage=store)
        counts = state_counts(study)
        best = best_trial(study)
        table.add_row(
            s.study_name,
            str(study.user_attrs.get("model", "?")),
            *(str(counts[k]) for k in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")),
            f"{best.value:.4f}" if best else "-",
            f"{TrialRecord.of(best).test_accuracy or float('nan'):.4f}" if best else "-",
        )
    out.print(table)


@command()
def show(study: StudyOpt, storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """The best trial of a study: params, accuracies, throughput, device."""
    from .search.export import best_trial, state_counts
    from .search.study import load_study

    s = load_study(_reader(storage), study)
    best = best_trial(s)
    settings = ", ".join(f"{k}={v}" for k, v in s.user_attrs.items())
    out.print(f"study {study}: {settings}", markup=False, highlight=False)
    out.print(f"trials: {state_counts(s)}", markup=False, highlight=False)
    if best is None:
        raise FmnistSearchError(f"study {study!r} has no completed trial yet")
    table = Table(title=f"best trial {best.number}", show_header=False)
    table.add_column("key")
    table.add_column("value")
    table.add_row("val_accuracy", f"{best.value:.4f}")
    for k, v in best.params.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    for k, v in best.user_attrs.items():
        if k != "history":
            table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)


@command()
def export(
    study: StudyOpt,
    storage: StorageOpt = DEFAULT_STORAGE,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="CSV file [default: stdout].")] = None,
    top: Annotated[int | None, typer.Option(min=1, help="Only the best N trials.")] = None,
    all_states: Annotated[bool, typer.Option("--all", help="Every trial, not just completed ones.")] = False,
) -> None:
    """Write the study's trials as CSV, best first."""
    from .search.export import trials_frame
    from .search.study import load_study

    frame = trials_frame(load_study(_reader(storage), study), include_all=all_states, top=top)
    if output is None:
        frame.to_csv(sys.stdout, index=False)
        return
    try:
        frame.to_csv(output, index=False)
    except OSError as e:
        raise FmnistSearchError(f"cannot write {output}: {e.strerror}") from None
    err.print(f"wrote {len(frame)} trials to {output}", markup=False, highlight=False)


@command()
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    artifacts: ArtifactsOpt = None,
) -> None:
    """Serve optuna-dashboard on the same store (and its artifact folder: trial weights).

    Ctrl-C or SIGTERM stops it at once: the server runs in a thread, and the main thread
    only waits for a signal or for the server to fail, so the signal never lands inside a
    request (where one could be swallowed, as in the worker loop).
    """
    import signal
    import threading

    from optuna_dashboard import run_server

    from .search.artifacts import open_store
    from .search.study import mask_url

    store = _reader(storage)
    art_dir = _artifact_dir(storage, artifacts)
    stop = threading.Event()
    failed: list[OSError] = []

    def serve() -> None:
        try:
            run_server(store, host=host, port=port, artifact_store=open_store(art_dir))
        except OSError as e:
            failed.append(e)
        finally:
            stop.set()

    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        threading.Thread(target=serve, name="optuna-dashboard", daemon=True).start()
        err.print(f"optuna-dashboard for {mask_url(storage)} on http://{host}:{port}/ (Ctrl-C to stop)", markup=False)
        while not stop.wait(0.5):  # a timeout, so the signal handler gets to run
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failed:
        raise FmnistSearchError(f"cannot listen on {host}:{port}: {failed[0].strerror}; try --port")


@command("data")
def data_cmd(
    data_dir: Annotated[Path | None, typer.Option(envvar="FMNIST_DATA_DIR", help="Folder with the data.")] = None,
    verify: Annotated[bool, typer.Option(help="Check the SHA-256 of the files found.")] = True,
) -> None:
    """Where the data was found, whether it verified, and how to get it."""
    from .engine import data as data_mod

    for loc in data_mod.survey(data_dir):
        found = sum(p is not None for p in loc.files.values())
        out.print(f"{loc.directory}: {found}/4 files", markup=False, highlight=False)
    location = data_mod.locate(data_dir)
    if location is None:
        raise FmnistSearchError(f"Fashion-MNIST not found; {data_mod.HOW_TO_GET}")
    out.print(f"using {location.directory}", markup=False, highlight=False)
    if verify:
        ds = data_mod.load(data_dir, allow_download=False)
        out.print(
            f"verified: SHA-256 of all four files matches; "
            f"{len(ds.train_labels)} train, {len(ds.test_labels)} test images",
            markup=False,
            highlight=False,
        )


@command()
def report(
    study: Annotated[list[str], typer.Option("--study", help="Study name (repeatable).")],
    storage: StorageOpt = DEFAULT_STORAGE,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Markdown file [default: stdout].")] = None,
    csv: Annotated[Path | None, typer.Option(help="Also write the table as CSV.")] = None,
) -> None:
    """The report's Table 1 for these studies, with the report's figures alongside."""
    from .search.report import report_frame, to_markdown
    from .search.study import load_study

    store = _reader(storage)
    frame = report_frame([load_study(store, name) for name in study])
    markdown = to_markdown(frame)
    _write(output, markdown, what=f"{len(frame)} rows")
    if csv is not None:
        _write(csv, frame.to_csv(index=False), what=f"{len(frame)} rows")


def _write(path: Path | None, text: str, what: str) -> None:
    if path is None:
        out.print(text, markup=False, highlight=False, end="")
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise FmnistSearchError(f"cannot write {path}: {e.strerror}") from None
    _say(f"wrote {what} to {path}")


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
    import optuna_dashboard

    from .search.plots import study_figures, write_html
    from .search.study import load_study
    from .search.summary import summary_page

    store = _reader(storage)
    s = load_study(store, study)
    figures = study_figures(s)
    title = f"fmnist-search: {study}"
    try:
        paths = write_html(figures, output_dir, title, page=summary_page(s, figures, title))
    except OSError as e:
        raise FmnistSearchError(f"cannot write to {output_dir}: {e.strerror}") from None
    if dashboard and store.read_only:
        _say("the store is read-only: the learning curves are not attached for optuna-dashboard")
    elif dashboard:  # optuna-dashboard draws Optuna's plots itself; this adds the learning curves
        optuna_dashboard.save_plotly_graph_object(s, figures["learning_curves"], graph_object_id="learning-curves")
    _say(f"wrote {len(paths)} files to {output_dir}/: {', '.join(p.name for p in paths)}")


WeightsOpt = Annotated[Path | None, typer.Option(help="A weights file saved by `train --save` (instead of --study).")]
TrialOpt = Annotated[int | None, typer.Option(help="Trial number [default: the best trial].")]


@command()
def evaluate(
    study: Annotated[str | None, typer.Option(help="Study name.")] = None,
    trial: TrialOpt = None,
    weights: WeightsOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    artifacts: ArtifactsOpt = None,
    output_dir: Annotated[Path, typer.Option(help="Folder for the confusion-matrix HTML.")] = Path("."),
    tta_flip: Annotated[
        bool | None,
        typer.Option(
            help="Average each image's and its mirror image's predictions [default: as the trial's recipe, "
            "so its stored test accuracy is reproduced; off for --weights]."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    data_dir: DataDirOpt = None,
    download: DownloadOpt = True,
) -> None:
    """Test accuracy, per-class accuracy and the confusion matrix of a trial's (or a file's) weights."""
    import re

    from .app import load_dataset, load_model, resolve_runtime
    from .engine.data import CLASSES
    from .engine.inference import confusion_matrix, per_class_accuracy
    from .engine.train import to_device
    from .search.plots import confusion_figure

    label, _, model, recipe_tta = load_model(
        study, trial, weights, lambda: _reader(storage), _artifact_dir(storage, artifacts)
    )
    tta_flip = recipe_tta if tta_flip is None else tta_flip
    dev, _ = resolve_runtime(device, "fp32")
    ds = load_dataset(data_dir, download)
    x, y = to_device(ds.test_images, ds.test_labels, dev)
    matrix = confusion_matrix(model.to(dev), x, y, tta_flip=tta_flip)
    accuracy = matrix.diag().sum().item() / matrix.sum().item()
    how = " with flip TTA" if tta_flip else ""
    out.print(f"{label}: test accuracy {accuracy:.4f} on {len(y)} images{how}", markup=False, highlight=False)
    per_class = Table(title="per class")
    for col in ("class", "accuracy", "correct", "images"):
        per_class.add_column(col, justify="left" if col == "class" else "right")
    for i, (name, acc) in enumerate(zip(CLASSES, per_class_accuracy(matrix), strict=True)):
        per_class.add_row(f"{i} {name}", f"{acc:.3f}", str(matrix[i, i].item()), str(matrix[i].sum().item()))
    out.print(per_class)
    confusion = Table(title="confusion matrix (rows: true class, columns: predicted)")
    confusion.add_column("true")
    for i in range(len(CLASSES)):
        confusion.add_column(str(i), justify="right")
    for i, name in enumerate(CLASSES):
        confusion.add_row(f"{i} {name}", *(str(v) for v in matrix[i].tolist()))
    out.print(confusion)
    path = output_dir / f"confusion-{re.sub(r'[^A-Za-z0-9._-]+', '-', label)}.html"
    output_dir.mkdir(parents=True, exist_ok=True)
    confusion_figure(matrix.tolist(), list(CLASSES), f"{label}: confusion matrix").write_html(path)
    out.print(f"test_accuracy={accuracy:.4f}", markup=False, highlight=False)
    _say(f"wrote {path}")


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
    import torch

    from .app import load_model
    from .engine.data import CLASSES
    from .engine.inference import load_image, predict_images

    loaded = [load_image(p) for p in images]  # every file is checked before the model is loaded
    label, _, model, _ = load_model(study, trial, weights, lambda: _reader(storage), _artifact_dir(storage, artifacts))
    probs = predict_images(model, torch.stack([img for img, _ in loaded]), torch.device("cpu"))
    for path, (_, inverted), p in zip(images, loaded, probs, strict=True):
        k = int(p.argmax())
        note = " (inverted: dark garment on light background)" if inverted else ""
        out.print(f"{path}: {CLASSES[k]} {p[k].item():.3f}{note}", markup=False, highlight=False)
    _say(f"model: {label}")


@command(stoppable=True)
def train(
    model: ModelOpt = None,
    preset: PresetOpt = None,
    params: Annotated[str | None, typer.Option(help="Hyperparameters as JSON, e.g. '{\"lr\": 0.05}'.")] = None,
    from_study: Annotated[str | None, typer.Option(help="Use this study's best (or --trial N) configuration.")] = None,
    trial: TrialOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    epochs: Annotated[int | None, typer.Option(help="Override the configuration's epochs.")] = None,
    seed: Annotated[int | None, typer.Option(help="Weights, batch order and split seed [default: 0].")] = None,
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
    import torch

    from .app import load_dataset, resolve_runtime, train_config
    from .core.config import check_recipe
    from .engine import data as data_mod
    from .engine.devices import tune_backend
    from .engine.models import create_model, list_models
    from .engine.train import TrainConfig, to_device

    name, config, split = train_config(model, preset, params, from_study, trial, lambda: _reader(storage))
    if epochs is not None:
        config["epochs"] = epochs
    split.update(_given(val_size=val_size, train_size=train_size, seed=seed, full_train=full_train))
    full_train = bool(split.get("full_train", False))
    check_recipe(config)
    if "lr" not in config:
        raise FmnistSearchError("no learning rate: give --params '{\"lr\": 0.05}', a preset with one, or --from-study")
    dev, prec = resolve_runtime(device, precision)
    run_seed = split.get("seed", 0)
    cfg = TrainConfig(**config, seed=run_seed, precision=prec)
    if name not in list_models():
        create_model(name)  # raises the "unknown model ...; choose one of" error before any data is loaded
    ds = load_dataset(data_dir, download)
    splits = data_mod.make_splits(ds, split.get("val_size", 10_000), split.get("train_size"), run_seed)
    train_xy, val_xy = splits.train, splits.val
    if full_train:
        train_xy = (torch.cat([train_xy[0], val_xy[0]]), torch.cat([train_xy[1], val_xy[1]]))
    tr, va, te = (to_device(*xy, dev) for xy in (train_xy, val_xy, splits.test))
    tune_backend(dev)  # as every trial gets: `train` is how the best recipe is retrained
    _train_one(name, cfg, config, dev, prec, compile, tr, va, te, full_train, run_seed, save)


def _train_one(name, cfg, config, dev, prec, compile, tr, va, te, full_train, run_seed, save) -> None:
    import torch

    from .engine.teachers import teacher_for
    from .engine.train import Diverged, evaluate, train_recipe
    from .engine.weights import weights_payload

    teacher = teacher_for(cfg.teacher, tr, run_seed, prec, say=_say) if cfg.teacher else None
    out.print(f"train {name} on {len(tr[0])} images ({dev}, {prec}): {config}", markup=False, highlight=False)

    def on_epoch(m: Any) -> None:
        val = "" if full_train else f" val_acc={m.val_accuracy:.4f}"
        out.print(
            f"epoch {m.epoch}/{cfg.epochs}: train_loss={m.train_loss:.4f} train_acc={m.train_accuracy:.4f}{val} "
            f"({m.train_time_s:.1f} s, {m.samples / m.train_time_s:,.0f} samples/s)",
            markup=False,
            highlight=False,
        )

    try:
        built, _ = train_recipe(name, cfg, tr, None if full_train else va, compiled={} if compile else None,
                                teacher=teacher, on_epoch_end=on_epoch)  # fmt: skip
    except Diverged as e:
        raise FmnistSearchError(f"{e}; try a lower lr") from None
    test_accuracy, _ = evaluate(built.runnable, *te, tta_flip=cfg.tta_flip)  # fp32, as `evaluate` reproduces it
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(weights_payload(built.module, name), save)
        _say(f"saved weights to {save}")
    out.print(f"test_accuracy={test_accuracy:.4f}", markup=False, highlight=False)


def main() -> None:
    app()
