"""Plots. Every function is pure: data in, one PNG file out; none trains or touches a model."""

from __future__ import annotations

import io
import os
import textwrap
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never opens a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from lvm.engine import files  # noqa: E402
from lvm.engine.errors import UserError  # noqa: E402


def png_path(path: str | Path) -> Path:
    """`path`, checked before any work is done: a name ending in .png (the only format written
    here) whose folder exists or can be made, and can be written. One UserError line otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"{{out}} {path}: the picture is a PNG; give a path ending in .png")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p == Path(p.anchor or "."))
    if existing.exists() and not existing.is_dir():
        raise UserError(f"cannot write {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK):
        raise UserError(f"cannot write {path}: {existing} is not writable")
    return path


def _save(fig: plt.Figure, path: str | Path) -> Path:
    """Write the figure as a PNG, atomically; a failed write is one UserError line naming the reason."""
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return files.write_bytes(path, buffer.getbuffer())  # whole or not at all; a failure is one line


def plot_training(
    train: Mapping[str, Sequence[float]],
    test: Mapping[str, Sequence[float]],
    path: str | Path,
    title: str = "",
    labels: Mapping[str, str] | None = None,
    note: str = "",
) -> Path:
    """The course's training plot: each term's per-minibatch training loss on an epoch axis and
    its test loss at epoch 0 (initialisation) and after every epoch; one panel per term, and
    `note` in small print underneath."""
    labels = labels or {}
    keys = [k for k in test if k in train] or list(test)
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        te = np.asarray(test[key], float)
        epochs = len(te) - 1
        tr = np.asarray(train.get(key, []), float)
        if len(tr):
            ax.plot(np.linspace(0, epochs, len(tr)), tr, lw=0.8, alpha=0.7, label="train")
        ax.plot(np.arange(epochs + 1), te, "o-", ms=3, lw=1.5, label="test")
        values = np.concatenate([tr, te])
        values = values[np.isfinite(values)]
        if len(values) and values.min() > 0 and values.max() / values.min() > 30:
            ax.set_yscale("log")  # early losses dwarf the rest otherwise
        ax.set_title(labels.get(key, key))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if note:
        fig.text(0.01, -0.02, textwrap.fill(note, 40 * len(keys) + 20), ha="left", va="top", fontsize=8)
    return _save(fig, path)


def save_image_grid(images: torch.Tensor, path: str | Path, title: str = "", nrow: int = 10) -> Path:
    """Images (N, C, H, W) with values in [0, 1], `nrow` to a row."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    rows = (len(images) + nrow - 1) // nrow
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + 0.4, rows * 0.6 + (0.6 if title else 0.2)))
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def save_reconstructions(x: torch.Tensor, x_hat: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Pairs side by side: each image in [0, 1], followed by its reconstruction."""
    pairs = torch.stack([x.cpu(), x_hat.cpu()], dim=1).flatten(0, 1)  # (2N, C, H, W)
    return save_image_grid(pairs, path, title or "test images (left of each pair) and reconstructions")


def save_interpolations(rows: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """rows (R, steps, C, H, W) in [0, 1]: one interpolation per row."""
    return save_image_grid(rows.flatten(0, 1), path, title, nrow=rows.shape[1])


def save_scatter(
    sets: Mapping[str, np.ndarray | torch.Tensor], path: str | Path, title: str = ""
) -> Path:
    """2-D point sets, each (N, 2), overlaid with a legend; equal axes so shapes read true."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, pts in sets.items():
        pts = np.asarray(pts)
        ax.scatter(pts[:, 0], pts[:, 1], s=3, alpha=0.5, label=label)
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    if len(sets) > 1:
        ax.legend(markerscale=4)
    if title:
        ax.set_title(title)
    return _save(fig, path)
