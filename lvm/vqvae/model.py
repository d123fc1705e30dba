"""The VQ-VAE of the course's Q3 and Q4a (van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete
Representation Learning", 2017), its whole story in one file: the model, its two training stages,
and how it generates.

The model. A convolutional encoder maps a 32x32 image to an 8x8 map of D-dimensional vectors;
each vector is replaced by its nearest code of a K-entry codebook (`quantizer.py`); a
mirror-image decoder maps the codes back to an image. Every image is then 64 integers.

Stage 1, the VQ-VAE (`VQVAE.loss`), on images scaled to [-1, 1]:

    per-pixel MSE(x, decoder(quantised)) + ||sg(z) - e||^2 + beta ||z - sg(e)||^2

Stage 2, the prior. The VQ-VAE itself has no prior over its codes: a second network learns
p(c) = prod_i p(c_i | c_<i) over the 8x8 grids of code indices, in raster order, trained on the
codes of the training set (`encode_all`) with the first stage frozen. Three priors
(`make_prior`, `-o prior=...`):
- "pixelcnn": the PixelCNN, course Q3 (`lvm.pixelcnn.model.PixelCNN`, masked convolutions);
- "gated": the Gated PixelCNN, course Q4a (`lvm.pixelcnn.model.GatedPixelCNN`, no blind spot);
- "transformer": a decoder-only transformer, as VQGAN uses (`lvm.vqvae.transformer`).
Both stages are trained by the one trainer (`lvm.engine.train.fit`); `lvm/vqvae/__init__.py`
declares them (its `MODEL`: stage "vqvae", then stage "prior", whose data `codes_of` makes from
the trained VQ-VAE), and `lvm run vqvae` trains one after the other.

Generation (`VQVAEWithPrior.sample`): draw a code grid from the prior, one code at a time in
raster order, each from p(c_i | c_<i) given the codes drawn before it (the PixelCNNs rerun on the
window a position sees, `GridModel.sample` with `lvm.blocks.masked.raster_fill`; the transformer
feeds one token at a time through its key/value cache, `TransformerPrior.sample`); then decode
the whole grid in one pass of the decoder (`VQVAE.decode`).

Likelihood (`VQVAEWithPrior.log_prob`): the paper's bound, log p(c(x)) + log P(x | c(x)).

The model contract (`lvm.engine.spec`): `encode` takes uint8 images as stored and gives code
indices; `decode` takes code indices and gives images on the [-1, 1] scale, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lvm.engine.config import Range
from lvm.blocks.distributions import discretised_gaussian_log_prob
from lvm.blocks.scaling import to_unit
from lvm.pixelcnn.model import PixelCNNConfig, build
from lvm.vae.model import DECODER_LOG_STD
from lvm.vqvae.quantizer import RESTART_WINDOW, VectorQuantizer
from lvm.vqvae.transformer import TransformerPrior, TransformerPriorConfig


@dataclass
class VQVAEConfig:
    """Defaults are the course's except how the codebook is kept alive (see the comment)."""

    num_codes: Annotated[int, Range(2, 65536)] = 128  # K, the codebook's size
    code_dim: Annotated[int, Range(1, 4096)] = 256  # D, the width of a code; also the width of every layer (the course's)
    beta: Annotated[float, Range(0, 1000)] = 1.0  # weight of the commitment term
    # The course's quantizer (ema_decay none, restart_dead false) leaves most codes dead. EMA
    # updates learn the codebook far faster and restarts revive dead codes, so the default uses
    # both; the comparison at equal budget is figures/vqvae/quantizers.json
    # (benchmarks/vqvae_quantizers.py).
    ema_decay: Annotated[float | None, Range(0, 1, hi_open=True)] = 0.99  # codes move to a moving average of their vectors; none = learnt by gradient
    restart_dead: bool = True  # move a code no vector picked for a while onto a recent encoder output
    restart_window: Annotated[int, Range(1, 10**6)] = RESTART_WINDOW  # training steps without a single assignment before a restart
    channels: Annotated[int, Range(1, 64)] = 3  # image channels C (1 for Fashion-MNIST, 3 for colour)
    width: Annotated[int | None, Range(1, 4096)] = None  # layer width; none = code_dim. Tests shrink it to run fast
    # How the decoder doubles the resolution twice: the course's 4x4 stride-2 transposed convolutions, or a
    # nearest-neighbour resize then a 3x3 convolution, whose output has no stride-2 pattern by construction
    # (Odena, Dumoulin and Olah 2016; benchmarks/vqvae_texture.py measures the texture)
    upsample: Literal["transposed", "resize"] = "transposed"
    # The second stage: a prior over the 8x8 grids of code indices, trained on the training set's codes
    prior: Literal["pixelcnn", "gated", "transformer"] = "pixelcnn"  # PixelCNN (course Q3), Gated PixelCNN (Q4a) or a transformer
    prior_epochs: Annotated[int, Range(1, 100_000)] = 15  # epochs of the prior stage (the course's)
    # The prior stage's learning-rate schedule: constant (the course's), or cosine decay to 0 over
    # its epochs after `prior_warmup` steps of linear warm-up (docs/results.md, "Three priors")
    prior_lr_schedule: Literal["constant", "cosine"] = "constant"
    prior_warmup: Annotated[int, Range(0, 10**7)] = 0  # steps of linear warm-up of the prior's learning rate


