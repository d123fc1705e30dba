"""`lvm run pixelcnn`: a PixelCNN (or, with `--prior gated`, a Gated PixelCNN) as an image model
of its own on binarised images: every pixel a token of 2 levels, p(x) = prod_i p(x_i | x_<i).

The same classes are the priors over VQ-VAE code grids: `from lvm.pixelcnn.model import make_prior`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from lvm.engine import pipeline as experiment
from lvm.engine.data import Data, DataInfo
from lvm.engine.errors import UserError
from lvm.pixelcnn.model import (
    PRIORS,
    GatedPixelCNN,
    GatedPixelCNNConfig,
    GridModel,
    PixelCNN,
    PixelCNNConfig,
    make_prior,
)
from lvm.engine.plotting import save_image_grid
from lvm.registry import Entry, register
from lvm.engine.train import TrainConfig

__all__ = ["GatedPixelCNN", "GatedPixelCNNConfig", "GridModel", "PixelCNN", "PixelCNNConfig", "make_prior"]

TERMS = {"nll": "Test NLL (nats/dim)"}
LABELS = {"loss": "NLL (nats/dim)"}
# widths that may be changed from the command line (`--channels 64 --layers 5`); unset = the course's
WIDTH_OPTIONS = ("embed_dim", "channels", "layers", "head_channels")
LEVELS = 2  # binarised images: every pixel a token of 2 levels


def _config(prior: str, levels: int, embed_dim=None, channels=None, layers=None, head_channels=None):
    depth = "n_blocks" if prior == "pixelcnn" else "n_layers"
    given = {"embed_dim": embed_dim, "channels": channels, depth: layers, "head_channels": head_channels}
    return PRIORS[prior][1](levels=levels, **{k: int(v) for k, v in given.items() if v is not None})


def build(config: dict, info: DataInfo, stage: str = "") -> GridModel:
    """The model of a checkpoint's config; an empty config gives the default model (the plain
    PixelCNN at the course's widths), as for every registered model."""
    config = dict(config)
    kind = config.pop("prior", "pixelcnn")
    return make_prior(kind, **{"levels": LEVELS, **config})


def run(data: Data, cfg: TrainConfig, out: Path, resume: bool = False, prior: str = "pixelcnn",
        **widths) -> dict:
    """Train on the (N, 1, H, W) 0/1 images as H x W grids of 2-level tokens; `widths` (the
    WIDTH_OPTIONS) shrink the course's model where the budget asks for it."""
    if prior not in PRIORS:
        raise UserError(f"unknown prior '{prior}'; choose one of: {', '.join(PRIORS)}")
    _, H, W = data.info.shape  # (1, 32, 32): one channel of 0/1 tokens
    mcfg = _config(prior, levels=LEVELS, **widths)
    model = make_prior(prior, **asdict(mcfg))
    config = {"prior": prior, **asdict(mcfg)}
    name = "pixelcnn" if prior == "pixelcnn" else "gated pixelcnn"
    history = experiment.fit(model, "pixelcnn", config, data.train, data.test, data.info, cfg, out,
                             resume=resume, labels=LABELS, title=f"{name} on {data.info.name}")

    start = time.perf_counter()
    samples = model.sample(100, (H, W))  # (100, H, W) tokens 0/1
    seconds = time.perf_counter() - start
    save_image_grid(samples[:, None].float().cpu(), out / "samples.png",
                    f"{name} on {data.info.name}: 100 samples")
    return {"test": {"nll": history.test["loss"][-1]}, "config": config,
            "sample_seconds": round(seconds, 2)}


register(Entry(
    name="pixelcnn",
    summary="PixelCNN / Gated PixelCNN (--prior gated) on binarised images; also the VQ-VAE's prior",
    kinds=("binary",),
    default_dataset="fashion-mnist-binary",
    # the course's PixelCNN budget (its first homework, binarised MNIST): batch 128, Adam 1e-3,
    # 10 epochs, gradients clipped to norm 1
    train=TrainConfig(epochs=10, batch_size=128, lr=1e-3, grad_clip=1.0),
    run=run,
    build=build,
    terms=TERMS,
    options=("prior", *WIDTH_OPTIONS),
))
