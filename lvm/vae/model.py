"""The course's Q2a image VAE (Kingma & Welling, "Auto-Encoding Variational Bayes", 2013).

A convolutional encoder gives a diagonal Gaussian posterior q(z|x) over a 16-d latent; a
transposed-convolution decoder gives the mean of p(x|z). As in the course, the reconstruction
loss is the squared error summed over pixels on the [-1, 1] scale (a Gaussian decoder with its
constants dropped; strictly that is -log N(x; mean, 1/2), the course's convention, kept so our
numbers compare with its table), and the KL to the N(0, I) prior is in closed form, so
-ELBO = recon_loss + kl_loss in nats per image.

One change from the course's network: a BatchNorm (Ioffe & Szegedy 2015) before every hidden
conv's ReLU (`norm="batch"`, the default; `-o norm=none` is the course's network exactly). Without
it the VAE reconstructs `shapes` in grey (README, "Colour"; `benchmarks/vae_colour.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
from torch import nn

from lvm.engine.config import Range
from lvm.blocks.scaling import to_unit
from lvm.blocks.distributions import (discretised_gaussian_log_prob, gaussian_kl, gaussian_log_prob, reparameterize,
                                      standard_normal_log_prob)


@dataclass
class VAEConfig:
    """The course's architecture; the widths exist so tests can shrink it."""

    channels: Annotated[int, Range(1, 64)] = 3  # image channels C (3 for SVHN/CIFAR/shapes, 1 for Fashion-MNIST)
    latent_dim: Annotated[int, Range(1, 4096)] = 16  # the course's 16-d latent
    enc_widths: Annotated[tuple[int, int, int, int], Range(1, 4096)] = (32, 64, 128, 256)  # the four encoder convs
    dec_widths: Annotated[tuple[int, int, int, int], Range(1, 4096)] = (128, 128, 64, 32)  # decoder: linear, then three convT
    # BatchNorm before each hidden conv's ReLU; none is the course's network. A measured gain: on
    # shapes, 20,000 images x 4 epochs, background chroma error 11.2 against 17.5 (grey) and -ELBO
    # 190.0 against 213.5 (README, "Colour"; figures/colour/norm-batch-20000x4.json, course-20000x4.json)
    norm: Literal["batch", "none"] = "batch"

    # checkpoints written before `norm` existed hold the course's network
    LEGACY: ClassVar[dict[str, object]] = {"norm": "none"}


def conv_relu(conv: nn.Conv2d | nn.ConvTranspose2d, norm: str) -> list[nn.Module]:
    """conv, then BatchNorm over its channels when `norm` is "batch", then ReLU."""
    return [conv, *([nn.BatchNorm2d(conv.out_channels)] if norm == "batch" else []), nn.ReLU()]


