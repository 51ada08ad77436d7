"""Population pruning: decisions at an epoch do not depend on the order trials are checked in,
and a population of one decides as Optuna's own pruner does."""

from __future__ import annotations

import random

import optuna
import pytest
from optuna.trial import TrialState

from fmnist_search.search.store.internals import storage_of, study_id, trial_id
from fmnist_search.search.trials.pruning import population_prunes

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(pruner):
    # One name for all: Hyperband's brackets are a hash of the study name and trial number.
    return optuna.create_study(direction="maximize", pruner=pruner, study_name="s")


def _write(study):
    def write(items):
        for tid, key, value in items:
            storage_of(study).set_trial_system_attr(tid, key, value)

    return write


def _completed(study, curves):
    for curve in curves:
        study.add_trial(
            optuna.trial.create_trial(
                value=curve[-1],
                intermediate_values={s + 1: v for s, v in enumerate(curve)},
            )
        )


@pytest.mark.parametrize("pruner", [optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)])
def test_median_population_of_one_decides_as_optuna(pruner):
    rng = random.Random(0)
    for _ in range(20):
        study = _study(pruner)
        _completed(study, [[rng.random() for _ in range(3)] for _ in range(rng.randint(0, 5))])
        trial = study.ask()
        own = [rng.random() for _ in range(rng.randint(1, 3))]
        for step, v in enumerate(own, 1):
            trial.report(v, step)
        frozen = storage_of(study).get_trial(trial_id(trial))
        ours = population_prunes(study, len(own), {trial.number: dict(frozen.intermediate_values)}, _write(study))
        assert (trial.number in ours) == pruner.prune(study, frozen)


def test_median_prunes_within_the_first_population_whatever_the_order():
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    study = _study(pruner)
    trials = [study.ask() for _ in range(8)]
    values = {t.number: {1: 0.1 * i, 2: 0.1 * i} for i, t in enumerate(trials)}
    # Optuna alone: no COMPLETE trial yet, so none of the first 8 can be pruned.
    for t in trials:
        for step, v in values[t.number].items():
            t.report(v, step)
        assert not t.should_prune()
    pruned = population_prunes(study, 2, values, _write(study))
    assert pruned == {trials[i].number for i in range(4)}  # below the median of their 7 peers
    shuffled = dict(random.Random(1).sample(list(values.items()), len(values)))
    assert population_prunes(study, 2, shuffled, _write(study)) == pruned
    assert population_prunes(study, 1, values, _write(study)) == set()  # warm-up steps


def _sha_lockstep(study, trials, curves, decide):
    """Run trials in lockstep through the steps, ``decide`` pruning at each; returns who survived."""
    alive = list(range(len(trials)))
    for step in range(1, len(curves[0]) + 1):
        for i in alive:
            trials[i].report(curves[i][step - 1], step)
        stopped = decide(step, alive)
        alive = [i for i in alive if i not in stopped]
    return alive


def test_successive_halving_in_lockstep_is_order_independent_unlike_optunas():
    rng = random.Random(3)
    curves = [[rng.random() for _ in range(4)] for _ in range(8)]

    def optuna_order(order):
        study = _study(optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
        trials = [study.ask() for _ in curves]

        def decide(step, alive):
            return {
                i
                for i in sorted(alive, key=order.index)
                if study.pruner.prune(study, storage_of(study).get_trial(trial_id(trials[i])))
            }

        return _sha_lockstep(study, trials, curves, decide)

    def ours(order):
        study = _study(optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
        trials = [study.ask() for _ in curves]

        def decide(step, alive):
            values = {trials[i].number: {step: curves[i][step - 1]} for i in sorted(alive, key=order.index)}
            pruned = population_prunes(study, step, values, _write(study))
            return {i for i in alive if trials[i].number in pruned}

        return _sha_lockstep(study, trials, curves, decide)

    forward, backward = list(range(8)), list(range(7, -1, -1))
    assert optuna_order(forward) != optuna_order(backward)  # the flaw: the order decides
    assert ours(forward) == ours(backward)
    # and the survivors are the best at rung 0 (step 1): top quarter of 8 with eta = 4
    best = sorted(range(8), key=lambda i: curves[i][0], reverse=True)[:2]
    assert set(ours(forward)) <= set(best)


def test_successive_halving_population_of_one_decides_as_optuna():
    rng = random.Random(5)
    curves = [[rng.random() for _ in range(5)] for _ in range(12)]
    a = _study(optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    b = _study(optuna.pruners.SuccessiveHalvingPruner(min_resource=1))
    for curve in curves:  # one trial at a time, each told before the next starts
        ta, tb = a.ask(), b.ask()
        for step, v in enumerate(curve, 1):
            ta.report(v, step)
            tb.report(v, step)
            theirs = a.pruner.prune(a, storage_of(a).get_trial(trial_id(ta)))
            mine = tb.number in population_prunes(b, step, {tb.number: {step: v}}, _write(b))
            assert theirs == mine
            if theirs:
                break
        a.tell(ta, state=TrialState.PRUNED if theirs else TrialState.COMPLETE, values=None if theirs else curve[-1])
        b.tell(tb, state=TrialState.PRUNED if mine else TrialState.COMPLETE, values=None if mine else curve[-1])
    assert (
        storage_of(a).get_all_trials(study_id(a))[-1].system_attrs
        == storage_of(b).get_all_trials(study_id(b))[-1].system_attrs
    )


def test_hyperband_population_is_order_independent():
    rng = random.Random(7)
    curves = [[rng.random() for _ in range(3)] for _ in range(10)]
    results = []
    for order in (list(range(10)), list(range(9, -1, -1))):
        study = _study(optuna.pruners.HyperbandPruner(min_resource=1, max_resource=3))
        trials = [study.ask() for _ in curves]

        def decide(step, alive, study=study, trials=trials, order=order):
            values = {trials[i].number: {step: curves[i][step - 1]} for i in sorted(alive, key=order.index)}
            pruned = population_prunes(study, step, values, _write(study))
            return {i for i in alive if trials[i].number in pruned}

        results.append(_sha_lockstep(study, trials, curves, decide))
    assert results[0] == results[1] and len(results[0]) < 10


def test_nop_pruner_prunes_nothing_and_other_pruners_decide_one_trial_as_optuna_does():
    study = _study(optuna.pruners.NopPruner())
    assert population_prunes(study, 1, {0: {1: 0.0}}, _write(study)) == set()
    study = _study(optuna.pruners.ThresholdPruner(lower=0.5))
    low, high = study.ask(), study.ask()
    low.report(0.2, 1)
    high.report(0.8, 1)
    # One trial at a time: any Optuna pruner, asked about the stored trial (ThresholdPruner: below 0.5).
    assert population_prunes(study, 1, {low.number: {1: 0.2}}, _write(study)) == {low.number}
    assert population_prunes(study, 1, {high.number: {1: 0.8}}, _write(study)) == set()
    with pytest.raises(ValueError, match="--population 1"):  # several: no order-independent rule for it
        population_prunes(study, 1, {low.number: {1: 0.2}, high.number: {1: 0.8}}, _write(study))
