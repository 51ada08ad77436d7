"""The Typer CLI: the only place that reads argv/env, prints, and exits with codes.

Every command turns library errors (``FmnistSearchError``) into one ``error:`` line on
stderr and exit code 2; Ctrl-C exits 130 with the store intact.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .config import DEFAULT_STORAGE
from .errors import FmnistSearchError

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


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


def command(*args: Any, **kwargs: Any) -> Callable[[F], F]:
    """``app.command`` that reports ``FmnistSearchError`` as one line and a non-zero exit."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*a: Any, **kw: Any) -> Any:
            try:
                return fn(*a, **kw)
            except FmnistSearchError as e:
                raise _fail(str(e)) from None

        app.command(*args, **kwargs)(wrapper)
        return fn

    return decorate


def _model_help() -> str:
    from .models import list_models

    return f"Network to train: {', '.join(list_models())}."


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
    from .study import make_storage

    return make_storage(url, heartbeat=kwargs.pop("heartbeat", False), **kwargs)


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# Options shared by `run` and `worker`: how a process trains, not what the study is.
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto: GPU when present).")]
PrecisionOpt = Annotated[str, typer.Option(help="auto, bf16, fp16 or fp32 (auto: bf16 on GPU, fp32 on CPU).")]
CompileOpt = Annotated[bool, typer.Option(help="torch.compile the model once per process (GPU).")]
DataDirOpt = Annotated[Path | None, typer.Option(envvar="FMNIST_DATA_DIR", help="Folder with the data.")]
DownloadOpt = Annotated[bool, typer.Option(help="Download the data when it is not found.")]
TimeoutOpt = Annotated[float | None, typer.Option(min=0, help="Stop starting trials after SECONDS.")]
HeartbeatOpt = Annotated[int, typer.Option(min=1, help="Seconds between a running trial's heartbeats.")]
GraceOpt = Annotated[int, typer.Option(min=2, help="Seconds without heartbeat before a trial counts as dead.")]


ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(envvar="FMNIST_ARTIFACTS", help="Artifact folder for weights [default: beside the SQLite file]."),
]
SaveWeightsOpt = Annotated[bool, typer.Option(help="Save each completed trial's weights as an Optuna artifact.")]


def _artifact_dir(storage: str, artifacts: Path | None) -> Path:
    from .artifacts import default_dir

    return artifacts if artifacts is not None else default_dir(storage)


# Options that define a study (stored with it; a resume that disagrees is refused).
ModelOpt = Annotated[str | None, typer.Option(help=_model_help())]
EpochsOpt = Annotated[int | None, typer.Option(help="Epochs per trial [default: 10].")]
BatchOpt = Annotated[int | None, typer.Option(help="SGD batch size [default: 256].")]
LrMinOpt = Annotated[float | None, typer.Option(help="Lower end of the log-uniform lr range [default: 1e-3].")]
LrMaxOpt = Annotated[float | None, typer.Option(help="Upper end of the lr range [default: 0.5].")]
MomentumOpt = Annotated[float | None, typer.Option(help="Fixed SGD momentum [default: 0.9].")]
SamplerOpt = Annotated[str | None, typer.Option(help="tpe, random, cmaes, gp or qmc [default: tpe].")]
PrunerOpt = Annotated[str | None, typer.Option(help="median, sha, hyperband or none [default: median].")]
SeedOpt = Annotated[int | None, typer.Option(help="Sampler, split and training seed [default: 0].")]
ValSizeOpt = Annotated[int | None, typer.Option(help="Stratified validation images [default: 10000].")]
TrainSizeOpt = Annotated[int | None, typer.Option(help="Train on a stratified subset of this many images.")]
NewStudyOpt = Annotated[str | None, typer.Option("--study", help="Study name [default: the model name].")]


PresetOpt = Annotated[str | None, typer.Option(help="Preset name in studies/ (e.g. seed-report) or a .toml path.")]
ModelsOpt = Annotated[str | None, typer.Option(help="With --preset: only these of its models (comma-separated).")]
SpaceOpt = Annotated[str | None, typer.Option(help="Search space: lr (lr only) or full [default: lr].")]
FixOpt = Annotated[
    list[str] | None, typer.Option(help="Hold a hyperparameter fixed, e.g. --fix schedule=cosine (repeatable).")
]