class ResBlock(nn.Module):
    """The course's residual block: x + [BN relu conv3x3 BN relu conv1x1]."""

    def __init__(self, d: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(d), nn.ReLU(), nn.Conv2d(d, d, 3, 1, 1),
            nn.BatchNorm2d(d), nn.ReLU(), nn.Conv2d(d, d, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


def upsample(kind: str, c_in: int, c_out: int) -> nn.Module:
    """Twice the resolution: a 4x4 stride-2 transposed convolution (each output pixel sees 2x2
    inputs through one of four kernel phases, which can print a stride-2 pattern), or a
    nearest-neighbour resize and a 3x3 convolution (one kernel for every output pixel)."""
    if kind == "transposed":
        return nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, 1, 1))


class VQVAE(nn.Module):
    code_grid = (8, 8)  # two stride-2 convolutions: 32x32 images -> 8x8 codes

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        C, D, d = cfg.channels, cfg.code_dim, cfg.width or cfg.code_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(C, d, 4, 2, 1), nn.BatchNorm2d(d), nn.ReLU(),  # 32 -> 16
            nn.Conv2d(d, D, 4, 2, 1),  # 16 -> 8
            ResBlock(D), ResBlock(D),
        )
        self.vq = VectorQuantizer(cfg.num_codes, D, cfg.beta, cfg.ema_decay,
                                  cfg.restart_dead, cfg.restart_window)
        self.decoder = nn.Sequential(
            ResBlock(D), ResBlock(D),
            nn.BatchNorm2d(D), nn.ReLU(), upsample(cfg.upsample, D, d),  # 8 -> 16
            nn.BatchNorm2d(d), nn.ReLU(), upsample(cfg.upsample, d, C),  # 16 -> 32
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 images -> (reconstruction on [-1, 1] scale, code indices, vq loss)."""
        z = self.encoder(to_unit(x))  # (B, D, 8, 8)
        quantized, indices, vq_loss = self.vq(z)  # (B, D, 8, 8), (B, 8, 8), ()
        return self.decoder(quantized), indices, vq_loss  # (B, C, 32, 32)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The course's VQ-VAE loss: per-pixel MSE on [-1, 1] + codebook + commitment terms."""
        x_hat, _, vq_loss = self(x)
        recon = F.mse_loss(x_hat.float(), to_unit(x))  # float32 also under bf16 autocast
        return {"loss": recon + vq_loss, "recon_loss": recon, "vq_loss": vq_loss}

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, 32, 32) -> code indices (B, 8, 8), int64."""
        z = self.encoder(to_unit(x))  # (B, D, 8, 8)
        B, D, H, W = z.shape
        return self.vq.nearest(z.permute(0, 2, 3, 1).reshape(-1, D)).view(B, H, W)

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, 8, 8) -> images (B, C, 32, 32) clamped to [-1, 1], in one pass."""
        return self.decoder(self.vq.lookup(indices)).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images -> their reconstructions through the codebook, in [-1, 1]."""
        return self.decode(self.encode(x))


# the course's Q3 and Q4a priors, and a transformer; each with its name in the course's "Final" line
PRIORS = {"pixelcnn": "PixelCNN", "gated": "Gated PixelCNN", "transformer": "Transformer"}


def make_prior(kind: str, levels: int, **overrides) -> nn.Module:
    """A prior over 8x8 grids of `levels` code indices, at its default widths unless overridden:
    "pixelcnn" (the course's Q3), "gated" (Q4a) or "transformer" (`lvm.vqvae.transformer`)."""
    if kind not in PRIORS:
        raise ValueError(f"unknown prior {kind!r}; choose one of: {', '.join(PRIORS)}")
    if kind == "transformer":
        return TransformerPrior(TransformerPriorConfig(levels=levels, shape=VQVAE.code_grid, **overrides))
    return build(PixelCNNConfig(levels=levels, shape=VQVAE.code_grid, gated=kind == "gated", **overrides))


@torch.no_grad()
def encode_all(model: VQVAE, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 images (N, C, 32, 32) -> code grids (N, 8, 8) on the CPU, in batches."""
    model.eval()
    device = next(model.parameters()).device
    starts = tqdm(range(0, len(x), batch_size), desc="encoding", unit="batch", leave=False, disable=None)  # shown on a terminal only
    return torch.cat([model.encode(x[i : i + batch_size].to(device)).cpu() for i in starts])


class VQVAEWithPrior(nn.Module):
    """Both stages together: what a trained VQ-VAE is to a user (encode, decode, sample,
    reconstruct, log_prob)."""

    def __init__(self, vqvae: VQVAE, prior: nn.Module):
        super().__init__()
        self.vqvae, self.prior = vqvae, prior

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, 32, 32) -> code indices (B, 8, 8)."""
        return self.vqvae.encode(x)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Code indices (B, 8, 8) -> images (B, C, 32, 32) in [-1, 1]."""
        return self.vqvae.decode(codes)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """n images (n, C, 32, 32) in [-1, 1], in two steps: n code grids drawn from the prior,
        code by code in raster order (its logits divided by `temperature`; 0 = argmax), then
        each grid decoded in one pass."""
        codes = self.prior.sample(n, temperature=temperature)  # (n, 8, 8): the autoregressive loop
        return self.decode(codes.to(next(self.vqvae.parameters()).device))  # (n, C, 32, 32)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.vqvae.reconstruct(x)

    @torch.no_grad()
    def log_prob_parts(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The two terms of `log_prob`, each (B,): `recon` = log P(x | c(x)) and `prior` =
        log p(c(x))."""
        codes = self.vqvae.encode(x)  # (B, 8, 8)
        mean = self.vqvae.decoder(self.vqvae.vq.lookup(codes)).float()  # (B, C, 32, 32), unclamped
        recon = discretised_gaussian_log_prob(x, mean, DECODER_LOG_STD).flatten(1).sum(1)  # (B,)
        return {"recon": recon, "prior": self.prior.log_prob(codes).double()}

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """A lower bound on log p(x) of uint8 images x (B, C, 32, 32), (B,), nats: the VQ-VAE
        paper's, with q(c|x) the one-hot posterior on the encoder's codes c(x):

            log p(x) = log sum_c p(c) P(x|c) >= log p(c(x)) + log P(x | c(x)).

        P(x|c) is the decoder's output as the mean of a Gaussian with standard deviation
        sqrt(1/2) on the [-1, 1] scale (the Gaussian VAE's, `lvm.vae.model.DECODER_LOG_STD`; the
        VQ-VAE's MSE loss fixes no scale of its own), integrated over each 8-bit value's bin.
        p(c) is the prior's exact likelihood of the code grid."""
        parts = self.log_prob_parts(x)
        return parts["recon"] + parts["prior"]