class Encoder(nn.Module):
    """x (B, C, 32, 32) in [-1, 1] -> (mu, log_std) of q(z|x), each (B, L)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        w0, w1, w2, w3 = cfg.enc_widths
        self.net = nn.Sequential(
            *conv_relu(nn.Conv2d(cfg.channels, w0, 3, 1, 1), cfg.norm),  # (B, w0, 32, 32)
            *conv_relu(nn.Conv2d(w0, w1, 3, 2, 1), cfg.norm),  # (B, w1, 16, 16)
            *conv_relu(nn.Conv2d(w1, w2, 3, 2, 1), cfg.norm),  # (B, w2, 8, 8)
            *conv_relu(nn.Conv2d(w2, w3, 3, 2, 1), cfg.norm),  # (B, w3, 4, 4)
            nn.Flatten(),  # (B, w3 * 16)
            nn.Linear(4 * 4 * w3, 2 * cfg.latent_dim),  # (B, 2L)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, log_std = self.net(x).chunk(2, dim=1)  # (B, L), (B, L)
        return mu, log_std


class Decoder(nn.Module):
    """z (B, L) -> the mean of p(x|z), (B, C, 32, 32), unbounded (the loss pulls it to [-1, 1])."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        d0, d1, d2, d3 = cfg.dec_widths
        self.d0 = d0
        self.fc = nn.Sequential(nn.Linear(cfg.latent_dim, 4 * 4 * d0), nn.ReLU())
        self.net = nn.Sequential(
            *conv_relu(nn.ConvTranspose2d(d0, d1, 4, 2, 1), cfg.norm),  # (B, d1, 8, 8)
            *conv_relu(nn.ConvTranspose2d(d1, d2, 4, 2, 1), cfg.norm),  # (B, d2, 16, 16)
            *conv_relu(nn.ConvTranspose2d(d2, d3, 4, 2, 1), cfg.norm),  # (B, d3, 32, 32)
            nn.Conv2d(d3, cfg.channels, 3, 1, 1),  # (B, C, 32, 32)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z).view(-1, self.d0, 4, 4)  # (B, d0, 4, 4)
        return self.net(h)


# The course's reconstruction loss, ||x - mean||^2 summed on the [-1, 1] scale, is -log N(x; mean,
# 1/2) up to a constant: the decoder's Gaussian has standard deviation sqrt(1/2) in every pixel.
DECODER_LOG_STD = -0.5 * math.log(2.0)


class VAE(nn.Module):
    """Conv VAE with a N(0, I) prior. It takes uint8 images as stored and returns images as
    floats on the [-1, 1] scale (the model contract, `lvm.engine.spec`). With BatchNorm (the default), call `model.eval()` before `sample`,
    `reconstruct` and `interpolate`, so that each image uses the running statistics and not
    those of its batch (the trainer and `lvm` do)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images (B, C, 32, 32), as stored -> (mu, log_std) of q(z|x), each (B, L)."""
        return self.encoder(to_unit(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> the mean of p(x|z), (B, C, 32, 32) on the [-1, 1] scale, not clamped."""
        return self.decoder(z)

    def kl(self, mu: torch.Tensor, log_std: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """KL(q(z|x) || p(z)) per example, (B,): closed form against N(0, I). `z` (the
        reparameterised sample) is unused here; models with a learned prior estimate with it."""
        return gaussian_kl(mu, log_std)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """-ELBO = E_q ||x - dec(z)||^2 + KL(q(z|x) || p(z)), averaged over the batch, nats."""
        # the loss terms in float32 also when the network runs under bf16 autocast
        mu, log_std = (t.float() for t in self.encode(x))  # (B, L), (B, L)
        x = to_unit(x)  # (B, C, 32, 32) in [-1, 1]
        z = reparameterize(mu, log_std)  # (B, L)
        x_hat = self.decode(z).float()  # (B, C, 32, 32)
        recon = (x - x_hat).pow(2).flatten(1).sum(1).mean()
        kl = self.kl(mu, log_std, z).mean()
        return {"loss": recon + kl, "recon_loss": recon, "kl_loss": kl}

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) of latents (N, L), (N,): N(0, I) here; a learned prior overrides it."""
        return standard_normal_log_prob(z).sum(-1)

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """log p(x, z_j) - log q(z_j|x) for k draws z_j ~ q(z|x) per uint8 image x (B, C, H, W):
        (k, B), nats. The likelihood of 8-bit images: the decoder's Gaussian N(mean, 1/2) (what
        the squared-error loss assumes, `DECODER_LOG_STD`) integrated over each of the 256 bins
        of width 2/255 on the [-1, 1] scale, the end bins taking the tails
        (`discretised_gaussian_log_prob`); so log p(x|z) <= 0, a probability, not a density."""
        mu, log_std = (t.float() for t in self.encode(x))  # (B, L) each
        z = reparameterize(mu.expand(k, *mu.shape), log_std)  # (k, B, L)
        mean = self.decode(z.flatten(0, 1)).float()  # (k B, C, H, W)
        target = x.expand(k, *x.shape).flatten(0, 1)  # (k B, C, H, W)
        log_px_z = discretised_gaussian_log_prob(target, mean, DECODER_LOG_STD).flatten(1).sum(1)  # (k B,)
        log_pz = self.log_prior(z.flatten(0, 1))  # (k B,)
        log_qz = gaussian_log_prob(z, mu, log_std).sum(-1).flatten()  # (k B,)
        return (log_px_z + log_pz - log_qz).view(k, len(x))

    def prior_sample(self, n: int) -> torch.Tensor:
        """n latents from the prior, (n, L)."""
        return torch.randn(n, self.cfg.latent_dim, device=next(self.parameters()).device)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n images (n, C, 32, 32) in [-1, 1]: decoder means of z ~ p(z), as the course shows."""
        return self.decode(self.prior_sample(n)).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, 32, 32), as stored -> decoder mean at the posterior mean, in [-1, 1]."""
        mu, _ = self.encode(x)
        return self.decode(mu).clamp(-1, 1)

    @torch.no_grad()
    def interpolate(self, x1: torch.Tensor, x2: torch.Tensor, steps: int = 10) -> torch.Tensor:
        """Decode `steps` evenly spaced points on the line between the posterior means of x1 and
        x2 (uint8 images (B, C, 32, 32), as stored); returns (B, steps, C, 32, 32) in [-1, 1]."""
        mu1, _ = self.encode(x1)  # (B, L)
        mu2, _ = self.encode(x2)
        alpha = torch.linspace(0, 1, steps, device=mu1.device)[None, :, None]  # (1, S, 1)
        z = (1 - alpha) * mu1[:, None] + alpha * mu2[:, None]  # (B, S, L)
        x = self.decode(z.flatten(0, 1)).clamp(-1, 1)  # (B * S, C, 32, 32)
        return x.view(len(x1), steps, *x.shape[1:])
