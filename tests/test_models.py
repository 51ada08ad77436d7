import optuna
import pytest
import torch

from fmnist_search.core.errors import ConfigError
from fmnist_search.core.rules import MODEL_NAMES
from fmnist_search.engine.models import create_model, list_models, num_params

# Parameter counts: LeNet by hand (conv 156 + 2416, fc 30840 + 10164 + 850); airbench by
# hand (convs 144 + 4608 + 9216 + 18432 + 36864 + 36864 + 36864, BN 2 x 336, linear 640);
# the ResNets are torchvision's minus the 7x7 RGB stem plus a 3x3 1-channel one.
PARAMS = {"airbench": 144_304, "lenet": 44_426, "resnet18": 11_172_810, "resnet34": 21_280_970}


def test_registry_lists_the_models():
    assert list_models() == ["airbench", "lenet", "resnet18", "resnet34"]
    assert list_models() == list(MODEL_NAMES)  # the torch-free copy that settings and --help use


def test_registries_have_exactly_the_names_settings_check():
    from fmnist_search.core.rules import PRUNER_NAMES, SAMPLER_NAMES, SPACE_NAMES
    from fmnist_search.search.study import PRUNERS, SAMPLERS
    from fmnist_search.search.trials.space import SPACES

    assert sorted(SAMPLERS) == list(SAMPLER_NAMES)
    assert sorted(PRUNERS) == list(PRUNER_NAMES)
    assert sorted(SPACES) == list(SPACE_NAMES)


def test_the_core_knows_the_engines_schedules_and_precisions():
    from fmnist_search.core.rules import PRECISION_NAMES, SCHEDULE_NAMES
    from fmnist_search.engine.devices import PRECISIONS
    from fmnist_search.engine.schedules import make_scheduler
    from fmnist_search.search.trials.space import PARAMS

    assert sorted(PRECISIONS) == list(PRECISION_NAMES)
    for name in SCHEDULE_NAMES:  # each name a recipe may hold builds a schedule
        make_scheduler(torch.optim.SGD([torch.zeros(1)], lr=0.1), name, 100, 0.1)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_scheduler(torch.optim.SGD([torch.zeros(1)], lr=0.1), "cosin", 100, 0.1)
    sampled = {PARAMS["schedule"](optuna.trial.FixedTrial({"schedule": s}), None) for s in SCHEDULE_NAMES}
    assert sampled == set(SCHEDULE_NAMES)  # the full space samples every schedule there is


@pytest.mark.parametrize("name", list_models())
def test_forward_shape_and_params(name):
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert num_params(model) == PARAMS[name]


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnet_stem_is_adapted_to_28x28(name):
    model = create_model(name)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown model 'vgg'.*airbench, lenet, resnet18, resnet34"):
        create_model("vgg")


def test_airbench_pools_28_to_3_pixels():
    # Three pooling convs: 28 -> 14 -> 7 -> 3; the global max-pool then sees 3x3 maps of 64 channels.
    model = create_model("airbench").eval()
    feats = model[:-3](torch.randn(2, 1, 28, 28))
    assert feats.shape == (2, 64, 3, 3)
