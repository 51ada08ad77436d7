"""What a study's trials train with: the splits on the device, the teacher, each trial's recipe.

``TrialContext`` is built once per worker process (data moved to the device once, the teacher
trained or loaded once); ``search.trials.lifecycle`` runs every trial with it: ``config`` (the
sampled recipe), ``describe`` (the record of how it runs), ``finish`` (test accuracy and
weights). ``summarize`` turns what the engine measured into the trial's record.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import optuna
import torch

from ...core.config import StudySpec
from ...core.errors import StorageError
from ...engine.data import Splits
from ...engine.devices import device_name
from ...engine.models import num_params
from ...engine.population import PopulationStats
from ...engine.probes import machine_load
from ...engine.teachers import cached_teacher
from ...engine.train import (
    BuiltModel,
    EpochMetrics,
    FitResult,
    TrainConfig,
    evaluate,
    on_device,
)
from ..artifacts.weights import save_model
from ..store.internals import set_study_system_attr, store_folder, study_system_attrs
from . import checkpoints
from .objectives import ACCURACY, CRITERIA, Probe, measured_figure_key
from .record import FIELDS, TrialRecord
from .space import model_of, suggest

TrialEpochHook = Callable[[int, EpochMetrics], None]  # (trial number, metrics) -> None: progress
# Other processes' share of the CPUs above which a timed figure is not the network's; a benchmark
# that must compare studies on fixed figures sets FMNIST_UNDER_LOAD=1 (never re-measure).
UNDER_LOAD = float(os.environ.get("FMNIST_UNDER_LOAD", "0.15"))
REMEASURE_S = 60.0  # a worker measures a figure taken under load again after this long


@dataclasses.dataclass
class Figure:
    """A measured objective's figure, with the CPU share other processes took while it was timed."""

    value: float
    load: float = 0.0
    at: float = dataclasses.field(default_factory=time.monotonic)  # when this worker measured or read it

    @property
    def reliable(self) -> bool:
        return self.load <= UNDER_LOAD

    def best(self, other: Figure | None, maximize: bool) -> Figure:
        """The one to keep: a figure measured without load over one measured under it; among
        equals the better (load only slows: the fastest throughput, the lowest latency)."""
        if other is None or self.reliable != other.reliable:
            return self if other is None or self.reliable else other
        return max(self, other, key=lambda f: f.value if maximize else -f.value)

    def attr(self) -> dict[str, float]:
        return {"value": self.value, "load": round(self.load, 3)}

    @classmethod
    def of(cls, attr: Any) -> Figure | None:
        """A stored figure (a number: stored before loads were recorded, taken as reliable)."""
        if attr is None:
            return None
        return cls(float(attr["value"]), float(attr["load"])) if isinstance(attr, dict) else cls(float(attr))


