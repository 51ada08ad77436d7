"""Device and precision resolution; the only module that asks the hardware what it has."""

from __future__ import annotations

import torch

from ..core.errors import ConfigError, DeviceError
from ..core.hardware import cpu_name

# precision name -> autocast dtype (None: plain fp32, no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name} asked for a CUDA GPU, but none is visible; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"--device {name} asked for Apple MPS, which is not available here; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` is bf16 on a CUDA GPU that supports it, else fp32 (CPU autocast is slower, not faster)."""
    if name == "auto":
        # Native bf16 only (Ampere and later): emulated bf16 on older GPUs is slower than fp32.
        native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native else "fp32"
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {name!r}; choose one of: auto, {', '.join(PRECISIONS)}")
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 needs a GPU; use --precision fp32 (or bf16) on the CPU")
    return name


def tune_backend(device: torch.device) -> None:
    """Process-wide settings for training on ``device`` (fixed input shapes: cuDNN may autotune)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # fp32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa products, fp32
        # accumulation): what fp32 training on Ampere+ normally means; bf16 autocast is unaffected.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings are honest on asynchronous devices."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"

    return cpu_name()
