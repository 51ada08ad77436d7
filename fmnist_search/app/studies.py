"""The application layer: what `run`, `create` and `worker` do, between the command line and the search.

It turns requested settings into studies, runs a worker in this process, starts and relays
worker processes, and turns an interrupt or a lost store into ``Stopped``. It prints
nothing: messages go to a ``say`` callable and progress to a ``Progress``, both the CLI's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import optuna

from ..core.config import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S
from ..core.errors import FmnistSearchError, Stopped, StorageError
from ..core.interrupts import causes, check, cleaning, shielded, stop_in
from ..engine import data as data_mod
from ..engine.devices import resolve_device, resolve_precision
from ..engine.population import default_population
from ..search.artifacts import KEEP_ATTR
from ..search.artifacts import open_store as open_artifacts
from ..search.store import make_storage, sqlite_path, study_lock
from ..search.study import PRUNERS, SAMPLERS, open_study, stored_spec
from ..search.trials import (
    BudgetedStudy,
    TrialContext,
    adopt_heartbeat,
    census,
    claim_stream,
    occupancy,
    raise_target,
    release,
    set_target,
    stream_seed,
    trials_left,
    wait_for_store,
    wait_for_study,
)
from ..search.trials import work as work_loop
from .lines import artifacts_note, at_a_time, search_text, store_text
from .planning import plan_studies
from .processes import (
    EXIT_FAILED,
    RUN_REPORTS,
    finish_command,
    plan_workers,
    signal_name,
    spawn_workers,
    trial_count,
)

if TYPE_CHECKING:  # annotations only
    import torch
    from optuna.trial import FrozenTrial

    from ..core.config import StudySpec
    from ..engine.data import FashionMNIST
    from ..engine.population import EpochMetrics
    from ..search.store import ResilientStorage
    from ..search.trials import Census
    from .options import StudyOptions, WorkOptions

Say = Callable[[str], None]


class Progress(Protocol):
    """What a worker reports while it runs (the CLI draws it)."""

    def on_epoch(self, number: int, metrics: EpochMetrics) -> None: ...
    def on_trial(self, study: optuna.Study, trial: FrozenTrial) -> None: ...
    def on_wait(self, census: Census) -> None: ...
    def stop(self) -> None: ...


def open_study_store(url: str, say: Say, **kwargs: Any) -> ResilientStorage:
    """The study store (storage.make_storage), with Optuna's own log lines silenced."""

    # Our own lines say what happens; Optuna's INFO/WARNING logs would repeat it (with tracebacks).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return make_storage(url, heartbeat=kwargs.pop("heartbeat", False), say=say, **kwargs)


def open_with_target(
    storage: str,
    name: str,
    requested: dict[str, Any],
    trials: int,
    beat: dict[str, Any],
    say: Say,
    base: bool = False,
    keep_weights: int | None = None,
    total: int | None = None,
) -> tuple[ResilientStorage, optuna.Study, StudySpec, int]:
    """Create (with its model's base recipe if ``base``) or resume the study, check its
    settings, raise its target by ``trials`` (or set it to ``total``), under the study's lock,
    and set its ``keep_weights`` bound when given: (store, study, spec, target)."""

    # Resuming by name (no model, no preset) needs a store that is there: a mistyped --storage
    # or the default store from another folder is one line, and creates nothing.
    store = open_study_store(storage, say, heartbeat=True, existing="model" not in requested, **beat)
    lock = study_lock(storage, name, store.retrier)
    with shielded():  # a study is created with its settings and target, or not at all
        with lock:  # a second process opening it meanwhile waits for its settings, not reads half of them
            opt_study, spec = open_study(store, name, requested, base=base)
        target = raise_target(opt_study, trials, lock) if total is None else set_target(opt_study, total, lock)
        if keep_weights is not None:
            opt_study.set_user_attr(KEEP_ATTR, keep_weights)
    check()
    return store, opt_study, spec, target


def planned_trials(options: StudyOptions) -> int | None:
    """The trials ``--trials`` adds (None: the default or the preset's); refused with ``--target``."""
    if options.target is not None and options.trials is not None:
        raise FmnistSearchError("give --trials N (raise the target by N) or --target N (the total), not both")
    return options.trials


