"""`lvm run vae`: the course's Q2a, a convolutional VAE on 32x32 images."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch

from lvm.engine import pipeline as experiment
from lvm.engine.data import Data, DataInfo, from_unit, to_unit
from lvm.engine.plotting import save_image_grid, save_interpolations, save_reconstructions
from lvm.registry import Entry, register
from lvm.engine.train import TrainConfig
from lvm.vae.model import VAE, Decoder, Encoder, VAEConfig

__all__ = ["VAE", "VAEConfig", "Encoder", "Decoder", "report"]

TERMS = {"neg_elbo": "-ELBO", "recon_loss": "Recon Loss", "kl_loss": "KL Loss"}
LABELS = {"loss": "-ELBO", "recon_loss": "recon", "kl_loss": "KL"}


def build(config: dict, info: DataInfo, stage: str = "") -> VAE:
    return VAE(VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}))


def report(model: VAE, name: str, config: dict, data: Data, cfg: TrainConfig, out: Path,
           resume: bool = False) -> dict:
    """Train an image VAE (or a subclass) and write the course's figures; shared with `vlae`."""
    history = experiment.fit(model, name, config, data.train, data.test, data.info, cfg, out,
                             resume=resume, labels=LABELS)
    model.eval()
    device = next(model.parameters()).device
    title = f"{name} on {data.info.name}"
    torch.manual_seed(cfg.seed)
    save_image_grid(from_unit(model.sample(100)), out / "samples.png", f"{title}: 100 samples")
    x = data.test[:50].to(device)  # (50, C, 32, 32) uint8
    save_reconstructions(from_unit(to_unit(x)), from_unit(model.reconstruct(x)), out / "reconstructions.png",
                         f"{title}: test images (left) and reconstructions")
    pick = torch.randperm(len(data.test), generator=torch.Generator().manual_seed(cfg.seed))[:20]
    pairs = data.test[pick].to(device)  # (20, C, 32, 32) uint8
    rows = model.interpolate(pairs[:10], pairs[10:], steps=10)  # (10, 10, C, 32, 32)
    save_interpolations(from_unit(rows), out / "interpolations.png",
                        f"{title}: between the latent means of two test images")
    test = {"neg_elbo": history.test["loss"][-1], "recon_loss": history.test["recon_loss"][-1],
            "kl_loss": history.test["kl_loss"][-1]}
    return {"test": test, "config": config}


def run(data: Data, cfg: TrainConfig, out: Path, resume: bool = False) -> dict:
    mcfg = VAEConfig(channels=data.info.channels)
    return report(VAE(mcfg), "vae", asdict(mcfg), data, cfg, out, resume)


register(Entry(
    name="vae",
    summary="convolutional VAE, 16-d latent, N(0, I) prior (course Q2a)",
    kinds=("image",),
    default_dataset="shapes",  # built in; the course used svhn (pass --dataset svhn)
    train=TrainConfig(epochs=20, batch_size=128, lr=1e-3),
    run=run,
    build=build,
    terms=TERMS,
))
