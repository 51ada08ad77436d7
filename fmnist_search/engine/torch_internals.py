"""PyTorch's private names that fmnist-search uses: here, and nowhere else.

fp16 training of one model keeps a dynamic loss scale on the device, exactly as
``torch.amp.GradScaler`` does, with its own two kernels: GradScaler's public API wraps an
optimizer, and the population's update is a tensor SGD of its own (engine/population/_update.py).
torch is pinned (pyproject.toml), and ``check()`` (run by tests/test_internals.py) looks every
name up, so an upgrade that moves one fails there, in one place, naming it. A test also refuses
these names anywhere else in the package.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

NAMES = ("_amp_foreach_non_finite_check_and_unscale_", "_amp_update_scale_")


def unscale_(grads: Sequence[torch.Tensor], found_inf: torch.Tensor, inv_scale: torch.Tensor) -> None:
    """Multiply ``grads`` by ``inv_scale`` in place; ``found_inf`` becomes 1.0 if one holds inf or NaN."""
    torch._amp_foreach_non_finite_check_and_unscale_(list(grads), found_inf, inv_scale)


def update_scale_(scale: torch.Tensor, growth: torch.Tensor, found_inf: torch.Tensor) -> None:
    """GradScaler's update with its defaults: x2 after 2000 clean steps, x0.5 after an overflow."""
    torch._amp_update_scale_(scale, growth, found_inf, 2.0, 0.5, 2000)


def check() -> None:
    """Every private name is where the installed torch has it, or one error naming the moved ones."""
    missing = [name for name in NAMES if not hasattr(torch, name)]
    if missing:
        raise RuntimeError(f"torch {torch.__version__} has no {', '.join(missing)}: update engine/torch_internals.py")