def work_runtime(work: WorkOptions) -> tuple[torch.device, str]:
    """A worker's device and precision, and whether its options suit them."""
    dev, prec = resolve_runtime(work.device, work.precision)
    if work.cuda_graphs and dev.type != "cuda":
        raise FmnistSearchError(f"--cuda-graphs needs a CUDA device; this run trains on {dev}")
    if work.cuda_graphs and prec == "fp16":
        raise FmnistSearchError("--cuda-graphs captures fp32 or bf16 steps; use --precision bf16")
    if work.cuda_graphs and work.compile:
        raise FmnistSearchError("--cuda-graphs and --compile both capture the step; choose one")
    return dev, prec


def resolve_runtime(device: str, precision: str) -> tuple[torch.device, str]:

    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev)


def work_here(
    store: ResilientStorage,
    url: str,
    name: str,
    spec: StudySpec,
    work: WorkOptions,
    progress: Progress,
    say: Say,
    label: str | None = None,
) -> None:
    """Load the data (once per process), then run this process's share of the study's trials.
    Each process samples from its own stream (``coordination.claim_stream``, counted in the
    store): processes started together, and a resumed run, never replay the same draws.

    Ctrl-C ends it with ``Stopped`` (exit 130) and SIGTERM with exit 143, wherever they
    land; the trials they interrupt are re-queued (their retries continue from their last
    checkpoints), never left RUNNING, and the message names the command that finishes the
    study. A store that stays unreachable ends it with ``Stopped`` (exit 1).
    """

    prefix = f"[{label}] " if label else ""
    extra = {"worker": label or f"pid{os.getpid()}", "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}
    lock = study_lock(url, name, store.retrier)
    plain = optuna.load_study(study_name=name, storage=store)
    stream = claim_stream(plain, lock)
    adopted = adopt_heartbeat(plain, store, lock)
    if adopted is not None:
        say(
            f"{prefix}this worker uses study {name!r}'s heartbeat interval {adopted['interval']} s and grace "
            f"period {adopted['grace']} s (stored by its first worker; every worker of a study needs the same)"
        )
    budgeted = BudgetedStudy(
        name, store, SAMPLERS[spec.sampler](spec, stream_seed(spec.seed, stream)), PRUNERS[spec.pruner](spec), lock
    )
    target = budgeted.target  # read now: after a lost store, the message cannot ask the store
    try:
        _run_trials(budgeted, url, spec, work, extra, prefix, progress, say)
    except (KeyboardInterrupt, Exception) as e:
        stop = stop_in(e)
        cause = next((x for x in causes(e) if isinstance(x, StorageError)), None)
        if stop is None and cause is None and _deleted(store, name):
            progress.stop()
            raise Stopped(
                f"{prefix}study {name!r} was deleted while this run trained it; nothing was kept", EXIT_FAILED
            ) from None
        if stop is None and cause is None:
            raise
        progress.stop()
        with cleaning():  # a second Ctrl-C must not cut this short
            why = f"interrupted by {signal_name(stop.signum)}" if stop is not None else f"stopped: {cause}"
            what = _release(budgeted, why)
        if stop is not None and os.environ.get(RUN_REPORTS):  # its `run --jobs` says the one error line
            line = f"{prefix}stopped by {signal_name(stop.signum)}; {what}".rstrip("; ")
            raise Stopped(line, stop.exit_code, error=False) from None
        finish = f"finish the study's {trial_count(target)} with: {finish_command(name, url, work)}"
        if stop is None:
            raise Stopped(f"{prefix}{cause}; {what}finished trials are stored; {finish}", EXIT_FAILED) from None
        raise Stopped(
            f"{prefix}interrupted by {signal_name(stop.signum)}; {what}finished trials are stored in "
            f"{store_text(url)}; {finish}",
            stop.exit_code,
        ) from None


def _deleted(store: ResilientStorage, name: str) -> bool:
    """Whether study ``name`` is gone from the store (`delete --force` while a run trains it: its
    writes then fail on records that no longer exist)."""
    try:
        store.get_study_id_from_name(name)
    except KeyError:
        return True
    except Exception:  # the store itself failing is another story, told by the error itself
        return False
    return False


def _release(budgeted: BudgetedStudy, why: str) -> str:
    """Best effort: FAIL and re-queue this process's interrupted trials; say what happened."""

    try:
        done = release(budgeted, why)
    except StorageError:
        if not budgeted.asked:
            return ""
        return (
            f"trial {budgeted.asked[-1]} could not be updated and stays RUNNING until its heartbeat is stale, "
            "then the next worker runs it again; "
        )
    if not done:
        return ""
    return f"{'trial' if len(done) == 1 else 'trials'} {', '.join(map(str, done))} re-queued; "


def _run_trials(
    budgeted: BudgetedStudy,
    url: str,
    spec: StudySpec,
    work: WorkOptions,
    extra: dict[str, Any],
    prefix: str,
    progress: Progress,
    say: Say,
) -> None:

    dev, prec = work_runtime(work)
    left = max(budgeted.target - census(budgeted).counted, 0)  # this run's trials, for the default population
    population, caps = check_population(work.population, spec.model, dev, prec, work.compile, left)
    dataset = load_dataset(work.data_dir, work.download)
    splits = data_mod.make_splits(dataset, spec.val_size, spec.train_size, spec.seed)
    say(
        f"{prefix}study {budgeted.study_name!r} in {store_text(url)}: target {trial_count(budgeted.target)}; "
        f"{spec.model}, {spec.epochs} epoch{'s' if spec.epochs != 1 else ''}, batch {spec.batch_size}, "
        f"{len(splits.train[0])} train / {len(splits.val[0])} val images from {dataset.source}; device {dev} ({prec}"
        + (f", CUDA_VISIBLE_DEVICES={extra['gpu']}" if extra.get("gpu") is not None else "")
        + ")"
        + at_a_time(population, caps)
        + artifacts_note(url, work)
    )
    say(f"{prefix}  {search_text(spec)}")
    objective = TrialContext(
        spec,
        splits,
        dev,
        prec,
        on_epoch=progress.on_epoch,
        compile=work.compile,
        graphs=work.cuda_graphs,
        extra_attrs=extra,
        artifact_store=open_artifacts(art_dir, url) if (art_dir := work.artifact_dir(url)) is not None else None,
        say=lambda message: say(prefix + message),
        checkpoint_every=work.checkpoint_every,
        population_caps=caps,
    )
    work_loop(
        budgeted,
        objective,
        timeout=work.timeout,
        callbacks=[progress.on_trial],
        on_wait=progress.on_wait,
        population=population,
    )
    if population > 1 and objective.populations:
        filled, refills = occupancy(objective.populations)
        say(
            f"{prefix}populations of {population}: {filled:.0%} of their rows filled over all steps, "
            f"{refills} trials joined as refills"
        )


def check_population(
    requested: int | None,
    model: str,
    device: torch.device,
    precision: str,
    compile: bool,
    trials: int | None = None,
) -> tuple[int, dict[str, int]]:
    """Trials asked at once, and a comparison's most per population by model: the requested
    number for every model, else each model's measured default on this device, at most a third
    of the ``trials`` this run has left (a comparison asks its largest and trains each model's
    trials in populations of at most its own)."""

    defaults = {m.strip(): default_population(m.strip(), device, trials) for m in model.split(",")}
    population = max(defaults.values()) if requested is None else requested
    caps = defaults if requested is None and len(set(defaults.values())) > 1 else {}
    if population > 1 and precision == "fp16":
        raise FmnistSearchError("--population trains in fp32 or bf16; use --precision bf16 (or --population 1)")
    if population > 1 and compile:
        if requested is None:
            return 1, {}  # --compile asks for single-trial training
        raise FmnistSearchError("--compile compiles single-trial training; use --population 1 with it")
    return population, caps


@functools.cache
def load_dataset(data_dir: Path | None, download: bool) -> FashionMNIST:
    """Fashion-MNIST, loaded once per process however many studies it works on."""

    return data_mod.load(data_dir, allow_download=download)


ProgressFactory = Callable[[int | None, int], Any]  # (trials or None, epochs) -> a context manager giving a Progress


def create(options: StudyOptions, say: Say) -> list[tuple[str, str, int]]:
    """Create the studies ``options`` name (or raise their targets) without running trials:
    (study, model, target) each."""

    o = options
    beat = {"heartbeat_interval": HEARTBEAT_INTERVAL_S, "grace_period": GRACE_PERIOD_S}
    made = []
    plan = plan_studies(o.preset, o.model, o.models, o.study, o.settings(), planned_trials(o))
    for name, requested, n, base in plan:
        _, _, spec, target = open_with_target(o.storage, name, requested, n, beat, say, base, o.keep_weights, o.target)
        made.append((name, spec.model, target))
    return made


def run(
    options: StudyOptions,
    work: WorkOptions,
    jobs: int,
    gpus: str | None,
    workers_per_gpu: int,
    progress: ProgressFactory,
    on_done: Callable[[Any], None],
    say: Say,
) -> None:
    """Create or resume each study ``options`` name and run its trials: in this process, or in
    ``jobs`` worker processes (one per GPU of ``gpus``, ``workers_per_gpu`` each). ``on_done``
    gets each study when its trials are done."""

    o = options
    if gpus is None and workers_per_gpu != 1:
        raise FmnistSearchError("--workers-per-gpu needs --gpus")
    if gpus is not None and jobs != 1:
        raise FmnistSearchError("use --jobs (CPU processes) or --gpus (one worker per GPU), not both")
    gpu_ids = [g.strip() for g in gpus.split(",")] if gpus is not None else None
    if gpu_ids is not None and not all(g.isdigit() for g in gpu_ids):
        raise FmnistSearchError(f"--gpus takes comma-separated GPU numbers like 0,1,2, got {gpus!r}")
    plan = plan_studies(o.preset, o.model, o.models, o.study, o.settings(), planned_trials(o))
    workers = plan_workers(jobs, gpu_ids, workers_per_gpu, os.cpu_count() or 1)
    here = len(workers) == 1 and gpu_ids is None
    # A bad --device (or --cuda-graphs without CUDA), or missing data, fails before the store is touched:
    # this process loads the data it trains on once; for worker processes, which load their own, it is only found.
    if here:
        work_runtime(work)
        load_dataset(work.data_dir, work.download)
    else:
        data_mod.find(work.data_dir, allow_download=work.download)
    beat = {**work.beat, "patience": work.storage_patience}
    for name, requested, n, base in plan:
        store, opt_study, spec, target = open_with_target(
            o.storage, name, requested, n, beat, say, base, o.keep_weights, o.target
        )
        n = max(target - census(opt_study).counted, 0) if o.target is not None else n
        if here:
            with progress(n, spec.epochs) as bars:
                work_here(store, o.storage, name, spec, work, bars, say)
        else:
            spawn_workers(workers, name, o.storage, work, target, say)
        on_done(opt_study)


def join_study(
    study: str,
    storage: str,
    work: WorkOptions,
    label: str | None,
    progress: ProgressFactory,
    on_done: Callable[[optuna.Study], None],
    say: Say,
) -> None:
    """Work on ``study`` (waiting for its store and for it to exist) until it has its trials; the
    bar counts toward the trials its target still lacks, and ``on_done`` shows the study at the
    end (not for a worker of `run --jobs`: its run shows it once)."""

    work_runtime(work)
    path = sqlite_path(storage)
    if path is not None and not path.is_file():  # a worker joins: the file comes from `create` or `run`
        wait_for_store(path, work.storage_patience, say)
    store = open_study_store(storage, say, heartbeat=True, wait=True, patience=work.storage_patience, **work.beat)
    joined = wait_for_study(store, study, work.storage_patience, say=say)
    spec = stored_spec(joined)
    with progress(trials_left(joined), spec.epochs) as bars:
        work_here(store, storage, study, spec, work, bars, say, label=label)
    if not os.environ.get(RUN_REPORTS):
        on_done(joined)
