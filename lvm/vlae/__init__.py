"""`lvm run vlae`: the course's Q2b, the VAE with an autoregressive-flow (MADE) prior."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from lvm.engine.data import Data, DataInfo
from lvm.registry import Entry, register
from lvm.engine.train import TrainConfig
from lvm.vae import TERMS, report
from lvm.vlae.model import VLAE, AutoregressiveFlowPrior, VLAEConfig

__all__ = ["VLAE", "VLAEConfig", "AutoregressiveFlowPrior"]


def build(config: dict, info: DataInfo, stage: str = "") -> VLAE:
    return VLAE(VLAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}))


def run(data: Data, cfg: TrainConfig, out: Path, resume: bool = False) -> dict:
    mcfg = VLAEConfig(channels=data.info.channels)
    return report(VLAE(mcfg), "vlae", asdict(mcfg), data, cfg, out, resume)


register(Entry(
    name="vlae",
    summary="convolutional VAE with a MADE autoregressive-flow prior (course Q2b)",
    kinds=("image",),
    default_dataset="shapes",  # built in; the course used svhn (pass --dataset svhn)
    train=TrainConfig(epochs=20, batch_size=128, lr=1e-3),
    run=run,
    build=build,
    terms=TERMS,
))
