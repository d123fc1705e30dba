"""Figures any model draws through its contract alone: samples (`sample(n)`), test images beside
their reconstructions (`reconstruct(x)`), interpolations between test images (`interpolate`).
A model's spec picks the ones that mean something for it; none of them trains anything."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from lvm.blocks.scaling import picture
from lvm.engine.data import Data
from lvm.engine.plotting import save_image_grid, save_interpolations, save_reconstructions


def samples(model: nn.Module, data: Data, out: Path, title: str, n: int = 100) -> dict[str, float]:
    """`samples.png`: n samples; returns the seconds sampling took."""
    start = time.perf_counter()
    x = model.sample(n)
    seconds = time.perf_counter() - start
    save_image_grid(picture(x, data.info.kind), out / "samples.png", f"{title}: {n} samples")
    return {"sample_seconds": round(seconds, 3)}


def reconstructions(model: nn.Module, data: Data, out: Path, title: str, n: int = 50) -> dict[str, float]:
    """`reconstructions.png`: the first n test images, each followed by its reconstruction."""
    device = next(model.parameters()).device
    x = data.test[:n].to(device)  # as stored: the model scales it itself
    with torch.no_grad():
        x_hat = model.reconstruct(x)
    kind = data.info.kind
    save_reconstructions(picture(x, kind), picture(x_hat, kind), out / "reconstructions.png",
                         f"{title}: test images (left) and reconstructions")
    return {}


def interpolations(model: nn.Module, data: Data, out: Path, title: str, rows: int = 10,
                   steps: int = 10) -> dict[str, float]:
    """`interpolations.png`: up to `rows` lines between the latent means of two random test
    images (fewer when the test set is small; none from fewer than two images)."""
    rows = min(rows, len(data.test) // 2)
    if rows == 0:
        return {}
    pick = torch.randperm(len(data.test))[: 2 * rows]
    ends = data.test[pick].to(next(model.parameters()).device)  # (2R, C, H, W) as stored
    with torch.no_grad():
        lines = model.interpolate(ends[:rows], ends[rows:], steps=steps)  # (R, S, C, H, W)
    save_interpolations(picture(lines.flatten(0, 1), data.info.kind).view(*lines.shape[:2], *lines.shape[2:]),
                        out / "interpolations.png", f"{title}: between the latent means of two test images")
    return {}


def samples_reconstructions_interpolations(model: nn.Module, data: Data, out: Path, title: str) -> dict[str, float]:
    """What the course shows of a VAE."""
    return {**samples(model, data, out, title), **reconstructions(model, data, out, title),
            **interpolations(model, data, out, title)}
