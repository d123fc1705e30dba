"""`lvm run vae`: the course's Q2a, a convolutional VAE on 32x32 images."""

from __future__ import annotations

from lvm.engine import figures
from lvm.engine.spec import ELBO_TERMS, Evaluation, ModelSpec, Stage
from lvm.engine.train import TrainConfig
from lvm.vae.model import VAE, Decoder, Encoder, VAEConfig

__all__ = ["VAE", "VAEConfig", "Encoder", "Decoder", "MODEL"]

MODEL = ModelSpec(
    name="vae",
    config=VAEConfig,
    stages=(Stage("vae", VAE, ELBO_TERMS),),
    kinds=("image",),
    default_dataset="shapes",  # built in; the course used svhn (pass --dataset svhn)
    train=TrainConfig(epochs=20, batch_size=128, lr=1e-3),
    from_data={"channels": lambda info: info.channels},
    figures=figures.samples_reconstructions_interpolations,
    official={
        "svhn": {"neg_elbo": 104.04, "recon_loss": 79.38, "kl_loss": 24.66},
        "cifar10": {"neg_elbo": 241.61, "recon_loss": 210.07, "kl_loss": 31.54},
    },
    # k x test examples = 25,000 decoder passes: about 90 CPU seconds at the default widths
    evaluation=Evaluation(k=50, test_limit=500, samples=1000, note=(
        "decoder mean as a Gaussian N(mean, 1/2) on [-1, 1] (the squared-error loss), integrated over "
        "each of the 256 bins of an 8-bit value")),
)