class TrialContext:
    """What a worker's trials train with: the splits (moved to ``device`` once, at construction),
    the teachers, the measured objectives, the artifact store, and each trial's recipe and record."""

    def __init__(
        self,
        spec: StudySpec,
        splits: Splits,
        device: torch.device,
        precision: str = "fp32",
        on_epoch: TrialEpochHook | None = None,
        compile: bool = False,
        graphs: bool = False,
        extra_attrs: dict[str, Any] | None = None,
        artifact_store: Any = None,
        say: Callable[[str], None] = lambda _: None,
        checkpoint_every: int = 1,
        population_caps: dict[str, int] | None = None,
    ) -> None:
        self.spec = spec
        self.device = device
        self.precision = precision
        self.on_epoch = on_epoch
        self.compile = compile
        self.graphs = graphs  # the training step as a CUDA graph (engine.population.GraphedStep)
        self.extra_attrs = extra_attrs or {}  # constant per process, e.g. worker label and GPU
        self.artifact_store = artifact_store  # completed trials save their weights here (None: off)
        self.checkpoint_every = checkpoint_every  # epochs between a running trial's checkpoints (0: none)
        self.say = say
        # a comparison's most trials per population, by model (its default: 32 LeNets, 1 ResNet on a GPU)
        self.population_caps = population_caps or {}
        self.compiled: dict[str, BuiltModel] | None = {} if compile else None  # compiled once per process and model
        self.populations: list[PopulationStats] = []  # each population this worker trained: its occupancy
        self._measured: dict[tuple[str, Any], Figure] = {}  # (objective, what it depends on) -> figure
        self.train, self.val, self.test = on_device(splits, device)
        # Not sampled, so one teacher serves the whole study (or each compared model its own, from
        # its recipe); trained (or loaded) once per process. Its logits of the training images:
        # computed once per teacher and data, kept on disk (distill.Teacher).
        names = {f.get("teacher") for f in [spec.fixed, *(r.get("fixed", {}) for r in spec.recipes.values())]}
        self.teachers = {
            n: cached_teacher(n, self.train, spec.seed, precision, say) for n in sorted(names - {None, ""})
        }

    def teacher(self, cfg: TrainConfig) -> Any:
        """The distillation teacher of ``cfg`` (None without one)."""
        return self.teachers.get(cfg.teacher)

    def config(self, trial: optuna.Trial, data_seed: int | None = None) -> TrainConfig:
        """This trial's recipe: its sampled hyperparameters (``suggest`` asks the sampler)."""
        return TrainConfig(
            **suggest(trial, self.spec),
            seed=self.spec.seed + trial.number,  # reproducible per trial, different across trials
            data_seed=data_seed,
            precision=self.precision,
        )

    def model_of(self, trial: optuna.Trial | optuna.trial.FrozenTrial) -> str:
        """The network ``trial`` trains (sampled in a study that compares models)."""
        return model_of(trial.params, self.spec)

    def measure(self, model: str, cfg: TrainConfig, study: optuna.Study | None = None) -> dict[str, float]:
        """The study's objectives other than accuracy for this network and recipe, measured once
        per what each depends on (search/trials/objectives.py) and device; {} in a single-objective study.

        With ``study`` the figure is shared through it: the first worker on a device of this name
        measures and stores it, every later one (other processes, machines) reads it, so trials
        of one network on one kind of device compare on one figure, not on each worker's timing.
        A figure timed while other processes kept the CPUs busy (``UNDER_LOAD``: load only ever
        slows a network down) is said in one line and measured again by later trials, at most
        every ``REMEASURE_S`` seconds per worker; the study keeps the best figure measured."""
        out = {}
        for name in self.spec.objectives:
            criterion = CRITERIA[name]
            if criterion.measure is None:
                continue
            key = (name, criterion.key(model, cfg))
            cached = self._measured.get(key)
            if cached is None or (not cached.reliable and time.monotonic() - cached.at >= REMEASURE_S):
                cached = self._figure(name, criterion, key[1], model, cfg, study)
                self._measured[key] = cached
            out[name] = cached.value
        return out

    def figure_keys(self, model: str, cfg: TrainConfig) -> dict[str, str]:
        """Where ``measure``'s figures for this network and recipe live in the study ({}: one objective)."""
        return {
            name: measured_figure_key(name, CRITERIA[name].key(model, cfg), device_name(self.device))
            for name in self.spec.objectives
            if CRITERIA[name].measure is not None
        }

    def _figure(
        self, name: str, criterion: Any, depends_on: Any, model: str, cfg: TrainConfig, study: optuna.Study | None
    ) -> Figure:
        shared = measured_figure_key(name, depends_on, device_name(self.device))
        stored = None if study is None else Figure.of(study_system_attrs(study).get(shared))
        if stored is not None and stored.reliable:
            return stored
        with machine_load() as load:
            value = float(criterion.measure(Probe(model, cfg, self)))
        best = Figure(value, load.others).best(stored, criterion.maximize)
        if study is not None:  # read back: of two workers measuring at once, both keep the last
            set_study_system_attr(study, shared, best.attr())
            best = Figure.of(study_system_attrs(study).get(shared)) or best
        if not best.reliable:
            self.say(
                f"{name} of {model} was measured while other processes used {best.load:.0%} of the CPUs: "
                f"{best.value:,.4g} {criterion.unit} is kept as the best so far and measured again by later trials"
            )
        return best

    def values(self, record: TrialRecord, val_accuracy: float) -> float | list[float]:
        """What the study is told for a completed trial: its validation accuracy, or one value per objective."""
        if len(self.spec.objectives) == 1:
            return val_accuracy
        measured = record.measured or {}
        return [val_accuracy if name == ACCURACY else measured[name] for name in self.spec.objectives]

    def describe(self, record: TrialRecord, cfg: TrainConfig, module: torch.nn.Module, population: int) -> TrialRecord:
        """``record`` with how the trial runs: device, versions, the network's size, its full recipe."""
        return dataclasses.replace(
            record,
            device=str(self.device),
            device_name=device_name(self.device),
            torch_version=torch.__version__,
            precision=cfg.precision,
            compiled=self.compile,
            num_params=num_params(module),
            population=population,
            config={k: v for k, v in asdict(cfg).items() if k not in ("precision", "eval_batch_size")},
        )

    @property
    def checkpoint_store(self) -> Any:
        """Where checkpoints go and are found: the artifact store, when there is one and they are on."""
        return self.artifact_store if self.checkpoint_every > 0 else None

    def save_checkpoint(self, trial: optuna.Trial, cfg: TrainConfig, snap: Any) -> dict[str, Any]:
        try:
            return checkpoints.save(self.artifact_store, self.model_of(trial), cfg, snap)
        except OSError as e:  # a full disk or a lost mount: as for the weights, the trial is re-queued
            where = store_folder(self.artifact_store)
            raise StorageError(f"cannot save trial {trial.number}'s checkpoint in {where}: {e.strerror}") from None

    def finish(
        self,
        trial: optuna.Trial,
        record: TrialRecord,
        runnable: torch.nn.Module,
        module: torch.nn.Module,
        cfg: TrainConfig,
    ) -> None:
        """Test accuracy (fp32, as ``fmnist-search evaluate`` computes it) and the weights artifact."""
        record.test_accuracy, _ = evaluate(runnable, *self.test, tta_flip=cfg.tta_flip)
        if self.artifact_store is not None:
            record.weights_artifact = save_model(self.artifact_store, trial, module, self.model_of(trial), cfg.tta_flip)


