"""Model registry: name -> builder. Builders have no side effects (no device, no seed).

Like timm: ``@register_model`` adds a builder, ``create_model(name)`` builds one,
``list_models()`` feeds the CLI's ``--model`` choices.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import cast

import torch.nn as nn

from ..core.errors import ConfigError

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


def _conv_bn(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    # airbench's order: pooling right after the conv, so BatchNorm and GELU run on 1/4 of the pixels.
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return [*layers, nn.BatchNorm2d(cout), nn.GELU()]


@register_model
def airbench() -> nn.Module:
    """airbench94's network layout (Keller Jordan's fast CIFAR-10 trainer), sized for 1x28x28 and a CPU.

    A conv stem and three blocks of two 3x3 convs (the first one pooling: 28 -> 14 -> 7 -> 3
    pixels), widths 16/32/64/64, then a global max-pool and one linear layer: 144,304
    parameters, ~13 M multiply-adds per image (LeNet 0.28 M, the 28x28 ResNet18 456 M; torch.utils.flop_counter).
    Between LeNet and the ResNets: measured in the README's accuracy table.
    """
    widths = (16, 32, 64, 64)
    layers = _conv_bn(1, widths[0], pool=False)
    for cin, cout in itertools.pairwise(widths):
        layers += _conv_bn(cin, cout, pool=True) + _conv_bn(cout, cout, pool=False)
    return nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[-1], NUM_CLASSES, bias=False))


def _small_input_resnet(name: str) -> nn.Module:
    # The usual adaptation to 28x28 inputs: a 1-channel 3x3 stride-1 stem and no
    # max-pool, so the first stage sees 28x28 instead of 7x7 feature maps.
    # torchvision is imported here, not at start-up: it costs ~0.9 s (it pulls in torch._dynamo
    # through torchvision.ops) that a LeNet or airbench worker never needs (benchmarks/startup.py).
    import torchvision.models

    model = cast(nn.Module, getattr(torchvision.models, name)(num_classes=NUM_CLASSES))
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model
def resnet18() -> nn.Module:
    return _small_input_resnet("resnet18")


@register_model
def resnet34() -> nn.Module:
    return _small_input_resnet("resnet34")
