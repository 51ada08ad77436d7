"""Model registry: name -> builder. Builders have no side effects (no device, no seed).

Like timm: ``@register_model`` adds a builder, ``create_model(name)`` builds one,
``list_models()`` feeds the CLI's ``--model`` choices.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torchvision.models import resnet18 as _tv_resnet18
from torchvision.models import resnet34 as _tv_resnet34

from .errors import ConfigError

NUM_CLASSES = 10
_REGISTRY: dict[str, Callable[[], nn.Module]] = {}


def register_model(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(name: str) -> nn.Module:
    try:
        builder = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}") from None
    return builder()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@register_model
def lenet() -> nn.Module:
    """The report's LeNet: 28x28 -> conv5 -> 24 -> pool -> 12 -> conv5 -> 8 -> pool -> 4 (16*4*4 = 256)."""
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, kernel_size=5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(256, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, NUM_CLASSES),
    )


def _small_input_resnet(builder: Callable[..., nn.Module]) -> nn.Module:
    # The usual adaptation to 28x28 inputs: a 1-channel 3x3 stride-1 stem and no
    # max-pool, so the first stage sees 28x28 instead of 7x7 feature maps.
    model = builder(num_classes=NUM_CLASSES)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet18() -> nn.Module:
    return _small_input_resnet(_tv_resnet18)


@register_model
def resnet34() -> nn.Module:
    return _small_input_resnet(_tv_resnet34)
