"""Population training: model k of a population is model k trained alone (float64, tight tolerance)."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch

from fmnist_search.core.config import TrainConfig
from fmnist_search.engine import data
from fmnist_search.engine import population as pop
from fmnist_search.engine.batches import epoch_batches, steps_per_epoch
from fmnist_search.engine.batchnorm import fit_momentum, momentum_for
from fmnist_search.engine.population import Member, fit_population, lr_table
from fmnist_search.engine.schedules import make_scheduler
from fmnist_search.engine.train import build_model, fit, to_device

CPU = torch.device("cpu")
TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64: only summation order differs (grouped vs single convolutions)


def _data(splits, n_train=192, n_val=64):
    train = tuple(t.double() if t.is_floating_point() else t for t in to_device(*splits.train, CPU))
    val = tuple(t.double() if t.is_floating_point() else t for t in to_device(*splits.val, CPU))
    return (train[0][:n_train], train[1][:n_train]), (val[0][:n_val], val[1][:n_val])


def _model(name, seed):
    return build_model(name, seed, CPU).module.double()


def _alone(name, seed, cfg, train, val):
    model = _model(name, seed)
    result = fit(model, train, val, cfg)
    return model, result


def _together(name, seeds, cfgs, train, val, on_epoch_end=None):
    members = [Member(cfg) for cfg in cfgs]
    census = fit_population([_model(name, s) for s in seeds], members, train, val, on_epoch_end=on_epoch_end)
    return members, census


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], **TOL, msg=f"{key} differs")


def _same_history(a, b):
    assert len(a.history) == len(b.history)
    for ma, mb in zip(a.history, b.history, strict=True):
        assert ma.train_loss == pytest.approx(mb.train_loss, rel=1e-9)
        assert ma.val_loss == pytest.approx(mb.val_loss, rel=1e-6, abs=1e-6)  # both summed in a float32 accumulator
        assert (ma.train_accuracy, ma.val_accuracy, ma.samples) == (mb.train_accuracy, mb.val_accuracy, mb.samples)


BASE = TrainConfig(lr=0.05, epochs=2, batch_size=32, data_seed=7)
RECIPES = [  # per-model hyperparameters that differ inside one population
    dataclasses.replace(BASE, lr=0.05, momentum=0.9),
    dataclasses.replace(BASE, lr=0.01, momentum=0.5, nesterov=True, weight_decay=5e-3, schedule="cosine"),
    dataclasses.replace(BASE, lr=0.2, momentum=0.0, label_smoothing=0.1, schedule="onecycle", warmup_frac=0.2),
    dataclasses.replace(BASE, lr=0.03, epochs=1, warmup_frac=0.3, tta_flip=True),
]


def _reference(name, seed, cfg, train):
    """PyTorch's own parts, as the engine used them before one loop served all: torch.optim.SGD,
    the recipe's torch scheduler and F.cross_entropy, batch by batch in the engine's order."""
    model = _model(name, seed).train()
    x, y = train
    fit_momentum(model, steps_per_epoch(len(x), cfg.batch_size))  # the recipe's BatchNorm momentum (engine.batchnorm)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )
    steps = steps_per_epoch(len(x), cfg.batch_size)
    sched = make_scheduler(opt, cfg.schedule, cfg.epochs * steps, cfg.warmup_frac)
    order = torch.Generator().manual_seed(cfg.data_seed)
    for _ in range(cfg.epochs):
        for idx in epoch_batches(torch.randperm(len(x), generator=order), cfg.batch_size):
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx], label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model


@pytest.mark.parametrize("name", ["lenet", "airbench"])
@pytest.mark.parametrize("cfg", RECIPES[:3], ids=["momentum", "nesterov-wd-cosine", "smoothing-onecycle"])
def test_one_model_trains_as_pytorchs_own_sgd_schedule_and_loss(tiny_splits, name, cfg):
    train, val = _data(tiny_splits)
    model, _ = _alone(name, 3, cfg, train, val)
    _same_weights(model, _reference(name, 3, cfg, train))  # BatchNorm running statistics included (airbench)


def test_a_population_of_one_trains_its_own_module_in_place(tiny_splits):
    train, val = _data(tiny_splits)
    module = _model("lenet", 3)
    before = module.conv1.weight if hasattr(module, "conv1") else next(module.parameters())
    start = before.detach().clone()
    members = [Member(RECIPES[1])]
    census = fit_population([module], members, train, val)
    assert census.kind == "plain" and members[0].status == "done" and members[0].module is module
    assert next(module.parameters()) is before and not torch.equal(before.detach(), start)  # the same tensor, trained


@pytest.mark.parametrize("name", ["lenet", "airbench"])
def test_each_model_of_a_population_is_that_model_trained_alone(tiny_splits, name):
    train, val = _data(tiny_splits)
    seeds = [0, 1, 2, 3]
    members, census = _together(name, seeds, RECIPES, train, val)
    for seed, cfg, member in zip(seeds, RECIPES, members, strict=True):
        model, result = _alone(name, seed, cfg, train, val)
        assert member.status == "done"
        _same_weights(member.module, model)
        _same_history(member.result, result)
    # The population's samples: 4 models x 2 epochs, but the 1-epoch model left after its epoch.
    assert census.samples == (4 + 3) * len(train[0]) - 0 and census.throughput > 0


def test_the_vmap_stack_trains_the_same_models(tiny_splits, monkeypatch):
    monkeypatch.setattr(pop._forwards, "fused_forward", lambda template: None)  # any model: functional_call under vmap
    train, val = _data(tiny_splits)
    members, census = _together("airbench", [0, 1], RECIPES[:2], train, val)
    assert census.kind == "vmap"
    for seed, cfg, member in zip([0, 1], RECIPES[:2], members, strict=True):
        model, result = _alone("airbench", seed, cfg, train, val)
        _same_weights(member.module, model)
        _same_history(member.result, result)


def test_other_models_do_not_change_model_k(tiny_splits):
    train, val = _data(tiny_splits)
    members, _ = _together("lenet", [0, 1, 2], RECIPES[:3], train, val)
    changed = dataclasses.replace(RECIPES[1], lr=0.3, weight_decay=0.0, momentum=0.0)
    other, _ = _together("lenet", [0, 5, 2], [RECIPES[0], changed, RECIPES[2]], train, val)
    fewer, _ = _together("lenet", [0, 2], [RECIPES[0], RECIPES[2]], train, val)
    for k, j in ((0, 0), (2, 2)):
        _same_weights(members[k].module, other[j].module)
    _same_weights(members[0].module, fewer[0].module)
    _same_weights(members[2].module, fewer[1].module)
    assert not torch.equal(members[1].module[0].weight, other[1].module[0].weight)  # the test can see a change


def test_a_member_stopped_at_an_epoch_leaves_and_the_rest_go_on(tiny_splits):
    train, val = _data(tiny_splits)
    seen = []

    def on_epoch_end(epoch, metrics):
        seen.append((epoch, sorted(metrics)))
        return [1] if epoch == 1 else []

    members, _ = _together("lenet", [0, 1, 2], RECIPES[:3], train, val, on_epoch_end)
    assert seen == [(1, [0, 1, 2]), (2, [0, 2])]
    assert [m.status for m in members] == ["done", "stopped", "done"]
    assert members[1].module is None and len(members[1].result.history) == 1
    model, _ = _alone("lenet", 2, RECIPES[2], train, val)
    _same_weights(members[2].module, model)  # the population shrank under it


def test_a_diverging_member_fails_alone(tiny_splits):
    train, val = _data(tiny_splits)
    wild = dataclasses.replace(BASE, lr=1e6, momentum=0.0)
    members, _ = _together("lenet", [0, 1], [RECIPES[0], wild], train, val)
    assert members[1].status == "diverged" and "training loss became" in members[1].error
    assert members[0].status == "done"
    model, _ = _alone("lenet", 0, RECIPES[0], train, val)
    _same_weights(members[0].module, model)


@pytest.mark.parametrize("schedule,warmup", [("constant", 0.2), ("cosine", 0.1), ("onecycle", 0.0)])
def test_per_model_schedules_are_the_schedulers_values(schedule, warmup):
    cfgs = [TrainConfig(lr=lr, epochs=e, schedule=schedule, warmup_frac=warmup) for lr, e in ((0.1, 3), (0.02, 2))]
    table = lr_table(cfgs, 10, CPU, torch.float64)
    assert table.shape == (2, 30)
    for row, cfg in zip(table, cfgs, strict=True):
        opt = torch.optim.SGD([torch.zeros(1)], lr=cfg.lr)
        sched = make_scheduler(opt, cfg.schedule, cfg.epochs * 10, cfg.warmup_frac)
        expected = []
        for _ in range(cfg.epochs * 10):
            expected.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        assert row[: len(expected)].tolist() == pytest.approx(expected, rel=1e-12)
        assert row[len(expected) :].eq(0).all()


def test_a_lambda_schedule_table_builds_no_optimizer():
    """torch.optim imports torch._dynamo (~0.9 s of a worker's start-up): constant and cosine
    tables are LambdaLR's factors computed directly, so a LeNet worker's first step skips it."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from fmnist_search.engine.population import lr_table\n"
        "from fmnist_search.core.config import TrainConfig\n"
        "lr_table([TrainConfig(lr=0.1, schedule='cosine', warmup_frac=0.3)], 10, torch.device('cpu'), torch.float32)\n"
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_population_must_share_its_batches(tiny_splits):
    train, val = _data(tiny_splits)
    with pytest.raises(ValueError, match="shares batch size"):
        _together("lenet", [0, 1], [BASE, dataclasses.replace(BASE, batch_size=64)], train, val)
    with pytest.raises(ValueError, match="fp32 or bf16"):
        _together("lenet", [0, 1], [dataclasses.replace(BASE, precision="fp16")] * 2, train, val)


def test_distilled_members_match_distillation_alone(tiny_splits):
    train, val = _data(tiny_splits)
    teacher = _model("lenet", 99).eval()
    cfgs = [
        dataclasses.replace(BASE, teacher="t", distill=0.5, distill_temp=2.0),
        dataclasses.replace(BASE, teacher="t", distill=0.0, lr=0.02),
        dataclasses.replace(BASE, teacher="t", distill=0.9, distill_temp=4.0, label_smoothing=0.1),
    ]
    members = [Member(cfg) for cfg in cfgs]
    fit_population([_model("lenet", s) for s in (0, 1, 2)], members, train, val, teacher=teacher)
    for seed, cfg, member in zip((0, 1, 2), cfgs, members, strict=True):
        model = _model("lenet", seed)
        result = fit(model, train, val, cfg, teacher=teacher)
        _same_weights(member.module, model)
        _same_history(member.result, result)


# --- populations that stay full: per-member augmentation, refills at epoch boundaries ---

AUGMENTED = [  # three views of the same images: crop, flip + erasing, none
    dataclasses.replace(BASE, crop=2),
    dataclasses.replace(BASE, lr=0.02, flip=True, erasing=0.3),
    dataclasses.replace(BASE, lr=0.08, momentum=0.5),
]


def test_members_with_their_own_augmentation_train_as_they_would_alone(tiny_splits):
    """Augmentation is per member (a view of each batch with its own generator), so recipes that
    differ in crop, flip and erasing share a population instead of splitting it."""
    train, val = _data(tiny_splits)
    assert len({pop.shared_key(c) for c in AUGMENTED}) == 1
    members, census = _together("lenet", [0, 1, 2], AUGMENTED, train, val)
    assert census.kind == "fused"
    for seed, cfg, member in zip([0, 1, 2], AUGMENTED, members, strict=True):
        model, result = _alone("lenet", seed, cfg, train, val)
        _same_weights(member.module, model)
        _same_history(member.result, result)


def _refilling(recipes_by_round, seeds):
    """A refill that hands out the recipes given for each population epoch, fresh models seeded in order."""
    joined = []

    def refill(left, free):
        at = len(refill.rounds)
        refill.rounds.append((sorted(left), free))
        out = []
        for cfg in recipes_by_round.get(at + 1, [])[:free]:
            seed = seeds[len(joined)]
            joined.append((at + 1, seed, cfg))
            out.append((_model("lenet", seed), Member(cfg)))
        return out

    refill.rounds = []
    return refill, joined


def _fresh_start(seed, cfg, after: pop.Snapshot):
    """The snapshot of a fresh model at a population's point: how a member that joined there
    would train alone on the same batches (the data order from there, its view's generator)."""
    model = _model("lenet", seed)
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    return model, pop.Snapshot(0, 0, model.state_dict(), zeros, after.order, "cpu", [], round=after.at_round)


def test_a_member_that_joins_later_trains_as_it_would_alone_on_the_same_batches(tiny_splits):
    """Rows freed after epoch 1 are refilled: the new members start at their epoch 1 beside a
    member at its epoch 2, each with its own lr position, fresh weights and zero momentum."""
    train, val = _data(tiny_splits)
    first = [dataclasses.replace(AUGMENTED[0], epochs=3), dataclasses.replace(BASE, epochs=1), AUGMENTED[2]]
    late = [dataclasses.replace(RECIPES[1], epochs=2, flip=True), dataclasses.replace(AUGMENTED[2], lr=0.1)]
    refill, joined = _refilling({1: late[:1], 2: late[1:]}, seeds=[7, 8])
    members = [Member(c) for c in first]
    taken = {}
    stats = fit_population(
        [_model("lenet", s) for s in (0, 1, 2)],
        members,
        train,
        val,
        refill=refill,
        snapshot_every=1,
        on_snapshot=lambda r, snaps: taken.setdefault(r, snaps),
    )
    # round 1: member 1 (1 epoch) leaves -> 3 joins; round 2: member 2 leaves -> 4 joins;
    # round 3: 0 and 3 leave (nothing left to hand out); round 4: 4 leaves.
    assert refill.rounds == [([1], 1), ([2], 1), ([0, 3], 2), ([4], 1)]
    assert [m.status for m in members] == ["done"] * 5
    assert stats.refills == 2 and stats.capacity == 3
    assert stats.occupancy == pytest.approx((3 * 3 + 1) / (4 * 3))  # full for 3 epochs, one row in the 4th
    for at_round, seed, cfg in joined:
        member = next(m for m in members[3:] if m.cfg == cfg)
        point = next(iter(taken[at_round].values()))
        model, start = _fresh_start(seed, cfg, point)
        alone = [Member(cfg)]
        fit_population([model], alone, train, val, resume=[start])
        _same_weights(member.module, model)
        _same_history(member.result, alone[0].result)
        assert [e.epoch for e in member.result.history] == [1, 2]
    for seed, cfg, member in zip([0, 2], [first[0], first[2]], [members[0], members[2]], strict=True):
        model, _result = _alone("lenet", seed, cfg, train, val)  # the members around them do not change them
        _same_weights(member.module, model)


def test_a_population_with_members_at_different_epochs_resumes_bit_for_bit(tiny_splits):
    train, val = _data(tiny_splits)
    first = [dataclasses.replace(c, epochs=e) for c, e in zip(AUGMENTED, (3, 1, 3), strict=True)]
    late = {1: [dataclasses.replace(RECIPES[1], epochs=3, crop=4)]}

    def run(resume=None, members=None, seeds=(0, 1, 2), stop_after=None):
        refill, _ = _refilling(late if resume is None else {}, seeds=[7])
        members = members or [Member(c) for c in first]
        taken = {}

        def on_epoch_end(at_round, metrics):
            if stop_after is not None and at_round == stop_after:
                raise KeyboardInterrupt
            return []

        with contextlib.suppress(KeyboardInterrupt):
            fit_population(
                [_model("lenet", s) for s in seeds],
                members,
                train,
                val,
                on_epoch_end,
                refill=refill,
                resume=resume,
                snapshot_every=1,
                on_snapshot=lambda r, snaps: taken.setdefault(r, snaps),
            )
        return members, taken

    whole, taken = run()
    snaps = taken[2]  # after the population's epoch 2: members 0 and 2 at epoch 2, member 3 at epoch 1
    assert {m: s.epoch for m, s in snaps.items()} == {0: 2, 2: 2, 3: 1}
    from tests.test_checkpoints import _identical, _through_a_file

    order = sorted(snaps)
    resumed = [Member(whole[m].cfg) for m in order]
    run(resume=[_through_a_file(snaps[m]) for m in order], members=resumed, seeds=[0, 2, 7])
    for m, member in zip(order, resumed, strict=True):
        _identical(whole[m], member)


def test_batchnorm_statistics_fit_a_short_epoch_and_full_data_trains_as_before(real_data):
    """A quick look (few steps an epoch) evaluates on running statistics that fit the data: airbench
    on 2,048 real images, 8 steps of 256, is judged on what it learnt (near its training accuracy),
    not on its initial statistics (chance, 0.1000, with PyTorch's momentum)."""
    assert momentum_for(8) == pytest.approx(1 - 0.01 ** (1 / 8)) and 0.9**8 > 0.4 > (1 - momentum_for(8)) ** 8
    assert momentum_for(44) == 0.1 and momentum_for(390) == 0.1  # the full split: PyTorch's default
    splits = data.make_splits(real_data, 1000, 2048, 0)
    train, val = to_device(*splits.train, CPU), to_device(*splits.val, CPU)
    cfg = TrainConfig(lr=0.05, epochs=2, batch_size=256, momentum=0.9, nesterov=True, data_seed=1)
    result = fit(build_model("airbench", 0, CPU).module, train, val, cfg)
    last = result.history[-1]
    assert last.train_accuracy > 0.5 and last.val_accuracy > last.train_accuracy - 0.15
