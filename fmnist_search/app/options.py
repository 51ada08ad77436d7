"""The options the commands share, declared once: each option's type, default, help and panel.

``StudyOptions`` (create, run) says which study and the settings it is created with;
``WorkOptions`` (run, worker) how a process trains and holds on to its store. The CLI turns
their fields into options (``with_option_groups``); ``run`` hands ``WorkOptions`` to the worker
processes it starts (``studies.as_argv``), from the same declaration. Help texts state
per-model defaults where a model's base recipe differs (``core.presets.base_recipe``).
Nothing heavy is imported here: ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar, get_type_hints

import typer

from ..core.config import DEFAULT_STORAGE, GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, PATIENCE_S, StudySpec
from ..core.errors import FmnistSearchError
from ..core.presets import BASE_PRESETS, base_recipe
from ..core.rules import MODEL_NAMES, OBJECTIVE_NAMES, PRUNER_NAMES, SAMPLER_NAMES, SPACE_NAMES

# Help panels: the groups `--help` shows options in.
STUDY, RECIPE, SEARCH, WORK, STORE, DATA = "Study", "Recipe", "Search", "Work", "Store", "Data"
PANELS = (STUDY, RECIPE, SEARCH, DATA, WORK, STORE)  # in the order --help shows them
_SPEC = StudySpec()


def _default(field: str, shown: Any = None) -> str:
    """``[default: 256; lenet: 128]``: the study default, and each base recipe's own value."""
    recipes = {model: base_recipe(model) for model in BASE_PRESETS}
    own = "; ".join(f"{model}: {recipe[field]:g}" for model, recipe in recipes.items() if field in recipe)
    value = getattr(_SPEC, field) if shown is None else shown
    return f"[default: {value:g}" + (f"; {own}" if own else "") + "]"


StorageOpt = Annotated[
    str,
    typer.Option(
        "--storage",
        envvar="FMNIST_STORAGE",
        help="Optuna storage, any SQLAlchemy URL (sqlite:///..., postgresql://...).",
        rich_help_panel=STORE,
    ),
]
StudyOpt = Annotated[str, typer.Option("--study", help="Study name.", rich_help_panel=STUDY)]

# How a process trains, not what the study is (run, worker; some also train, evaluate).
DeviceOpt = Annotated[
    str, typer.Option(help="auto, cpu, cuda, cuda:N or mps (auto: GPU when present).", rich_help_panel=WORK)
]
PrecisionOpt = Annotated[
    str, typer.Option(help="auto, bf16, fp16 or fp32 (auto: bf16 on GPU, fp32 on CPU).", rich_help_panel=WORK)
]
CompileOpt = Annotated[bool, typer.Option(help="torch.compile the model once per process (GPU).", rich_help_panel=WORK)]
CudaGraphsOpt = Annotated[
    bool,
    typer.Option(
        help="Capture each training step as a CUDA graph and replay it (CUDA, fp32/bf16; speed not yet measured).",
        rich_help_panel=WORK,
    ),
]
DataDirOpt = Annotated[
    Path | None, typer.Option(envvar="FMNIST_DATA_DIR", help="Folder with the data.", rich_help_panel=DATA)
]
DownloadOpt = Annotated[bool, typer.Option(help="Download the data when it is not found.", rich_help_panel=DATA)]
TimeoutOpt = Annotated[float | None, typer.Option(help="Stop starting trials after SECONDS.", rich_help_panel=WORK)]
HeartbeatOpt = Annotated[
    int, typer.Option(min=1, help="Seconds between a running trial's heartbeats.", rich_help_panel=STORE)
]
GraceOpt = Annotated[
    int, typer.Option(min=2, help="Seconds without heartbeat before a trial counts as dead.", rich_help_panel=STORE)
]
PatienceOpt = Annotated[
    float,
    typer.Option(
        min=0,
        envvar="FMNIST_STORAGE_PATIENCE",
        help="Seconds to keep retrying a database that went away (restart, failover) before giving up.",
        rich_help_panel=STORE,
    ),
]
ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        envvar="FMNIST_ARTIFACTS",
        help="Artifact folder for weights [default: beside the SQLite file].",
        rich_help_panel=STORE,
    ),
]
SaveWeightsOpt = Annotated[
    bool, typer.Option(help="Save each completed trial's weights as an Optuna artifact.", rich_help_panel=STORE)
]
CheckpointOpt = Annotated[
    int,
    typer.Option(
        min=0,
        help="Save a running trial's training state every N epochs in the artifact store, so a stopped "
        "trial's retry continues from it (0: never; needs weights saving).",
        rich_help_panel=STORE,
    ),
]
PopulationOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Trials trained together as one fused model, each with its own hyperparameters; rows that members "
        "leave are refilled with new trials [default: auto: 32 LeNets or airbenches on a GPU, 4 LeNets on a CPU, "
        "1 otherwise; at most a third of the run's trials].",
        rich_help_panel=WORK,
    ),
]

