"""The course's Q2b VLAE: a VAE whose prior is an autoregressive flow (Chen et al., "Variational
Lossy Autoencoder", 2017; the flow is MADE-based, Germain et al. 2015 / Papamakarios et al. 2017).

The encoder and decoder are the VAE's (`lvm.vae.model`). Only the prior changes: a MADE reads z
and gives, for each dimension i, a shift mu_i(z_<i) and a log-scale s_i(z_<i), and

    eps_i = z_i * sigma_i + mu_i,   sigma_i = exp(s_i),   log p(z) = log N(eps; 0, I) + sum_i s_i

(the Jacobian d eps / d z is triangular with diagonal sigma). A learned prior can put its mass
where the aggregate posterior is, so the KL term (estimated by Monte Carlo with the
reparameterised sample, as it has no closed form now) can shrink without hurting reconstruction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from torch import nn

from lvm.blocks.distributions import gaussian_log_prob, standard_normal_log_prob
from lvm.blocks.made import MADE
from lvm.engine.config import Range
from lvm.vae.model import VAE, VAEConfig


@dataclass
class VLAEConfig(VAEConfig):
    made_hidden: Annotated[tuple[int, ...], Range(1, 8192)] = (512, 512)  # the course's MADE: two hidden layers of 512
    # log sigma = b * tanh(s / b): smooth, equal to s near 0, and bounded in [-b, b], so one
    # large MADE output can neither blow the flow up nor make its inverse divide by ~0
    max_log_scale: Annotated[float, Range(0, 20, lo_open=True)] = 3.0


class AutoregressiveFlowPrior(nn.Module):
    """p(z) through the affine autoregressive flow eps = z * sigma(z_<i) + mu(z_<i)."""

    def __init__(self, dim: int, hidden: tuple[int, ...], max_log_scale: float):
        super().__init__()
        self.dim, self.max_log_scale = dim, max_log_scale
        self.made = MADE(dim, hidden, n_out=2)

    def shift_and_log_scale(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, s = self.made(z).to(z.dtype).unbind(-1)  # (B, D), (B, D); z_<i only; float32 under autocast
        b = self.max_log_scale
        return mu, b * torch.tanh(s / b)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D) -> eps (B, D) and log|det d eps / d z| (B,), in one pass."""
        mu, log_sigma = self.shift_and_log_scale(z)
        return z * log_sigma.exp() + mu, log_sigma.sum(-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z), (B,)."""
        eps, log_det = self(z)
        return standard_normal_log_prob(eps).sum(-1) + log_det

    def inverse(self, eps: torch.Tensor) -> torch.Tensor:
        """eps (B, D) -> z (B, D). z_i needs z_<i, so this takes D passes of the MADE (each
        batched over all B); after pass i, z_0..z_i are final."""
        z = torch.zeros_like(eps)
        for i in range(self.dim):
            mu, log_sigma = self.shift_and_log_scale(z)  # column i depends on z_<i: already final
            z[:, i] = (eps[:, i] - mu[:, i]) * torch.exp(-log_sigma[:, i])
        return z

    def sample(self, n: int) -> torch.Tensor:
        eps = torch.randn(n, self.dim, device=next(self.parameters()).device)  # (n, D)
        return self.inverse(eps)


class VLAE(VAE):
    """The VAE with `AutoregressiveFlowPrior` in place of N(0, I)."""

    def __init__(self, cfg: VLAEConfig):
        super().__init__(cfg)
        self.prior = AutoregressiveFlowPrior(cfg.latent_dim, cfg.made_hidden, cfg.max_log_scale)

    def kl(self, mu: torch.Tensor, log_std: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """E_q[log q(z|x) - log p(z)] per example, (B,): one-sample Monte-Carlo estimate with the
        reparameterised z, so gradients reach the encoder and the prior."""
        log_q = gaussian_log_prob(z, mu, log_std).sum(-1)  # (B,)
        return log_q - self.prior.log_prob(z)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        return self.prior.log_prob(z)

    @torch.no_grad()
    def prior_sample(self, n: int) -> torch.Tensor:
        return self.prior.sample(n)
