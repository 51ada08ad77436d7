"""Using a trained model: confusion matrix, per-class accuracy, and images from files."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import FmnistSearchError
from .train import predict_proba, to_device

BORDER_PX = 2  # the ring of pixels that tells background from garment


def confusion_matrix(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int = 10, tta_flip: bool = False
) -> torch.Tensor:
    """(true, predicted) counts for normalized inputs ``x``."""
    pred = predict_proba(model, x, tta_flip=tta_flip).argmax(1)
    return torch.bincount(y * num_classes + pred, minlength=num_classes**2).view(num_classes, num_classes).cpu()


def per_class_accuracy(matrix: torch.Tensor) -> list[float]:
    return (matrix.diag().float() / matrix.sum(1).clamp(min=1).float()).tolist()


def load_image(path: Path) -> tuple[torch.Tensor, bool]:
    """A picture file as a 28x28 uint8 tensor in Fashion-MNIST's polarity, and whether it was inverted.

    Fashion-MNIST shows a light garment on a black background. A picture whose border is
    mostly light (a dark garment photographed on white, the usual product shot) is
    inverted to match. Colour is converted to grayscale; the image is resized to 28x28
    without keeping its aspect ratio, so crop it to the garment first.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            gray = img.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    except FileNotFoundError:
        raise FmnistSearchError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError) as e:
        raise FmnistSearchError(f"cannot read image {path}: {e}") from None
    pixels = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8).view(28, 28).clone()
    border = torch.cat(
        [
            pixels[:BORDER_PX].flatten(),
            pixels[-BORDER_PX:].flatten(),
            pixels[:, :BORDER_PX].flatten(),
            pixels[:, -BORDER_PX:].flatten(),
        ]
    )
    invert = border.float().mean().item() > 127
    return (255 - pixels if invert else pixels), invert


def predict_images(model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Class probabilities (N, 10) for uint8 images (N, 28, 28)."""
    x, _ = to_device(images, torch.zeros(len(images), dtype=torch.long), device)
    return predict_proba(model.to(device), x).cpu()
