"""The stacked forward: K models of one architecture as one network over their stacked state."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# (state, x: (N, ...) for every model or (K, N, ...) one per model, training) -> (K, N, classes)
Forward = Callable[[dict[str, torch.Tensor], torch.Tensor, bool], torch.Tensor]


_FUSABLE = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.GELU, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)


def fused_forward(template: nn.Module) -> Forward | None:
    """K copies of a ``nn.Sequential`` as grouped ops, or None when ``template`` has other layers."""
    if not isinstance(template, nn.Sequential) or not all(isinstance(m, _FUSABLE) for m in template):
        return None
    layers = list(template.named_children())

    def forward(state: dict[str, torch.Tensor], x: torch.Tensor, training: bool) -> torch.Tensor:
        k_models = next(iter(state.values())).shape[0]
        shared = x.dim() == 4  # x is the batch every model sees, until the first convolution
        if not shared:  # (K, N, C, H, W): each model's own view -> (N, K * C, H, W), grouped from the start
            x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
        for name, m in layers:
            if isinstance(m, nn.Conv2d):
                w = state[f"{name}.weight"]
                b = state.get(f"{name}.bias")
                x = F.conv2d(
                    x,
                    # (K * out, in, kh, kw), channels_last like the single-model engine's: the
                    # activations follow the weights' layout, and NHWC pooling/ReLU are much faster on the CPU.
                    w.reshape(-1, *w.shape[2:]).to(memory_format=torch.channels_last),
                    None if b is None else b.reshape(-1),
                    m.stride,
                    m.padding,
                    m.dilation,
                    groups=1 if shared else k_models,
                )
                shared = False
            elif isinstance(m, nn.BatchNorm2d):
                # running stats are (K, C) and contiguous: their (K * C) views are updated in place.
                x = F.batch_norm(
                    x,
                    state[f"{name}.running_mean"].view(-1),
                    state[f"{name}.running_var"].view(-1),
                    state[f"{name}.weight"].reshape(-1),
                    state[f"{name}.bias"].reshape(-1),
                    training,
                    m.momentum if m.momentum is not None else 0.1,
                    m.eps,
                )
                if training:
                    state[f"{name}.num_batches_tracked"].add_(1)
            elif isinstance(m, nn.Flatten):  # (N, K * C, h, w) -> (K, N, C * h * w)
                x = (x.unsqueeze(1) if shared else x).reshape(x.shape[0], k_models, -1).transpose(0, 1)
            elif isinstance(m, nn.Linear):
                w = state[f"{name}.weight"].transpose(1, 2)  # (K, in, out)
                b = state.get(f"{name}.bias")
                x = torch.bmm(x, w) if b is None else torch.baddbmm(b.unsqueeze(1), x, w)
            else:  # elementwise and pooling layers act per channel: the same on K * C channels
                x = m(x)
        return x

    return forward


def vmap_forward(template: nn.Module) -> Forward:
    """Any model: ``functional_call`` under ``vmap`` (PyTorch batches convolutions into grouped ones)."""
    from torch.func import functional_call, vmap

    base = copy.deepcopy(template).to("meta")

    def one(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(base, state, (x,))
        return out

    shared, own = vmap(one, in_dims=(0, None)), vmap(one, in_dims=(0, 0))  # one batch, or one view per model

    def forward(state: dict[str, torch.Tensor], x: torch.Tensor, training: bool) -> torch.Tensor:
        base.train(training)
        return (shared if x.dim() == 4 else own)(state, x)

    return forward


def plain_forward(module: nn.Module) -> Forward:
    """One model as a population of one: the module itself (or its ``torch.compile`` wrapper),
    with its own parameters; ``state`` is not read."""

    def forward(state: dict[str, torch.Tensor], x: torch.Tensor, training: bool) -> torch.Tensor:
        if module.training != training:  # .train() walks every submodule: only when it changes
            module.train(training)
        out: torch.Tensor = module(x)
        return out.unsqueeze(0)

    return forward


def make_forward(template: nn.Module) -> tuple[str, Forward]:
    fused = fused_forward(template)
    return ("fused", fused) if fused is not None else ("vmap", vmap_forward(template))


def stack(modules: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    """The models' state dicts stacked on a new leading dimension; parameters are leaves that need grad."""
    names = {n for n, _ in modules[0].named_parameters()}
    state = {}
    for key in modules[0].state_dict():
        t = torch.stack([m.state_dict()[key].detach() for m in modules]).contiguous()
        state[key] = t.requires_grad_() if key in names else t
    return state


def unstack(state: dict[str, torch.Tensor], row: int, like: nn.Module) -> nn.Module:
    module = copy.deepcopy(like)
    module.load_state_dict({k: v[row].detach() for k, v in state.items()})
    return module.train(False)


def unwrapped(module: nn.Module) -> nn.Module:
    """The module itself, under a ``torch.compile`` wrapper (which holds it as ``_orig_mod``)."""
    inner = getattr(module, "_orig_mod", module)
    return inner if isinstance(inner, nn.Module) else module
