"""`lvm run pixelvae`: the course's Q4b PixelVAE, a conv encoder, a 16-d Gaussian latent and a
Gated PixelCNN decoder conditioned on a spatial map of z, with free bits (see model.py)."""

from __future__ import annotations

from lvm.engine import figures
from lvm.engine.spec import Evaluation, ModelSpec, Stage, Term
from lvm.engine.train import TrainConfig
from lvm.pixelvae.model import Encoder, LatentMap, PixelDecoder, PixelVAE, PixelVAEConfig

__all__ = ["Encoder", "LatentMap", "PixelDecoder", "PixelVAE", "PixelVAEConfig", "MODEL"]


def draw(model: PixelVAE, data, out, title: str) -> dict[str, float]:
    """Samples (drawn pixel by pixel) and reconstructions; no interpolations: each of their 100
    images would be another 784 decoder passes, and the course shows none for Q4b."""
    return {**figures.samples(model, data, out, title), **figures.reconstructions(model, data, out, title)}


MODEL = ModelSpec(
    name="pixelvae",
    config=PixelVAEConfig,
    stages=(Stage("pixelvae", PixelVAE, (
        Term("neg_elbo", "-ELBO", course="-ELBO"),
        Term("recon_loss", "recon", course="Recon Loss"),
        Term("kl_loss", "KL", course="KL Loss"),
        Term("loss", "loss (free bits)", metric="loss_free_bits"),
    )),),
    kinds=("binary",),
    default_dataset="fashion-mnist-binary",  # on disk here; the course used mnist-binary
    # the course's Q4b budget: batch 128, Adam 1e-3, 10 epochs
    train=TrainConfig(epochs=10, batch_size=128, lr=1e-3),  # no clipping: the course names none for Q4b
    from_data={"shape": lambda info: tuple(info.shape)},  # (1, H, W): 28 x 28 as the course
    figures=draw,
    official={"mnist-binary": {"neg_elbo": 85.93, "recon_loss": 60.12, "kl_loss": 25.81}},
    # every importance sample is a full teacher-forced PixelCNN pass (0.13 CPU seconds each at the
    # default widths, measured on the 2-core avx2 EPYC), and every sample 784 of them: the
    # budgets are far smaller than the VAE's
    evaluation=Evaluation(k=10, test_limit=100, samples=100, run_test_limit=100, note=(
        "Bernoulli of each pixel given the pixels before it and z: already a distribution over the 2 levels")),
)
