import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fmnist_search.engine import train
from fmnist_search.engine.models import create_model
from fmnist_search.engine.train import predict_proba
from tests.conftest import synthetic


class Recorder(nn.Module):
    """A linear model that records which samples (encoded in pixel 0) it trained on."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.seen: list[int] = []

    def forward(self, x):
        if self.training:
            self.seen += x[:, 0, 0, 0].round().long().tolist()
        return self.fc(x.flatten(1))


def test_every_sample_once_per_epoch():
    n = 1000
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
    y = torch.arange(n) % 10
    model = Recorder()
    cfg = train.TrainConfig(lr=1e-6, epochs=3, batch_size=64, momentum=0.0)
    train.fit(model, (x, y), (x[:10], y[:10]), cfg)
    epochs = [model.seen[i * n : (i + 1) * n] for i in range(3)]
    for seen in epochs:
        assert sorted(seen) == list(range(n))
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_trailing_single_sample_batch_is_dropped():
    batches = list(train.epoch_batches(torch.arange(513), 256))
    assert [len(b) for b in batches] == [256, 256]
    assert [len(b) for b in train.epoch_batches(torch.arange(514), 256)] == [256, 256, 2]


def test_to_device_normalizes():
    images = torch.full((4, 28, 28), 255, dtype=torch.uint8)
    x, _y = train.to_device(images, torch.arange(4), torch.device("cpu"))
    assert x.shape == (4, 1, 28, 28) and x.dtype == torch.float32
    assert torch.allclose(x, torch.tensor((1 - train.MEAN) / train.STD))


def test_fit_learns_and_reports_each_epoch():
    tr = train.to_device(*synthetic(400, 0), torch.device("cpu"))
    va = train.to_device(*synthetic(100, 1), torch.device("cpu"))
    torch.manual_seed(0)
    seen = []
    result = train.fit(create_model("lenet"), tr, va, train.TrainConfig(lr=0.05, epochs=4, batch_size=32), seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3, 4]
    assert seen[-1].val_accuracy > 0.9  # the synthetic classes are easy; chance is 0.1
    assert seen[-1].train_loss < seen[0].train_loss
    assert result.throughput > 0 and result.train_time_s > 0


def test_huge_lr_diverges():
    tr = train.to_device(*synthetic(200, 0), torch.device("cpu"))
    torch.manual_seed(0)
    with pytest.raises(train.Diverged, match="training loss became"):
        train.fit(create_model("lenet"), tr, tr, train.TrainConfig(lr=1e6, epochs=3, batch_size=32))


def test_evaluate_perfect_wrong_and_half_right():
    """Accuracy and mean cross-entropy over uneven batches (10 images in batches of 3), by hand."""
    y = torch.arange(10) % 10
    x = torch.zeros(10, 1, 28, 28)
    x[:, 0, 0, 0] = y.float()  # each image carries its label, so a model can be perfect

    class Scores(nn.Module):  # logit 5 for one chosen class, 0 for the nine others
        def __init__(self, pick):
            super().__init__()
            self.pick = pick

        def forward(self, x):
            return 5.0 * F.one_hot(self.pick(x[:, 0, 0, 0].long()), 10).float()

    confident = math.log(math.exp(5) + 9) - 5  # loss when the logit-5 class is the true one
    wrong = math.log(math.exp(5) + 9)  # loss when it is not

    acc, loss = train.evaluate(Scores(lambda label: label), x, y, batch_size=3)
    assert acc == 1.0 and loss == pytest.approx(confident, rel=1e-5)
    acc, loss = train.evaluate(Scores(lambda label: (label + 1) % 10), x, y, batch_size=3)
    assert acc == 0.0 and loss == pytest.approx(wrong, rel=1e-5)
    acc, loss = train.evaluate(Scores(lambda label: torch.where(label < 5, label, (label + 1) % 10)), x, y, 3)
    assert acc == 0.5 and loss == pytest.approx((confident + wrong) / 2, rel=1e-5)


def test_flip_tta_averages_an_image_and_its_mirror():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    x = torch.randn(300, 1, 28, 28)
    y = torch.randint(0, 10, (300,))
    with torch.no_grad():
        probs = 0.5 * (model(x).softmax(1) + model(x.flip(-1)).softmax(1))
    acc, loss = train.evaluate(model, x, y, batch_size=64, tta_flip=True)
    assert acc == pytest.approx((probs.argmax(1) == y).float().mean().item())
    assert loss == pytest.approx(torch.nn.functional.nll_loss(probs.log(), y).item(), rel=1e-5)
    plain, _ = train.evaluate(model, x, y, batch_size=64)
    assert plain == pytest.approx((model(x).argmax(1) == y).float().mean().item())


def test_predict_proba_with_flip_tta_averages_each_image_and_its_mirror():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))  # not mirror-symmetric
    x = torch.randn(5, 1, 28, 28)
    plain, mirrored = predict_proba(model, x), predict_proba(model, x.flip(-1))
    assert not torch.allclose(plain, mirrored)
    assert torch.allclose(predict_proba(model, x, batch_size=2, tta_flip=True), (plain + mirrored) / 2, atol=1e-6)


def test_throughput_leaves_out_the_first_epochs_one_time_costs():
    from fmnist_search.engine.train import EpochMetrics, FitResult

    def epoch(n, seconds):
        return EpochMetrics(n, 1.0, 0.5, 0.5, 1.0, seconds, 1000)

    assert FitResult([epoch(1, 10.0)]).throughput == 100.0  # one epoch: all there is
    assert FitResult([epoch(1, 10.0), epoch(2, 1.0), epoch(3, 1.0)]).throughput == 1000.0  # 2000 samples / 2 s
