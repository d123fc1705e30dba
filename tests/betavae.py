"""A model that lives outside `lvm/`: a beta-VAE (Higgins et al., "beta-VAE: Learning Basic
Visual Concepts with a Constrained Variational Framework", 2017), the course's image VAE with the
KL term weighted by beta. `tests/test_engine.py` registers it with one line and drives it through
the CLI; nothing under `lvm/` knows it exists."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lvm.engine import figures
from lvm.engine.spec import ModelSpec, Stage, Term
from lvm.engine.train import TrainConfig
from lvm.vae.model import VAE, VAEConfig


@dataclass
class BetaVAEConfig(VAEConfig):
    beta: float = 4.0  # weight of the KL term; 1 is the plain VAE
    enc_widths: tuple[int, int, int, int] = (4, 8, 8, 8)  # tiny, so that the tests run in seconds
    dec_widths: tuple[int, int, int, int] = (8, 8, 8, 4)


class BetaVAE(VAE):
    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().loss(x)
        terms["loss"] = terms["recon_loss"] + self.cfg.beta * terms["kl_loss"]
        return terms


MODEL = ModelSpec(
    name="betavae",
    config=BetaVAEConfig,
    stages=(Stage("betavae", BetaVAE, (
        Term("loss", "beta-ELBO", metric="beta_elbo", course="-beta-ELBO"),
        Term("recon_loss", "recon", course="Recon Loss"),
        Term("kl_loss", "KL", course="KL Loss"),
    )),),
    kinds=("image",),
    default_dataset="shapes",
    train=TrainConfig(epochs=1, batch_size=32),
    from_data={"channels": lambda info: info.channels},
    figures=figures.samples_reconstructions_interpolations,
    variants={"plain": {"beta": 1.0}},
    official={"shapes-plain": {"beta_elbo": 100.0}},
)