# What a study is (stored with it; a resume that disagrees is refused).
ModelOpt = Annotated[
    str | None,
    typer.Option(
        help=f"Network to train: {', '.join(MODEL_NAMES)}; several, comma-separated, are compared in one study.",
        rich_help_panel=STUDY,
    ),
]
ObjectivesOpt = Annotated[
    str | None,
    typer.Option(
        help=f"What trials are scored on, comma-separated: {', '.join(OBJECTIVE_NAMES)}; more than one keeps a "
        "Pareto front [default: accuracy].",
        rich_help_panel=SEARCH,
    ),
]
TrialsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Raise the study's trial target by N over what it already is (two runs of --trials N add 2N) "
        "[default: 30, or the preset's].",
        rich_help_panel=STUDY,
    ),
]
TargetOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Set the study's trial target to N in all, instead of raising it: the same command run again (a "
        "restart, a retried job) adds no trials.",
        rich_help_panel=STUDY,
    ),
]
NewStudyOpt = Annotated[
    str | None, typer.Option("--study", help="Study name [default: the model name].", rich_help_panel=STUDY)
]
PresetOpt = Annotated[
    str | None,
    typer.Option(
        help="A shipped preset (e.g. seed-report), your studies/NAME.toml, or a .toml path.", rich_help_panel=STUDY
    ),
]
KeepWeightsOpt = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Keep the weights of only the best N completed trials (the Pareto front first in a study with "
        "several objectives); the others' are removed as they fall out. Stored with the study; a later "
        "--keep-weights replaces it [default: keep all].",
        rich_help_panel=STORE,
    ),
]
ModelsOpt = Annotated[
    str | None,
    typer.Option(help="With --preset: only these of its models (comma-separated).", rich_help_panel=STUDY),
]
EpochsOpt = Annotated[int | None, typer.Option(help=f"Epochs per trial {_default('epochs')}.", rich_help_panel=RECIPE)]
BatchOpt = Annotated[int | None, typer.Option(help=f"SGD batch size {_default('batch_size')}.", rich_help_panel=RECIPE)]
LrMinOpt = Annotated[
    float | None, typer.Option(help=f"Lower end of the log-uniform lr {_default('lr_min')}.", rich_help_panel=RECIPE)
]
LrMaxOpt = Annotated[
    float | None, typer.Option(help=f"Upper end of the lr range {_default('lr_max')}.", rich_help_panel=RECIPE)
]
MomentumOpt = Annotated[
    float | None, typer.Option(help=f"Fixed SGD momentum {_default('momentum')}.", rich_help_panel=RECIPE)
]
FixOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Hold a hyperparameter fixed, e.g. --fix schedule=cosine (repeatable) [default: LeNet's base "
        "recipe, docs/presets.md].",
        rich_help_panel=RECIPE,
    ),
]
SamplerOpt = Annotated[
    str | None,
    typer.Option(help=f"{', '.join(SAMPLER_NAMES)} [default: {_SPEC.sampler}].", rich_help_panel=SEARCH),
]
PrunerOpt = Annotated[
    str | None, typer.Option(help=f"{', '.join(PRUNER_NAMES)} [default: {_SPEC.pruner}].", rich_help_panel=SEARCH)
]
SpaceOpt = Annotated[
    str | None,
    typer.Option(help=f"Search space: {', '.join(SPACE_NAMES)} [default: {_SPEC.space}].", rich_help_panel=SEARCH),
]
SeedOpt = Annotated[
    int | None, typer.Option(help=f"Sampler, split and training seed [default: {_SPEC.seed}].", rich_help_panel=SEARCH)
]
ValSizeOpt = Annotated[
    int | None, typer.Option(help=f"Stratified validation images [default: {_SPEC.val_size}].", rich_help_panel=DATA)
]
TrainSizeOpt = Annotated[
    int | None, typer.Option(help="Train on a stratified subset of this many images.", rich_help_panel=DATA)
]