def _parse_fixed(items: list[str] | None) -> dict[str, Any] | None:
    """``["momentum=0.9", "schedule=cosine"]`` -> {"momentum": 0.9, "schedule": "cosine"} (JSON values)."""
    import json

    if not items:
        return None
    fixed = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FmnistSearchError(f"--fix takes NAME=VALUE, got {item!r}")
        try:
            fixed[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            fixed[key.strip()] = raw  # a bare word: a string such as cosine
    return fixed


def _plan_studies(
    preset: str | None, model: str | None, models: str | None, study: str | None, flags: dict[str, Any],
    trials: int | None,
) -> list[tuple[str, dict[str, Any], int]]:  # fmt: skip
    """(study name, requested settings, trials) for each study this command works on.

    Settings flow one way: preset < flags; a resumed study's stored settings must agree.
    """
    from .config import load_preset

    if preset is None:
        if models is not None:
            raise FmnistSearchError("--models selects among a preset's models; use it with --preset")
        if model is None and study is None:
            raise FmnistSearchError("give --model (a new study), --study NAME (resume one) or --preset NAME")
        requested = {"model": model, **flags} if model else flags
        return [(study or model, requested, trials or 30)]  # type: ignore[list-item]
    p = load_preset(preset)
    chosen = [model] if model else list(p.models)
    if models is not None:
        wanted = [m.strip() for m in models.split(",")]
        unknown = set(wanted) - set(p.models)
        if unknown:
            raise FmnistSearchError(
                f"preset {p.name} has no model {', '.join(sorted(unknown))}; it has {', '.join(p.models)}"
            )
        chosen = [m for m in p.models if m in wanted]
    if not chosen:
        raise FmnistSearchError(f"preset {p.name} names no model; give --model")
    if study is not None and len(chosen) > 1:
        raise FmnistSearchError("--study names one study, but the preset makes one per model; use --models to pick one")
    return [
        (study or p.study.format(model=m), {**p.settings, **flags, "model": m}, trials or p.trials or 30)
        for m in chosen
    ]


def _open(storage: str, name: str, requested: dict[str, Any], trials: int, beat: dict[str, int]):
    """Create or resume the study, check its settings, raise its target by ``trials``."""
    from .study import open_study
    from .workers import set_target

    if beat["grace_period"] <= beat["heartbeat_interval"]:
        raise FmnistSearchError("--grace-period must be longer than --heartbeat-interval")
    store = _storage(storage, heartbeat=True, **beat)
    opt_study, spec = open_study(store, name, requested)
    return store, opt_study, spec, set_target(opt_study, trials)


TrialsOpt = Annotated[
    int | None, typer.Option(min=1, help="Trials to add to the study [default: 30, or the preset's].")
]


@command()
def create(
    model: ModelOpt = None,
    trials: TrialsOpt = None,
    study: NewStudyOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    preset: PresetOpt = None,
    models: ModelsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr_min: LrMinOpt = None,
    lr_max: LrMaxOpt = None,
    momentum: MomentumOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    seed: SeedOpt = None,
    val_size: ValSizeOpt = None,
    train_size: TrainSizeOpt = None,
    space: SpaceOpt = None,
    fix: FixOpt = None,
) -> None:
    """Create a study (or raise an existing one's target by TRIALS) without running trials: for `worker`s."""
    flags = _given(
        epochs=epochs, batch_size=batch_size, lr_min=lr_min, lr_max=lr_max, momentum=momentum,
        sampler=sampler, pruner=pruner, seed=seed, val_size=val_size, train_size=train_size,
        space=space, fixed=_parse_fixed(fix),
    )  # fmt: skip
    beat = {"heartbeat_interval": 10, "grace_period": 60}
    for name, requested, n in _plan_studies(preset, model, models, study, flags, trials):
        _, _, spec, target = _open(storage, name, requested, n, beat)
        _say(f"study {name!r} ({spec.model}) has a target of {target} trials; start workers with:")
        _say(f"  fmnist-search worker --study {name} --storage URL")


@command()
def run(
    model: ModelOpt = None,
    trials: TrialsOpt = None,
    study: NewStudyOpt = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    preset: PresetOpt = None,
    models: ModelsOpt = None,
    epochs: EpochsOpt = None,
    batch_size: BatchOpt = None,
    lr_min: LrMinOpt = None,
    lr_max: LrMaxOpt = None,
    momentum: MomentumOpt = None,
    sampler: SamplerOpt = None,
    pruner: PrunerOpt = None,
    seed: SeedOpt = None,
    val_size: ValSizeOpt = None,
    train_size: TrainSizeOpt = None,
    space: SpaceOpt = None,
    fix: FixOpt = None,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes on this machine.")] = 1,
    gpus: Annotated[str | None, typer.Option(help="Comma-separated GPU ids: one worker per GPU.")] = None,
    workers_per_gpu: Annotated[int, typer.Option(min=1, help="Workers packed on each GPU of --gpus.")] = 1,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = True,
    timeout: TimeoutOpt = None,
    heartbeat_interval: HeartbeatOpt = 10,
    grace_period: GraceOpt = 60,
    artifacts: ArtifactsOpt = None,
    save_weights: SaveWeightsOpt = True,
) -> None:
    """Create or resume a study and run TRIALS more trials in it (in one or many processes)."""
    import os

    from .workers import plan_workers

    if gpus is None and workers_per_gpu != 1:
        raise FmnistSearchError("--workers-per-gpu needs --gpus")
    if gpus is not None and jobs != 1:
        raise FmnistSearchError("use --jobs (CPU processes) or --gpus (one worker per GPU), not both")
    gpu_ids = [g.strip() for g in gpus.split(",")] if gpus is not None else None
    if gpu_ids is not None and not all(g.isdigit() for g in gpu_ids):
        raise FmnistSearchError(f"--gpus takes comma-separated GPU numbers like 0,1,2, got {gpus!r}")
    flags = _given(
        epochs=epochs, batch_size=batch_size, lr_min=lr_min, lr_max=lr_max, momentum=momentum,
        sampler=sampler, pruner=pruner, seed=seed, val_size=val_size, train_size=train_size,
        space=space, fixed=_parse_fixed(fix),
    )  # fmt: skip
    plan = _plan_studies(preset, model, models, study, flags, trials)
    beat = {"heartbeat_interval": heartbeat_interval, "grace_period": grace_period}
    workers = plan_workers(jobs, gpu_ids, workers_per_gpu, os.cpu_count() or 1)
    here = len(workers) == 1 and gpu_ids is None
    if here:
        _resolve_runtime(device, precision)  # a bad --device fails before the store is touched
    art_dir = _artifact_dir(storage, artifacts) if save_weights else None
    for name, requested, n in plan:
        store, opt_study, spec, target = _open(storage, name, requested, n, beat)
        if here:
            _work_here(store, storage, name, spec, device, precision, compile, data_dir, download, timeout, n,
                       artifact_dir=art_dir)  # fmt: skip
        else:
            opts = _worker_args(device, precision, compile, download, timeout, beat, art_dir)
            _spawn_workers(workers, name, storage, data_dir, opts, target)
        _print_summary(opt_study)


def _resolve_runtime(device: str, precision: str) -> tuple[Any, str]:
    from .devices import resolve_device, resolve_precision

    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev)


