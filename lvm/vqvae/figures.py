"""The VQ-VAE's own figure: test images beside their 8x8 grids of code indices, and `draw`, every
figure of a trained VQ-VAE with its prior (samples, reconstructions, code maps)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from lvm.blocks.scaling import picture
from lvm.engine import figures
from lvm.engine.data import Data
from lvm.engine.plotting import save_image_grid
from lvm.vqvae.model import VQVAEWithPrior, encode_all


def save_code_maps(images: torch.Tensor, codes: torch.Tensor, num_codes: int, path: str | Path,
                   title: str = "", nrow: int = 10) -> Path:
    """Images (N, C, H, W) in [0, 1], each followed by its discrete code map (N, h, w) of
    indices 0..num_codes-1, coloured by index and enlarged to the image's size."""
    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    colours = torch.from_numpy(plt.get_cmap("nipy_spectral")(np.linspace(0, 1, num_codes))[:, :3]).float()  # (K, 3)
    maps = colours[codes.detach().long().cpu()].permute(0, 3, 1, 2)  # (N, 3, h, w)
    maps = torch.nn.functional.interpolate(maps, size=images.shape[-2:], mode="nearest")  # (N, 3, H, W)
    pairs = torch.stack([images, maps], dim=1).flatten(0, 1)  # (2N, 3, H, W)
    return save_image_grid(pairs, path, title or "images (left of each pair) and their code maps", nrow=nrow)


def draw(model: VQVAEWithPrior, data: Data, out: Path, title: str) -> dict[str, float]:
    """Samples, reconstructions, and test images beside their code maps."""
    numbers = {**figures.samples(model, data, out, title), **figures.reconstructions(model, data, out, title)}
    x = data.test[:20]
    codes = encode_all(model.vqvae, x)  # (20, 8, 8)
    save_code_maps(picture(x, data.info.kind), codes, model.vqvae.cfg.num_codes, out / "codes.png",
                   f"{title}: test images and their 8x8 code maps")
    return numbers
