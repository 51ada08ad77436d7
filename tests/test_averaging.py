"""The weights' moving average (``TrainConfig.ema``): one implementation for a trial and a
population, checked against a hand-written average of PyTorch's own SGD (float64)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from fmnist_search.engine.batches import epoch_batches, steps_per_epoch
from fmnist_search.engine.batchnorm import fit_momentum
from fmnist_search.engine.population import Member, fit_population
from fmnist_search.engine.schedules import make_scheduler
from fmnist_search.engine.train import evaluate
from tests.test_checkpoints import _identical, _through_a_file
from tests.test_population import BASE, RECIPES, _data, _model, _same_history, _same_weights

EMA = [dataclasses.replace(c, ema=h) for c, h in zip(RECIPES[:3], (0.5, 1.0, 0.25), strict=True)]


def _reference_average(name, seed, cfg, train):
    """torch.optim.SGD and the recipe's scheduler, batch by batch in the engine's order, and
    beside them the average of the weights and BatchNorm statistics written out by hand: after
    step t (from 0) avg = d avg + (1 - d) w, d = min(0.5 ** (1 / half-life in steps), t / (t + 1))."""
    model = _model(name, seed).train()
    x, y = train
    steps = steps_per_epoch(len(x), cfg.batch_size)
    fit_momentum(model, steps)
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip
    sched = make_scheduler(opt, cfg.schedule, cfg.epochs * steps, cfg.warmup_frac)
    order = torch.Generator().manual_seed(cfg.data_seed)
    average = {k: v.detach().clone() for k, v in model.state_dict().items()}
    decay, t = 0.5 ** (1 / (cfg.ema * steps)), 0
    for _ in range(cfg.epochs):
        for idx in epoch_batches(torch.randperm(len(x), generator=order), cfg.batch_size):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            d = min(decay, t / (t + 1))
            for k, v in model.state_dict().items():
                average[k] = d * average[k] + (1 - d) * v if v.is_floating_point() else v.clone()
            t += 1
    model.load_state_dict(average)
    return model.eval()


@pytest.mark.parametrize("name", ["lenet", "airbench"])
def test_one_models_average_is_the_hand_written_average_of_pytorchs_sgd(tiny_splits, name):
    train, val = _data(tiny_splits)
    cfg = EMA[1]
    members = [Member(cfg)]
    fit_population([_model(name, 3)], members, train, val)
    _same_weights(members[0].module, _reference_average(name, 3, cfg, train))  # BatchNorm statistics too


@pytest.mark.parametrize("name", ["airbench"])  # stacked BatchNorm statistics averaged row by row
def test_each_models_average_in_a_population_is_its_average_alone(tiny_splits, name):
    train, val = _data(tiny_splits)
    members = [Member(c) for c in EMA]
    fit_population([_model(name, s) for s in range(3)], members, train, val)
    for seed, cfg, member in zip(range(3), EMA, members, strict=True):
        alone = [Member(cfg)]
        fit_population([_model(name, seed)], alone, train, val)
        _same_weights(member.module, alone[0].module)
        _same_history(member.result, alone[0].result)


@pytest.mark.parametrize("name", ["lenet"])
def test_the_saved_weights_are_what_was_reported(tiny_splits, name):
    """A recipe with ema reports, and keeps, the average: evaluating the member's module gives
    its last reported accuracy; and the average is not the raw weights."""
    train, val = _data(tiny_splits)
    for cfg, k in ((EMA[0], 1), (EMA[0], 2)):
        members = [Member(dataclasses.replace(cfg, tta_flip=True)) for _ in range(k)]
        fit_population([_model(name, s) for s in range(k)], members, train, val)
        raw = [Member(dataclasses.replace(m.cfg, ema=0.0)) for m in members]
        fit_population([_model(name, s) for s in range(k)], raw, train, val)
        for member, plain in zip(members, raw, strict=True):
            acc, loss = evaluate(member.module, *val, tta_flip=True)
            assert (acc, loss) == pytest.approx(
                (member.result.history[-1].val_accuracy, member.result.history[-1].val_loss)
            )
            assert not torch.equal(next(member.module.parameters()), next(plain.module.parameters()))


def test_measured_figures_are_the_averages_a_recipe_would_report(tiny_splits):
    """``halflives`` measured beside raw weights give, epoch by epoch, the accuracy a recipe with
    that ema reports; raw val_accuracy stays the raw weights'."""
    train, val = _data(tiny_splits)
    cfgs = [dataclasses.replace(c, epochs=3) for c in RECIPES[:2]]
    measured = [Member(c) for c in cfgs]
    fit_population([_model("lenet", s) for s in range(2)], measured, train, val, halflives=(0.5, 2.0))
    for h in (0.5, 2.0):
        judged = [Member(dataclasses.replace(c, ema=h)) for c in cfgs]
        fit_population([_model("lenet", s) for s in range(2)], judged, train, val)
        for m, j in zip(measured, judged, strict=True):
            assert [e.figures[f"ema{h:g}"] for e in m.result.history] == [e.val_accuracy for e in j.result.history]
    raw = [Member(c) for c in cfgs]
    fit_population([_model("lenet", s) for s in range(2)], raw, train, val)
    assert [e.val_accuracy for e in measured[0].result.history] == [e.val_accuracy for e in raw[0].result.history]


def test_an_averaging_population_resumes_bit_for_bit(tiny_splits):
    train, val = _data(tiny_splits)
    cfgs = EMA  # 2 epochs: resumed after the first

    def run(resume=None, members=None, stop_after=None):
        members = members or [Member(c) for c in cfgs]
        taken = {}

        def on_epoch_end(at_round, metrics):
            if stop_after is not None and at_round == stop_after:
                raise KeyboardInterrupt
            return []

        with contextlib.suppress(KeyboardInterrupt):
            fit_population(
                [_model("airbench", s) for s in range(3)], members, train, val, on_epoch_end,
                resume=resume, snapshot_every=1, on_snapshot=lambda r, snaps: taken.setdefault(r, snaps),
            )  # fmt: skip
        return members, taken

    whole, taken = run()
    assert all(s.average is not None for s in taken[1].values())
    resumed = [Member(c) for c in cfgs]
    run(resume=[_through_a_file(taken[1][m]) for m in range(3)], members=resumed)
    for a, b in zip(whole, resumed, strict=True):
        _identical(a, b)
        _same_weights(a.module, b.module)


def test_a_refilled_row_averages_its_own_weights_from_its_start(tiny_splits):
    """A member joining a freed row starts its average at its own weights: it trains and
    averages as it would alone on the same batches."""
    from tests.test_population import _fresh_start, _refilling

    train, val = _data(tiny_splits)
    first = [dataclasses.replace(EMA[0], epochs=2), dataclasses.replace(BASE, epochs=1, ema=1.0)]
    late = dataclasses.replace(EMA[2], epochs=2)
    refill, _ = _refilling({1: [late]}, seeds=[7])
    members = [Member(c) for c in first]
    taken = {}
    fit_population(
        [_model("lenet", s) for s in (0, 1)], members, train, val, refill=refill, snapshot_every=1,
        on_snapshot=lambda r, snaps: taken.setdefault(r, snaps),
    )  # fmt: skip
    point = next(iter(taken[1].values()))
    model, start = _fresh_start(7, late, point)
    start.average = {k: v.clone() for k, v in model.state_dict().items()}
    alone = [Member(late)]
    fit_population([model], alone, train, val, resume=[start])
    _same_weights(members[2].module, alone[0].module)
    _same_history(members[2].result, alone[0].result)