def _work_here(
    store: Any,
    url: str,
    name: str,
    spec: Any,
    device: str,
    precision: str,
    compile: bool,
    data_dir: Path | None,
    download: bool,
    timeout: float | None,
    trials: int | None,
    label: str | None = None,
    bars: bool = True,
    artifact_dir: Path | None = None,
) -> None:
    """Load the data (once per process), then run this process's share of the study's trials."""
    import os

    import optuna

    from . import data as data_mod
    from .artifacts import open_store
    from .objective import Objective
    from .study import PRUNERS, SAMPLERS, mask_url
    from .train import Diverged
    from .workers import BudgetedStudy, study_lock, work, worker_seed

    dev, prec = _resolve_runtime(device, precision)
    # Our per-trial lines say what happened; Optuna's warnings would repeat it with tracebacks.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dataset = _dataset(data_dir, download)
    splits = data_mod.make_splits(dataset, spec.val_size, spec.train_size, spec.seed)
    existing = len(store.get_all_trials(store.get_study_id_from_name(name), deepcopy=False))
    sampler = SAMPLERS[spec.sampler](spec, worker_seed(spec.seed, label, existing))
    budgeted = BudgetedStudy(name, store, sampler, PRUNERS[spec.pruner](spec), study_lock(url, name))
    prefix = f"[{label}] " if label else ""
    _say(
        f"{prefix}study {name!r} in {mask_url(url)}: {spec.model}, {spec.epochs} epochs, batch {spec.batch_size}, "
        f"lr {spec.lr_min:g}..{spec.lr_max:g}, {spec.sampler}/{spec.pruner}; {len(splits.train[0])} train / "
        f"{len(splits.val[0])} val images from {dataset.source}; device {dev} ({prec}); "
        f"target {budgeted.target} trials"
    )
    extra = {"worker": label or f"pid{os.getpid()}", "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
    with _RunProgress(trials, spec.epochs, bars=bars, prefix=prefix) as progress:
        store = open_store(artifact_dir) if artifact_dir is not None else None
        objective = Objective(
            spec,
            splits,
            dev,
            prec,
            on_epoch=progress.on_epoch,
            compile=compile,
            extra_attrs=extra,
            artifact_store=store,
        )
        try:
            work(budgeted, objective, timeout=timeout, catch=(Diverged,), callbacks=[progress.on_trial],
                 on_wait=progress.on_wait)  # fmt: skip
        except KeyboardInterrupt:
            progress.stop()
            raise _fail(
                f"{prefix}interrupted; finished trials are stored and the running one is marked FAIL in "
                f"{mask_url(url)}; run the same command to resume",
                EXIT_INTERRUPTED,
            ) from None


@functools.cache
def _dataset(data_dir: Path | None, download: bool):
    """Fashion-MNIST, loaded once per process however many studies it works on."""
    from . import data as data_mod

    return data_mod.load(data_dir, allow_download=download)


def _say(message: str) -> None:
    err.print(message, markup=False, highlight=False)


def _worker_args(
    device: str,
    precision: str,
    compile: bool,
    download: bool,
    timeout: float | None,
    beat: dict[str, int],
    artifact_dir: Path | None,
) -> list[str]:
    args = ["--precision", precision, "--compile" if compile else "--no-compile"]
    args += ["--artifacts", str(artifact_dir)] if artifact_dir is not None else ["--no-save-weights"]
    args += ["--download" if download else "--no-download"]
    args += ["--heartbeat-interval", str(beat["heartbeat_interval"]), "--grace-period", str(beat["grace_period"])]
    if device != "auto":
        args += ["--device", device]
    if timeout is not None:
        args += ["--timeout", str(timeout)]
    return args


def _spawn_workers(plans: list[Any], name: str, url: str, data_dir: Path | None, opts: list[str], target: int) -> None:
    """Start one `fmnist-search worker` process per plan and wait for all of them.

    The storage URL travels in the environment, not argv, so its password never shows in `ps`.
    """
    import os
    import signal
    import subprocess
    import time

    from .study import mask_url

    _say(f"study {name!r}: {len(plans)} workers until {target} trials, storage {mask_url(url)}")
    procs = []
    for plan in plans:
        env = {**os.environ, **plan.env, "FMNIST_STORAGE": url}
        if data_dir is not None:
            env["FMNIST_DATA_DIR"] = str(data_dir)
        args = ["worker", "--study", name, "--label", plan.label, "--no-bars", *opts]
        if plan.device is not None and "--device" not in opts:
            args += ["--device", plan.device]
        procs.append((plan, subprocess.Popen([sys.executable, "-m", "fmnist_search", *args], env=env)))
    try:
        while any(p.poll() is None for _, p in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        for _, p in procs:  # a terminal's Ctrl-C reached them already; a lone SIGINT to us did not
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for _, p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise _fail(
            f"interrupted; finished trials are stored in {mask_url(url)}; run the same command to resume",
            EXIT_INTERRUPTED,
        ) from None
    failed = []
    for plan, p in procs:
        if p.returncode < 0:
            _say(f"worker {plan.label} was killed by signal {-p.returncode}; its trial was retried by the others")
        elif p.returncode != 0:
            failed.append(f"{plan.label} (exit {p.returncode})")
    if failed:
        raise _fail(f"worker(s) failed: {', '.join(failed)}; see their errors above", 1)


@command()
def worker(
    study: StudyOpt,
    storage: StorageOpt = DEFAULT_STORAGE,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    compile: CompileOpt = False,
    data_dir: DataDirOpt = None,
    download: DownloadOpt = True,
    timeout: TimeoutOpt = None,
    heartbeat_interval: HeartbeatOpt = 10,
    grace_period: GraceOpt = 60,
    label: Annotated[str | None, typer.Option(help="Name shown on this worker's lines and trials.")] = None,
    bars: Annotated[bool, typer.Option(help="Progress bars (off: one line per trial).")] = True,
    artifacts: ArtifactsOpt = None,
    save_weights: SaveWeightsOpt = True,
) -> None:
    """Join an existing study (on any machine that reaches its storage) and work until it has its trials."""
    from .study import load_study, stored_spec
    from .workers import TARGET_ATTR

    if grace_period <= heartbeat_interval:
        raise FmnistSearchError("--grace-period must be longer than --heartbeat-interval")
    _resolve_runtime(device, precision)
    store = _storage(storage, heartbeat=True, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    existing = load_study(store, study)
    if TARGET_ATTR not in existing.user_attrs:
        raise FmnistSearchError(f"study {study!r} has no trial target; start it with `fmnist-search run`")
    art_dir = _artifact_dir(storage, artifacts) if save_weights else None
    _work_here(store, storage, study, stored_spec(existing), device, precision, compile, data_dir, download,
               timeout, None, label=label, bars=bars, artifact_dir=art_dir)  # fmt: skip


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
        a = trial.user_attrs
        val = a.get("val_accuracy")
        line = f"{self.prefix}trial {trial.number} {trial.state.name}: lr={trial.params.get('lr', float('nan')):.4g}"
        if val is not None:
            line += f" val={val:.4f} after {a.get('epochs_completed')} epochs, {a.get('throughput', 0):,.0f} samples/s"
        if "test_accuracy" in a:
            line += f" test={a['test_accuracy']:.4f}"
        if "fail_reason" in a:
            line += f" ({a['fail_reason']})"
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
    from .export import best_trial, state_counts

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
    a = best.user_attrs
    out.print(
        f"best trial {best.number}: val_accuracy={best.value:.4f} "
        f"test_accuracy={a.get('test_accuracy', float('nan')):.4f} "
        f"params={best.params} throughput={a.get('throughput', 0):,.0f} samples/s on {a.get('device')}",
        markup=False,
        highlight=False,
    )


@command()
def studies(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """List studies: name, model, trials by state, best validation and test accuracy."""
    import optuna

    from .export import best_trial, state_counts

    store = _storage(storage)
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
            f"{best.user_attrs.get('test_accuracy', float('nan')):.4f}" if best else "-",
        )
    out.print(table)


@command()
def show(study: StudyOpt, storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """The best trial of a study: params, accuracies, throughput, device."""
    from .export import best_trial, state_counts
    from .study import load_study

    s = load_study(_storage(storage), study)
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
    from .export import trials_frame
    from .study import load_study

    frame = trials_frame(load_study(_storage(storage), study), include_all=all_states, top=top)
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
) -> None:
    """Serve optuna-dashboard on the same store."""
    from optuna_dashboard import run_server

    from .study import mask_url

    store = _storage(storage)
    err.print(f"optuna-dashboard for {mask_url(storage)} on http://{host}:{port}/ (Ctrl-C to stop)", markup=False)
    try:
        run_server(store, host=host, port=port)
    except OSError as e:
        raise FmnistSearchError(f"cannot listen on {host}:{port}: {e.strerror}; try --port") from None
    except KeyboardInterrupt:
        pass


@command("data")
def data_cmd(
    data_dir: Annotated[Path | None, typer.Option(envvar="FMNIST_DATA_DIR", help="Folder with the data.")] = None,
    verify: Annotated[bool, typer.Option(help="Check the SHA-256 of the files found.")] = True,
) -> None:
    """Where the data was found, whether it verified, and how to get it."""
    from . import data as data_mod

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


def main() -> None:
    app()
