"""How the models scale their inputs, and how any image becomes a picture to draw.

Datasets are stored as they are read (`lvm.engine.data`: uint8 images 0..255, 0/1 binary images,
float points); a model scales its input itself (`to_unit`), so the trainer never needs to know
which kind it holds.
"""

from __future__ import annotations

import torch


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images 0..255 -> float in [-1, 1], the course's scaling."""
    return x.float() * (2.0 / 255.0) - 1.0


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> float in [0, 1], for plotting."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def picture(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Images to draw, as (N, C, H, W) floats in [0, 1]: data as stored (uint8 0..255, or 0/1
    for binary images) or a model's output (floats in [-1, 1], or 0/1 tokens (N, H, W))."""
    x = x.detach().cpu()
    if kind == "binary":
        x = x.float()
        return x[:, None] if x.dim() == 3 else x
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return from_unit(x.float())
