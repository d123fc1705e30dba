"""`lvm run vqvae`: the course's Q3 and Q4a, a VQ-VAE with a PixelCNN prior over its codes.

Two stages, each trained with the one trainer and each resumable:
1. the VQ-VAE (`vqvae_checkpoint.pt`), then every image of train and test is encoded to its
   8x8 grid of code indices;
2. a prior over those grids (`prior_checkpoint.pt`): the plain PixelCNN (`--prior pixelcnn`, Q3)
   or the gated one (`--prior gated`, Q4a), for `prior_epochs` epochs.
Samples are code grids drawn from the prior and decoded by the VQ-VAE's decoder. The whole
model (both stages) is saved as `checkpoint.pt`, which `lvm sample` and `lvm reconstruct` use.
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from lvm.engine import pipeline as experiment
from lvm.engine.data import Data, DataInfo, from_unit
from lvm.pixelcnn.model import make_prior  # the prior over code grids
from lvm.engine.plotting import save_code_maps, save_image_grid, save_reconstructions
from lvm.registry import Entry, register
from lvm.engine.train import CHECKPOINT_FORMAT, TrainConfig, save_checkpoint
from lvm.vqvae.model import VQVAE, VQVAEConfig
from lvm.vqvae.quantizer import VectorQuantizer, codebook_usage

__all__ = ["VQVAE", "VQVAEConfig", "VectorQuantizer", "codebook_usage"]

TERMS = {"loss": "VQ-VAE Test Loss", "prior_nll": "PixelCNN Prior Test NLL"}
LABELS = {"loss": "VQ-VAE loss", "recon_loss": "reconstruction (MSE)", "vq_loss": "codebook + commitment"}
PRIOR_LABELS = {"loss": "prior NLL (nats per code)"}


class VQVAEWithPrior(nn.Module):
    """Both stages together: what a trained VQ-VAE is to a user (sample, reconstruct)."""

    def __init__(self, vqvae: VQVAE, prior: nn.Module):
        super().__init__()
        self.vqvae, self.prior = vqvae, prior

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images (n, C, 32, 32) in [-1, 1]: code grids from the prior, decoded."""
        codes = self.prior.sample(n, self.vqvae.code_grid)  # (n, 8, 8)
        return self.vqvae.decode_indices(codes)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqvae.reconstruct(x)


def build(config: dict, info: DataInfo, stage: str = "vqvae") -> nn.Module:
    if stage == "prior":
        return make_prior(config["kind"], config["levels"])
    vqvae = VQVAE(VQVAEConfig(**{k: v for k, v in config.items() if k != "prior"}))
    if stage == "full":
        return VQVAEWithPrior(vqvae, make_prior(config["prior"]["kind"], config["prior"]["levels"]))
    return vqvae


@torch.no_grad()
def encode_all(model: VQVAE, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 images (N, C, 32, 32) -> code grids (N, 8, 8) on the CPU, in batches."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model.encode(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def run(data: Data, cfg: TrainConfig, out: Path, resume: bool = False,
        prior: str = "pixelcnn", prior_epochs: int = 15) -> dict:
    name = data.info.name
    mcfg = VQVAEConfig(channels=data.info.channels)
    model = VQVAE(mcfg)
    # Stage 1. A finished checkpoint makes the trainer load it and train no further.
    history = experiment.fit(model, "vqvae", asdict(mcfg), data.train, data.test, data.info, cfg, out,
                             resume=resume, stage="vqvae", labels=LABELS)
    model.eval()
    train_codes, test_codes = encode_all(model, data.train), encode_all(model, data.test)  # (N, 8, 8)

    # Stage 2: the prior learns the distribution of the training set's code grids.
    pcfg = {"kind": prior, "levels": mcfg.num_codes}
    prior_model = make_prior(prior, mcfg.num_codes)
    prior_history = experiment.fit(prior_model, "vqvae", pcfg, train_codes, test_codes, data.info,
                                   replace(cfg, epochs=prior_epochs), out, resume=resume, stage="prior",
                                   labels=PRIOR_LABELS, title=f"vqvae: {prior} prior over the codes of {name}")
    prior_model.eval()

    device = next(model.parameters()).device
    start = time.perf_counter()
    with torch.no_grad():
        codes = prior_model.sample(100, tuple(test_codes.shape[1:])).to(device)  # (100, 8, 8)
        samples = model.decode_indices(codes)  # (100, C, 32, 32)
    sample_seconds = time.perf_counter() - start
    save_image_grid(from_unit(samples), out / "samples.png", f"vqvae + {prior} prior on {name}: 100 samples")

    x = data.test[:50].to(device)
    save_reconstructions(x.float() / 255, from_unit(model.reconstruct(x)),
                         out / "reconstructions.png", f"vqvae on {name}: test images and reconstructions")
    save_code_maps(x[:20].float().cpu() / 255, test_codes[:20], mcfg.num_codes, out / "codes.png",
                   f"vqvae on {name}: test images and their 8x8 code maps")

    full = {**asdict(mcfg), "prior": pcfg}
    save_checkpoint(out / "checkpoint.pt", {
        "format": CHECKPOINT_FORMAT,
        "meta": {"model": "vqvae", "config": full, "data": asdict(data.info), "stage": "full"},
        "model": VQVAEWithPrior(model, prior_model).state_dict(),
    })

    usage = codebook_usage(test_codes, mcfg.num_codes)
    prior_nll = prior_history.test["loss"][-1]
    test = {k: history.test[k][-1] for k in ("loss", "recon_loss", "vq_loss")}
    test.update(usage, prior_nll=prior_nll)
    return {
        "test": test,
        "prior_test": {"nll": prior_nll},
        "config": full,
        "sample_seconds": round(sample_seconds, 3),
        "train_codebook": codebook_usage(train_codes, mcfg.num_codes),
    }


register(Entry(
    name="vqvae",
    summary="VQ-VAE with a PixelCNN or Gated PixelCNN prior over its 8x8 codes (course Q3, Q4a)",
    kinds=("image",),
    default_dataset="shapes",
    train=TrainConfig(epochs=20, batch_size=128, lr=1e-3, grad_clip=1.0),
    run=run,
    build=build,
    terms=TERMS,
    options=("prior", "prior_epochs"),
    shared_stages=("vqvae",),  # both priors model the codes of the same VQ-VAE
))
