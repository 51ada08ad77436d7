"""The training step as a CUDA graph: graph-ready on every device, captured on CUDA.

On the CPU: the step reads its batch from a static index table at a device position and its
lr at a device step counter, into buffers that keep their storage from epoch to epoch (what
a captured graph replays against), and gives exactly the batches ``epoch_batches`` gives.
Its numbers equal PyTorch's own SGD, scheduler and loss in float64: tests/test_population.py.
On CUDA (skipped without one; `benchmarks/gpu_check.sh` runs it on a lent GPU): replay equals
the eager step, and a member of a graphed population equals that model graphed alone.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fmnist_search.core.config import TrainConfig
from fmnist_search.engine import population as pop
from fmnist_search.engine.batches import epoch_batches, to_device
from fmnist_search.engine.population import Member, fit_population
from fmnist_search.engine.train import build_model
from tests.conftest import synthetic

CUDA = torch.cuda.is_available()


@pytest.mark.parametrize("n,batch", [(400, 64), (513, 256), (512, 128)])
def test_the_index_table_gives_epoch_batches_batches_in_static_buffers(n, batch):
    x, y = to_device(*synthetic(n), torch.device("cpu"))
    cfg = TrainConfig(lr=0.1, batch_size=batch, data_seed=5)
    batches = pop.SharedBatches((x, y), [cfg], None, lookup=False)
    order = torch.Generator().manual_seed(5)
    pointers = (batches.table.data_ptr(), batches.tail.data_ptr(), batches.pos.data_ptr())
    for _ in range(2):  # two epochs: new orders, the same storage
        expected = [idx.tolist() for idx in epoch_batches(torch.randperm(n, generator=order), batch)]
        batches.shuffle()
        got = [batches.next_full()[1].tolist() for _ in range(batches.full)]
        if batches.rest:
            got.append(batches.last()[1].tolist())
        assert got == [y[idx].tolist() for idx in expected]
        assert batches.pos.item() == batches.full
        assert (batches.table.data_ptr(), batches.tail.data_ptr(), batches.pos.data_ptr()) == pointers


def test_the_lr_is_read_at_the_device_step_counter():
    cfg = TrainConfig(lr=0.1, epochs=3, batch_size=64, schedule="cosine", warmup_frac=0.2)
    module = build_model("lenet", 0, torch.device("cpu")).module
    stack = pop.Stack([module], [cfg], 256, torch.device("cpu"))
    seen = []
    original = stack.opt.step
    stack.opt.step = lambda grads, lr, skip=None, rates=None: (seen.append(lr.item()), original(grads, lr, skip, rates))
    losses = torch.ones(1, requires_grad=True) * sum(p.sum() for p in module.parameters())
    for _ in range(5):
        stack.step(losses.view(1))
        losses = torch.ones(1, requires_grad=True) * sum(p.sum() for p in module.parameters())
    assert stack.step_t.item() == 5
    assert seen == pytest.approx(stack.lrs[0, :5].tolist(), rel=0)


def _fit(name: str, cfgs: list[TrainConfig], data, graphs: bool) -> list[Member]:
    device = data[0][0].device
    modules = [build_model(name, c.seed, device).module for c in cfgs]
    members = [Member(c) for c in cfgs]
    fit_population(modules, members, data[0], data[1], graphs=graphs)
    assert all(m.status == "done" for m in members)
    return members


def _same_run(a: Member, b: Member, tol: float) -> None:
    """The same weights, and the same epoch sums (the graph adds into the epoch's static buffer)."""
    _close(a.module, b.module, tol)
    for x, y in zip(a.result.history, b.result.history, strict=True):
        assert x.train_loss == pytest.approx(y.train_loss, rel=tol, abs=tol)
        assert x.train_accuracy == pytest.approx(y.train_accuracy, abs=0.01)


def _close(a: torch.nn.Module, b: torch.nn.Module, tol: float) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, rtol=tol, atol=tol, msg=name)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-5), ("bf16", 2e-2)])
def test_replay_equals_the_eager_step_on_cuda(precision, tol):
    device = torch.device("cuda")
    data = (to_device(*synthetic(1100, 0), device), to_device(*synthetic(256, 1), device))
    cfg = TrainConfig(
        lr=0.05, epochs=2, batch_size=128, flip=True, erasing=0.2, schedule="cosine", precision=precision, data_seed=3
    )  # 1,100 images: 8 full batches and one of 76
    eager = _fit("lenet", [cfg], data, graphs=False)
    graphed = _fit("lenet", [cfg], data, graphs=True)
    _same_run(eager[0], graphed[0], tol)


@pytest.mark.skipif(not CUDA, reason="CUDA graphs need a CUDA device")
def test_a_graphed_population_member_equals_that_model_graphed_alone():
    device = torch.device("cuda")
    data = (to_device(*synthetic(1100, 0), device), to_device(*synthetic(256, 1), device))
    base = TrainConfig(lr=0.05, epochs=2, batch_size=128, flip=True, precision="fp32", data_seed=3)
    cfgs = [dataclasses.replace(base, lr=lr, seed=i) for i, lr in enumerate((0.02, 0.05, 0.1))]
    together = _fit("lenet", cfgs, data, graphs=True)
    for k, cfg in enumerate(cfgs):
        _same_run(together[k], _fit("lenet", [cfg], data, graphs=True)[0], 1e-3)  # grouped vs plain kernels
