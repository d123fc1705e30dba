"""`lvm run vqvae`: the course's Q3 and Q4a, a VQ-VAE and a prior over its codes, in two stages:
1. the VQ-VAE learns to compress each image to an 8x8 grid of code indices;
2. a prior (the PixelCNN; with `-o prior=gated` the Gated PixelCNN; with `-o prior=transformer`
   a transformer) learns the distribution of the training set's code grids, for `prior_epochs`
   epochs.
Samples are code grids drawn from the prior and decoded by the VQ-VAE's decoder. The story of
the model, both stages and generation is told in `lvm/vqvae/model.py`.
"""

from __future__ import annotations

from lvm.engine.data import Data, DataInfo
from lvm.engine.spec import Evaluation, ModelSpec, Stage, Term
from lvm.engine.train import TrainConfig
from lvm.vqvae.figures import draw
from lvm.vqvae.model import PRIORS, VQVAE, VQVAEConfig, VQVAEWithPrior, encode_all, make_prior
from lvm.vqvae.quantizer import VectorQuantizer, codebook_usage

__all__ = ["VQVAE", "VQVAEConfig", "VQVAEWithPrior", "VectorQuantizer", "codebook_usage", "encode_all",
           "make_prior", "MODEL"]


def codes_of(stages: list[VQVAE], data: Data) -> Data:
    """What the prior trains on: the trained VQ-VAE's code grids of every image, (N, 8, 8)."""
    vqvae = stages[0]
    info = DataInfo(f"{data.info.name} codes", "codes", VQVAE.code_grid)
    return Data(info, encode_all(vqvae, data.train), encode_all(vqvae, data.test))


def prior_training(config: VQVAEConfig) -> dict[str, object]:
    """The prior stage's own schedule (the VQ-VAE trains at the run's)."""
    return {"lr_schedule": config.prior_lr_schedule, "warmup": config.prior_warmup}


def usage(model: VQVAEWithPrior, data: Data) -> dict[str, float]:
    """How much of the codebook the test set's codes use (perplexity, codes used)."""
    return codebook_usage(encode_all(model.vqvae, data.test), model.vqvae.cfg.num_codes)


MODEL = ModelSpec(
    name="vqvae",
    config=VQVAEConfig,
    stages=(
        Stage("vqvae", VQVAE, (
            Term("loss", "loss", "MSE + codebook + commitment", course="VQ-VAE Test Loss"),
            Term("recon_loss", "recon", "MSE"),
            Term("vq_loss", "VQ", "codebook + commitment"),
        ), note=("Why the first training steps sit far above the test loss at epoch 0: the test loss is "
                 "measured in evaluation mode, where BatchNorm uses its running statistics (at "
                 "initialisation mean 0 and variance 1, which leave the untrained decoder's output near 0, "
                 "the mean image); a training step normalises with its minibatch's own statistics, which "
                 "blow that output up (on shapes, 4.5 against 0.43 on the same batch), and Adam's first "
                 "steps overshoot before the curve settles. Not a bug.")),
        Stage("prior", lambda cfg: make_prior(cfg.prior, cfg.num_codes), (
            # the course prints "PixelCNN Prior Test NLL"; the gated and transformer priors say their name
            Term("loss", "prior NLL", "nats per code", metric="prior_nll",
                 course=lambda config: f"{PRIORS[config.get('prior', 'pixelcnn')]} Prior Test NLL"),
        ), inputs=codes_of, fields=("prior", "prior_epochs", "prior_lr_schedule", "prior_warmup"),
              epochs="prior_epochs", train=prior_training),
    ),
    kinds=("image",),
    default_dataset="shapes",  # built in; the course used svhn and cifar10
    train=TrainConfig(epochs=20, batch_size=128, lr=1e-3, grad_clip=1.0),
    from_data={"channels": lambda info: info.channels},
    assemble=lambda cfg, stages: VQVAEWithPrior(*stages),
    figures=draw,
    summarise=usage,
    variants={"gated": {"prior": "gated"}, "transformer": {"prior": "transformer"}},
    official={
        "svhn": {"loss": 0.0286, "prior_nll": 1.9440},
        "cifar10": {"loss": 0.0474, "prior_nll": 2.7528},
        "cifar10-gated": {"loss": 0.0557, "prior_nll": 2.8675},
    },
    evaluation=Evaluation(likelihood="bound", test_limit=2000, samples=500, note=(
        "the paper's bound: -log P(x | c(x)), the decoder's mean as N(mean, 1/2) on [-1, 1] integrated over "
        "each 8-bit bin, plus the prior's NLL of the codes c(x)")),
)
