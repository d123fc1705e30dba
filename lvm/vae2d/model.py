"""A VAE on 2-D points: the course's Q1 (Kingma & Welling, "Auto-Encoding Variational Bayes", 2013).

Encoder q(z|x) and decoder p(x|z) are MLPs giving diagonal Gaussians; the decoder's variance is
learned, so p(x|z) can model the data's spread on its own. Whether the latent gets used depends
on the data: for axis-aligned Gaussians (part b) the decoder's diagonal variance already fits, so
the KL collapses to ~0; for rotated ones (part a) the correlation can only come through z.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from lvm.engine.config import Range
from lvm.blocks.distributions import gaussian_kl, gaussian_log_prob, reparameterize, standard_normal_log_prob


@dataclass
class VAE2dConfig:
    latent_dim: Annotated[int, Range(1, 1024)] = 2  # the course's 2-D latent
    hidden: Annotated[tuple[int, ...], Range(1, 65536)] = (128, 128)  # widths of the encoder's and decoder's hidden layers
    data_dim: Annotated[int, Range(1, 65536)] = 2  # the points' dimension
    eval_samples: Annotated[int, Range(1, 10000)] = 16  # z draws per test point: the same -ELBO, with less estimator noise
    # Feed the networks (x - mean) / std of the training set (the likelihood stays that of raw x).
    # Off: at the course's budget it gained nothing measurable (figures/vae2d/ablation.json).
    standardise: bool = False


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class VAE2d(nn.Module):
    def __init__(self, cfg: VAE2dConfig):
        super().__init__()
        self.cfg = cfg
        hidden = list(cfg.hidden)
        self.encoder = mlp([cfg.data_dim, *hidden, 2 * cfg.latent_dim])
        self.decoder = mlp([cfg.latent_dim, *hidden, 2 * cfg.data_dim])
        # With `standardise`, the networks see standardised data; the likelihood is still of raw
        # x: log p(x) = log p(x_std) - sum log scale. Identity (0, 1) otherwise.
        self.register_buffer("shift", torch.zeros(cfg.data_dim))
        self.register_buffer("scale", torch.ones(cfg.data_dim))

    @torch.no_grad()
    def standardise_with(self, data: torch.Tensor) -> "VAE2d":
        """Set the input standardisation from training data (N, D); returns self."""
        self.shift.copy_(data.mean(0))
        self.scale.copy_(data.std(0, unbiased=False).clamp_min(1e-3))  # one point has no spread
        return self

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Points (B, D), as stored -> (mu, log_std) of q(z|x), each (B, L)."""
        mu, log_std = self.encoder((x - self.shift) / self.scale).chunk(2, dim=-1)  # (B, L), (B, L)
        return mu, log_std

    def likelihood(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Gaussian p(x|z) in raw units: mean and log standard deviation, each (B, D)."""
        mu, log_std = self.decoder(z).chunk(2, dim=-1)  # standardised units
        return mu * self.scale + self.shift, log_std + self.scale.log()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> the mean of p(x|z), (B, D) points in raw units; drawing is `sample`."""
        return self.likelihood(z)[0]

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """-ELBO = E_q[-log p(x|z)] + KL(q(z|x) || N(0, I)), averaged over the batch, in nats."""
        # the loss terms in float32 also when the network runs under bf16 autocast (`--amp on`);
        # .float() of a float32 tensor is the tensor itself, so the float32 path is unchanged
        mu_z, log_std_z = (t.float() for t in self.encode(x))  # (B, L) each
        draws = 1 if self.training else self.cfg.eval_samples
        z = reparameterize(mu_z.expand(draws, *mu_z.shape), log_std_z)  # (S, B, L)
        mu_x, log_std_x = (t.float() for t in self.likelihood(z))  # (S, B, D) each
        recon = -gaussian_log_prob(x, mu_x, log_std_x).sum(-1).mean()
        kl = gaussian_kl(mu_z, log_std_z).mean()
        return {"loss": recon + kl, "recon_loss": recon, "kl_loss": kl}

    def log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """log p(x, z_j) - log q(z_j|x) for k draws z_j ~ q(z|x) per point x (B, D): (k, B), in
        nats. Their log-mean-exp is the IWAE estimate of log p(x) (Burda et al. 2015), their mean
        the ELBO (`lvm.engine.evaluate`). p(x|z) is a density: the points are continuous."""
        mu_z, log_std_z = (t.float() for t in self.encode(x))  # (B, L) each; float32 under autocast too
        z = reparameterize(mu_z.expand(k, *mu_z.shape), log_std_z)  # (k, B, L)
        mu_x, log_std_x = (t.float() for t in self.likelihood(z))  # (k, B, D) each
        log_px_z = gaussian_log_prob(x, mu_x, log_std_x).sum(-1)  # (k, B)
        log_pz = standard_normal_log_prob(z).sum(-1)  # (k, B)
        log_qz = gaussian_log_prob(z, mu_z, log_std_z).sum(-1)  # (k, B)
        return log_px_z + log_pz - log_qz

    @torch.no_grad()
    def log_prob_by_quadrature(self, x: torch.Tensor, limit: float = 6.0, steps: int = 601) -> torch.Tensor:
        """log p(x) = log of the integral of p(x|z) p(z) over z, (B,) float64, by the midpoint rule
        on a steps x steps grid over [-limit, limit]^2: exact to the grid's resolution, and only
        possible because z has two dimensions (the reference `lvm eval`'s estimate is tested against)."""
        if self.cfg.latent_dim != 2:
            raise ValueError(f"quadrature needs a 2-D latent, this one has {self.cfg.latent_dim}")
        h = 2 * limit / steps
        t = torch.linspace(-limit + h / 2, limit - h / 2, steps, dtype=torch.float64)  # midpoints
        z = torch.cartesian_prod(t, t).to(self.shift.device)  # (G, 2)
        mu_x, log_std_x = self.likelihood(z.float())  # (G, D) each
        log_joint = (gaussian_log_prob(x[:, None].double(), mu_x.double(), log_std_x.double()).sum(-1)
                     + standard_normal_log_prob(z).sum(-1))  # (B, G)
        return torch.logsumexp(log_joint, 1) + 2 * math.log(h)

    @torch.no_grad()
    def sample(self, n: int, noise: bool = True) -> torch.Tensor:
        """n points from p(x) = E_z p(x|z); without noise, the decoder means alone."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.cfg.latent_dim, device=device)
        mu, log_std = self.likelihood(z)
        return mu + log_std.exp() * torch.randn_like(mu) if noise else mu