def occupancy(populations: list[PopulationStats]) -> tuple[float, int]:
    """Over ``populations``: mean filled rows / K over all their steps, and the trials that joined as refills."""
    capacity_steps = sum(p.steps * p.capacity for p in populations)
    rows = sum(p.row_steps for p in populations)
    return (rows / capacity_steps if capacity_steps else 0.0), sum(p.refills for p in populations)


def summarize(result: FitResult, record: TrialRecord) -> None:
    """Copy what ``fit`` measured into ``record``."""
    record.epochs_completed = 0
    if not result.history:
        return
    last = result.history[-1]
    record.val_accuracy = last.val_accuracy
    record.train_accuracy = last.train_accuracy
    record.train_loss = last.train_loss
    record.throughput = result.throughput
    record.train_time_s = result.train_time_s
    record.epochs_completed = last.epoch
    record.history = [asdict(m) for m in result.history]


RUN_FIELDS = tuple(f for f in FIELDS if f not in ("worker", "gpu"))  # written at the end (the start wrote those)


def release_memory(device: torch.device) -> None:
    # Models and optimizers of finished trials must not pile up on the GPU. (A full
    # gc.collect() costs ~0.2 s; study.optimize(gc_after_trial=True) does it once per trial.)
    if device.type == "cuda":
        torch.cuda.empty_cache()
