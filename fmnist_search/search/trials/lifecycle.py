"""A trial's one lifecycle: asked, started, trained epoch by epoch, told, recorded.

Every trial takes this path, alone or as one of K trained as one model (engine/population.py):
a single trial is a population of one. The worker asks K trials at once (K asks before any
tell; TPE's ``constant_liar`` spreads them out) and hands them here:

    asked (params sampled) -> started: who runs it (worker, GPU) written at once
      -> each epoch: train, report every trial's validation accuracy (one transaction),
         the pruning decision (search/trials/pruning.py, Optuna's pruner rules, order-independent)
      -> told COMPLETE (test accuracy, weights artifact) / PRUNED / FAIL (diverged, a crash)
      -> its record (TrialRecord) written, whatever the ending
    stopped (Ctrl-C, SIGTERM, a lost store): left RUNNING with its reason; the worker's
      release() marks it FAIL and re-queues it; a dead worker's trials go stale and are retried

A worker's trials beat from their ask on, one thread for all of them (search/store/heartbeats.py).
What a population must share (batch size: sampled once per population, the others take it)
groups it: trials are grouped by ``shared_key`` and each group trains as one. Trials of a
group share one batch order (``data_seed``: the study's seed plus the first trial's number,
recorded in each trial's ``config``); augmentation is each trial's own. A pruned, finished or
failed trial leaves its row at the end of an epoch and a newly asked trial takes it (a refill:
sampled with every result told so far, it starts at its own epoch 1), so the population stays
full until the study's budget is handed out; then it drains. A comparison's populations (one
model each) drain without refills: a refill would pick its model for the sampler.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import torch
from optuna.trial import TrialState

from ...core import interrupts
from ...core.errors import FmnistSearchError, StorageError
from ...engine.population import EpochMetrics, Member, PopulationStats, Snapshot, fit_population, shared_key
from ...engine.train import BuiltModel, TrainConfig, build_model
from ..artifacts.retention import keep_best
from ..store.heartbeats import Heartbeats
from ..store.internals import storage_of, trial_id
from ..store.storage import write_trials
from . import checkpoints
from .context import RUN_FIELDS, TrialContext, release_memory, summarize
from .pruning import population_prunes
from .record import TrialRecord
from .space import shared_params

Callback = Callable[[optuna.Study, Any], None]


class _LiveTrial:
    """One trial of the lifecycle: the Optuna trial, its recipe, its record, whether it was told,
    and the snapshot it resumes from (the stopped trial's checkpoint it consumes)."""

    def __init__(self, trial: optuna.Trial, model: str, cfg: TrainConfig, record: TrialRecord) -> None:
        self.trial, self.model, self.cfg, self.record = trial, model, cfg, record
        self.told = False
        self.resume: Snapshot | None = None
        self.consumed: dict[str, Any] | None = None

    def resume_point(self) -> tuple[Any, ...] | None:
        """Trials resume together only from the same point of one run (the same batches from there)."""
        return None if self.resume is None else self.resume.point


# (free rows, the params the population shares) -> up to that many new trials with their recipes
More = Callable[[int, dict[str, Any]], list[tuple[optuna.Trial, TrainConfig]]]


def run_trials(
    study: Any,
    objective: TrialContext,
    asked: list[tuple[optuna.Trial, TrainConfig]],
    callbacks: list[Callback] | None = None,
    more: More | None = None,
) -> None:
    """Train the ``asked`` trials (RUNNING, with their sampled recipes; one, or a population)
    as populations grouped by what they must share, and tell each how it ended. ``more`` asks
    new trials for rows that members leave (none: the population drains)."""
    store = storage_of(study)  # each write_trials call below is one transaction
    trials = [trial for trial, _ in asked]
    population_id = trials[0].number
    data_seed = objective.spec.seed + population_id  # one batch order for the population
    slots = [
        _LiveTrial(
            t,
            m,
            dataclasses.replace(c, data_seed=data_seed),
            TrialRecord(**objective.extra_attrs, model=m, population_id=population_id, joined_epoch=1),
        )
        for t, c in asked
        for m in (objective.model_of(t),)
    ]
    if len(objective.spec.models) > 1:
        more = None
    for s in slots:  # a retry of a stopped trial continues from its checkpoint
        found = checkpoints.resumable(study, objective.checkpoint_store, s.trial, s.model, s.cfg, objective.say)
        if found is not None:
            s.resume, s.cfg, stopped, s.consumed = found
            s.record.resumed_from = {"trial": stopped, "epoch": s.resume.epoch}
            s.record.joined_epoch = s.resume.at_round - s.resume.epoch + 1
            objective.say(f"trial {s.trial.number} resumes trial {stopped} from epoch {s.resume.epoch}")
    with _heartbeats(study, trials):
        try:
            write_trials(
                store, user_attrs={trial_id(s.trial): s.record.attrs() for s in slots}
            )  # who runs them, at the start
            groups: dict[tuple[Any, ...], list[_LiveTrial]] = {}
            for s in slots:
                groups.setdefault((s.model, shared_key(s.cfg), s.resume_point()), []).append(s)
            if len(groups) > 1 and len(objective.spec.models) == 1:  # a comparison splits by model, by design
                (first, *others) = groups
                for key in others:
                    why = (
                        "a population resumes together only the trials stopped at one point of one run"
                        if key[2] != first[2]
                        else "its batch size, teacher or precision differs from the others'"
                    )
                    numbers = ", ".join(str(s.trial.number) for s in groups[key])
                    objective.say(f"trial(s) {numbers} train as a population of their own: {why}")
            for group in groups.values():
                cap = objective.population_caps.get(group[0].model) or len(group)  # a comparison's per-model size
                for start in range(0, len(group), cap):
                    population = _Population(study, objective, group[start : start + cap], slots, trials, store)
                    population.train(callbacks or [], more if cap > 1 else None)
        except (interrupts.Stop, StorageError) as e:
            for s in slots:
                if not s.told:  # left RUNNING: the worker's release() fails and re-queues them
                    s.record.fail_reason = interrupts.stopped_reason(str(e))
            raise
        except optuna.exceptions.UpdateFinishedTrialError:
            _drop_taken_over(study, store, slots, objective)
        except torch.OutOfMemoryError:
            why = f"out of device memory with a population of {len(slots)}; use a smaller --population"
            _fail_untold(study, store, slots, why, objective)
            raise FmnistSearchError(why) from None
        except Exception as e:  # a crash: the trials it hit FAIL with its reason, and it goes on up
            _fail_untold(study, store, slots, f"{type(e).__name__}: {e}", objective)
            raise
        finally:
            untold = {trial_id(s.trial): s.record.attrs(*RUN_FIELDS) for s in slots if not s.told}
            if untold:
                write_trials(store, user_attrs=untold)
            release_memory(objective.device)


def optimize(study: Any, objective: TrialContext, n_trials: int, callbacks: list[Callback] | None = None) -> None:
    """``n_trials`` trials of ``study``, one after another, through this lifecycle: for a plain
    Optuna study (tests, benchmarks, notebooks); workers run theirs with ``workers.work``."""
    for _ in range(n_trials):
        trial = study.ask()
        run_trials(study, objective, [(trial, objective.config(trial))], callbacks)


def _fail_untold(study: Any, store: Any, slots: list[_LiveTrial], why: str, objective: TrialContext) -> None:
    for s in slots:
        if not s.told:
            s.record.fail_reason = why
            old = _drop_checkpoint(s)
            write_trials(store, user_attrs={trial_id(s.trial): s.record.attrs(*RUN_FIELDS)})
            study.tell(s.trial, state=TrialState.FAIL)
            s.told = True
            _remove(objective, old)


def _drop_taken_over(study: Any, store: Any, slots: list[_LiveTrial], objective: TrialContext) -> None:
    """A write found one of these trials finished by someone else: this worker was paused past the
    grace period (SIGSTOP, a migrated VM) and another failed its trials as stale and queued their
    retries. Those are dropped with one line each; any still RUNNING here are failed and queued
    again like a stopped worker's (their retries resume from their checkpoints); the worker goes on."""
    from .coordination import requeue_running

    untold = [s for s in slots if not s.told]
    for s in untold:
        s.told = True
        if _taken_over(store, s):
            objective.say(
                f"trial {s.trial.number} was taken over by another worker while this one was paused past the "
                "grace period; its retry counts instead: dropping it here"
            )
    mine = [s.trial.number for s in untold if not _taken_over(store, s)]
    if mine:
        requeue_running(study, mine, "its population lost a trial to another worker")


def _taken_over(store: Any, s: _LiveTrial) -> bool:
    """Whether the trial is no longer this worker's: a pause longer than the grace period (SIGSTOP,
    a migrated VM) let another worker fail it as stale and queue its retry."""
    return bool(store.get_trial(trial_id(s.trial)).state != TrialState.RUNNING)


def _drop_checkpoint(s: _LiveTrial) -> list[dict[str, Any] | None]:
    """A trial that ends (told) will not resume: its checkpoint attr is cleared (written with its
    record), and its own and the consumed checkpoints are removed after that."""
    old = [s.record.checkpoint, s.consumed]
    if s.record.checkpoint:
        s.record.checkpoint = {}
    return old


def _remove(objective: TrialContext, attrs: list[dict[str, Any] | None]) -> None:
    for attr in attrs:
        checkpoints.remove(objective.checkpoint_store, attr)


class _Population:
    """One group of trials trained as one population: its members, what the engine calls back
    (each epoch's reports and pruning, snapshots, refills) and the tells."""

    def __init__(
        self,
        study: Any,
        objective: TrialContext,
        group: list[_LiveTrial],
        slots: list[_LiveTrial],
        trials: list[optuna.Trial],
        store: Any,
    ) -> None:
        self.study, self.objective, self.group, self.store = study, objective, group, store
        self.slots, self.trials = slots, trials  # the call's: refills join them (interrupts, heartbeats)
        self.capacity = len(group)
        self.built: list[BuiltModel] = []
        self.members: list[Member] = []
        self.stats = PopulationStats()  # filled epoch by epoch: pruned trials record it too
        self.callbacks: list[Callback] = []
        self.at_round = 0  # the population's epochs so far

    def train(self, callbacks: list[Callback], more: More | None) -> None:
        objective, group = self.objective, self.group
        self.callbacks = callbacks
        # One model trains as itself, compiled when the worker compiles; K are stacked from fresh copies.
        compiled = objective.compiled if len(group) == 1 else None
        self.built = self._start(group, compiled)
        self.members = [Member(s.cfg) for s in group]
        # a group shares one resume point (run_trials groups by it): all resume, or none
        resume = [s.resume for s in group if s.resume is not None] or None
        if resume is not None:  # the epochs before: reported again, so the trial shows one unbroken curve
            before = [
                (trial_id(s.trial), m.epoch, m.val_accuracy)
                for s, r in zip(group, resume, strict=True)
                for m in r.history
            ]
            write_trials(self.store, intermediate=before)
        self.more = more
        self.shared = shared_params(group[0].trial)
        try:
            every = objective.checkpoint_every if objective.checkpoint_store is not None else 0
            fit_population(
                [b.runnable for b in self.built],
                self.members,
                objective.train,
                objective.val,
                self.on_epoch_end,
                objective.teacher(group[0].cfg),
                self.stats,
                resume=resume,
                on_snapshot=self.on_snapshot,
                snapshot_every=every,
                graphs=objective.graphs and compiled is None,
                refill=self.refill,
            )
        finally:  # an interrupt too: every trial keeps what it measured
            for s, m in zip(group, self.members, strict=True):
                if not s.told:
                    summarize(m.result, s.record)
            objective.populations.append(self.stats)
        self.finish(range(len(self.members)))

    def _start(self, new: list[_LiveTrial], compiled: Any = None) -> list[BuiltModel]:
        """Measure the trials' other objectives (before their weights are seeded), build their models."""
        study, objective = self.study, self.objective
        for s in new:
            s.record.measured = objective.measure(s.model, s.cfg, study) or None
            s.record.figures = objective.figure_keys(s.model, s.cfg) or None
        if any(s.record.measured for s in new):  # what pruning compares them by, stored before the first report
            write_trials(self.store, user_attrs={trial_id(s.trial): s.record.attrs("measured", "figures") for s in new})
        built = [build_model(s.model, s.cfg.seed, objective.device, compiled) for s in new]
        for s, b in zip(new, built, strict=True):
            s.record = objective.describe(s.record, s.cfg, b.module, population=self.capacity)
        return built

    def tell(self, i: int, state: TrialState, value: float | list[float] | None = None) -> None:
        s = self.group[i]
        if _taken_over(self.store, s):
            self.objective.say(
                f"trial {s.trial.number} was taken over by another worker while this one was paused past the "
                "grace period; its retry counts instead: dropping it here"
            )
            s.told = True
            return
        summarize(self.members[i].result, s.record)
        s.record.population_throughput = self.stats.throughput
        old = _drop_checkpoint(s)
        write_trials(self.store, user_attrs={trial_id(s.trial): s.record.attrs(*RUN_FIELDS)})
        frozen = self.study.tell(s.trial, state=state, values=value)
        s.told = True
        _remove(self.objective, old)
        for cb in self.callbacks:
            cb(self.study, frozen)

    def finish(self, indices: Iterable[int]) -> None:
        """Tell the members among ``indices`` that ended: COMPLETE (test accuracy, weights) or FAIL (diverged)."""
        completed = False
        for i in indices:
            m, s = self.members[i], self.group[i]
            if s.told:
                continue
            if m.status == "diverged":
                s.record.fail_reason = m.error
                self.tell(i, TrialState.FAIL)
            elif m.status == "done":
                assert m.module is not None
                weights = self.built[i].module if len(self.members) == 1 else m.module  # a compiled one's own module
                self.objective.finish(s.trial, s.record, m.module, weights, m.cfg)
                self.tell(i, TrialState.COMPLETE, self.objective.values(s.record, m.result.history[-1].val_accuracy))
                m.module = None  # its weights are stored; free them
                completed = True
        if completed and self.objective.artifact_store is not None:
            keep_best(self.study, self.objective.artifact_store)  # the study's --keep-weights bound, if it has one

    def refill(self, left: list[int], free: int) -> list[tuple[torch.nn.Module, Member]]:
        """After an epoch: tell the members that finished (so the sampler learns from them), then
        ask trials for the ``free`` rows, which start at their epoch 1 beside the others."""
        self.finish(left)
        if not free or self.more is None:
            return []
        asked = self.more(free, self.shared)
        if not asked:
            return []
        data_seed, population_id = self.group[0].cfg.data_seed, self.group[0].record.population_id
        joined_epoch = self.at_round + 1
        new = [
            _LiveTrial(
                t,
                self.group[0].model,
                dataclasses.replace(c, data_seed=data_seed),
                TrialRecord(
                    **self.objective.extra_attrs,
                    model=self.group[0].model,
                    population_id=population_id,
                    joined_epoch=joined_epoch,
                ),
            )
            for t, c in asked
        ]
        self.trials.extend(t for t, _ in asked)
        self.slots.extend(new)
        self.group.extend(new)
        write_trials(self.store, user_attrs={trial_id(s.trial): s.record.attrs() for s in new})  # who runs them
        built = self._start(new)
        self.built.extend(built)
        return [(b.runnable, Member(s.cfg)) for s, b in zip(new, built, strict=True)]

    def on_snapshot(self, at_round: int, snaps: dict[int, Snapshot]) -> None:
        """Each training trial's new checkpoint, then the attrs that name them (one transaction),
        then the ones they replace: a stopped write never leaves an attr naming half a file."""
        old, attrs = [], {}
        for i, snap in snaps.items():
            s = self.group[i]
            old.append(s.record.checkpoint)
            s.record.checkpoint = self.objective.save_checkpoint(s.trial, s.cfg, snap)
            attrs[trial_id(s.trial)] = {"checkpoint": s.record.checkpoint}
        write_trials(self.store, user_attrs=attrs)
        _remove(self.objective, old)

    def on_epoch_end(self, at_round: int, metrics: dict[int, EpochMetrics]) -> set[int]:
        """Report every member's epoch (one transaction), then prune: each member at its own
        epoch, against the same snapshot as the members at that epoch (search/trials/pruning.py)."""
        interrupts.check()  # a signal swallowed mid-epoch stops the population here
        group, members = self.group, self.members
        self.at_round = at_round
        for i, m in enumerate(members):
            if m.status == "diverged" and not group[i].told:
                group[i].record.fail_reason = m.error
                self.tell(i, TrialState.FAIL)
        write_trials(
            self.store, intermediate=[(trial_id(group[i].trial), m.epoch, m.val_accuracy) for i, m in metrics.items()]
        )
        if self.objective.on_epoch is not None:
            for i, m in metrics.items():
                self.objective.on_epoch(group[i].trial.number, m)
        by_epoch: dict[int, dict[int, dict[int, float]]] = {}
        for i, m in metrics.items():
            by_epoch.setdefault(m.epoch, {})[group[i].trial.number] = _history(members[i])
        pruned: set[int] = set()
        for epoch, values in sorted(by_epoch.items()):
            pruned |= population_prunes(
                self.study,
                epoch,
                values,
                lambda items: write_trials(self.store, system_attrs=items),
                self.objective.spec.objectives,
            )
        # A trial at its last epoch has trained its whole budget: it is COMPLETE (tested, weights
        # saved) whatever its rung says; pruning can only save epochs it has yet to train.
        stop = {i for i in metrics if group[i].trial.number in pruned and metrics[i].epoch < members[i].cfg.epochs}
        for i in sorted(stop):
            self.tell(i, TrialState.PRUNED)
        interrupts.check()  # one deferred while the reports were written
        return stop


def _history(member: Member) -> dict[int, float]:
    return {m.epoch: m.val_accuracy for m in member.result.history}


@contextmanager
def _heartbeats(study: Any, trials: list[optuna.Trial]) -> Iterator[None]:
    """The trials beat while they train: a worker's study (workers.BudgetedStudy) holds them since
    their ask and beats for them on its own thread; a plain study gets a thread for these trials."""
    beats = getattr(study, "heartbeats", None)
    with contextlib.nullcontext(beats) if beats is not None else Heartbeats(storage_of(study)) as beats:
        beats.hold(trials)
        try:
            yield
        finally:
            beats.drop(trials)