WhereOpt = Annotated[
    list[str] | None,
    typer.Option(
        help="Pick the most accurate trial (validation) with a floor or ceiling on an objective, e.g. "
        "--where throughput>=50000 or --where params<=100000 (repeatable).",
    ),
]


def artifact_dir(storage: str, artifacts: Path | None) -> Path:
    from ..search.artifacts import default_dir

    return artifacts if artifacts is not None else default_dir(storage)


@dataclass(frozen=True)
class StudyOptions:
    """Which study to create or resume, and the settings it is created with (create, run)."""

    model: ModelOpt = None
    trials: TrialsOpt = None
    target: TargetOpt = None
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
    objectives: ObjectivesOpt = None
    keep_weights: KeepWeightsOpt = None

    # The options that are StudySpec fields of the same name (tests/test_cli.py checks them).
    SETTINGS: ClassVar[tuple[str, ...]] = (
        "epochs",
        "batch_size",
        "lr_min",
        "lr_max",
        "momentum",
        "sampler",
        "pruner",
        "seed",
        "val_size",
        "train_size",
        "space",
    )

    def settings(self) -> dict[str, Any]:
        """The study settings these options give (an option left out gives none)."""
        from ..core.rules import parse_fixed

        given = {k: getattr(self, k) for k in self.SETTINGS if getattr(self, k) is not None}
        fixed = parse_fixed(self.fix)
        if fixed:
            given["fixed"] = fixed
        if self.objectives is not None:
            given["objectives"] = tuple(n.strip() for n in self.objectives.split(","))
        return given


@dataclass(frozen=True)
class WorkOptions:
    """How a worker process trains and holds on to its store (run, worker)."""

    device: DeviceOpt = "auto"
    precision: PrecisionOpt = "auto"
    compile: CompileOpt = False
    cuda_graphs: CudaGraphsOpt = False
    data_dir: DataDirOpt = None
    download: DownloadOpt = True
    timeout: TimeoutOpt = None
    heartbeat_interval: HeartbeatOpt = HEARTBEAT_INTERVAL_S
    grace_period: GraceOpt = GRACE_PERIOD_S
    storage_patience: PatienceOpt = PATIENCE_S
    artifacts: ArtifactsOpt = None
    save_weights: SaveWeightsOpt = True
    checkpoint_every: CheckpointOpt = 1
    population: PopulationOpt = None

    def __post_init__(self) -> None:
        if self.timeout is not None and not self.timeout > 0:  # Typer's min is inclusive
            raise FmnistSearchError(f"--timeout must be a number of seconds > 0, got {self.timeout:g}")
        if self.grace_period <= self.heartbeat_interval:
            raise FmnistSearchError("--grace-period must be longer than --heartbeat-interval")

    @property
    def beat(self) -> dict[str, Any]:
        return {"heartbeat_interval": self.heartbeat_interval, "grace_period": self.grace_period}

    def artifact_dir(self, storage: str) -> Path | None:
        return artifact_dir(storage, self.artifacts) if self.save_weights else None


F = TypeVar("F", bound=Callable[..., Any])


def with_option_groups(**groups: type) -> Callable[[F], F]:
    """Give a command whole option groups: ``@with_option_groups(study=StudyOptions)`` makes every field
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
