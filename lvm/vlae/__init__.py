"""`lvm run vlae`: the course's Q2b, the VAE with an autoregressive-flow (MADE) prior. Everything
but the network and the official numbers is the VAE's (`lvm.vae`)."""

from __future__ import annotations

from dataclasses import replace

from lvm.engine.spec import ELBO_TERMS, Stage
from lvm.vae import MODEL as VAE_MODEL
from lvm.vlae.model import VLAE, AutoregressiveFlowPrior, VLAEConfig

__all__ = ["VLAE", "VLAEConfig", "AutoregressiveFlowPrior", "MODEL"]

MODEL = replace(
    VAE_MODEL,
    name="vlae",
    config=VLAEConfig,
    stages=(Stage("vlae", VLAE, ELBO_TERMS),),
    official={
        "svhn": {"neg_elbo": 102.57, "recon_loss": 80.25, "kl_loss": 22.31},
        "cifar10": {"neg_elbo": 238.92, "recon_loss": 210.33, "kl_loss": 28.59},
    },
)
