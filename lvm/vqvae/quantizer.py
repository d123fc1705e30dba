"""Vector quantisation: the bottleneck of the VQ-VAE (van den Oord, Vinyals & Kavukcuoglu,
"Neural Discrete Representation Learning", 2017).

Every D-dimensional vector of the encoder's output map is replaced by its nearest code in a
learned codebook of K codes. The contract is small and fixed:

    quantized, indices, loss = vq(z)      # z (B, D, H, W) -> (B, D, H, W), (B, H, W), scalar
    vq.lookup(indices)                    # (B, H, W) -> (B, D, H, W): what a prior's samples decode from

Three ways to keep the codebook alive, all optional (`VectorQuantizer`'s arguments):
- the paper's codebook loss ||sg(z) - e||^2, learned by gradient (the default, the course's);
- EMA updates (the paper's appendix): each code moves to an exponential moving average of the
  encoder vectors assigned to it, no gradient and no codebook loss;
- dead-code restarts: a code no vector picked for `restart_window` training steps jumps to a
  random encoder output of the current batch, so it is near data and gets picked again.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

RESTART_WINDOW = 10  # training steps a code may go unpicked before a restart moves it



def codebook_usage(indices: torch.Tensor, num_codes: int) -> dict[str, float]:
    """How much of the codebook a set of code indices uses.

    perplexity = exp(entropy of the empirical code distribution): K when all codes are used
    equally often, 1 when one code takes everything. codes_used = how many codes occur at all.
    """
    counts = torch.bincount(indices.flatten().cpu(), minlength=num_codes).double()  # (K,)
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    return {"perplexity": math.exp(entropy), "codes_used": int((counts > 0).sum())}


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        num_codes: int = 128,
        code_dim: int = 256,
        beta: float = 1.0,
        ema_decay: float | None = None,
        restart_dead: bool = False,
        restart_window: int = RESTART_WINDOW,
    ):
        """num_codes K and code_dim D: the codebook's size (the course's 128 x 256).
        beta: weight of the commitment term ||z - sg(e)||^2 that keeps the encoder near its codes.
        ema_decay: None = learn the codebook by gradient on the codebook term; a float (e.g. 0.99)
            = update codes as moving averages of their assigned vectors instead.
        restart_dead, restart_window: reset codes unused for that many training steps."""
        super().__init__()
        self.num_codes, self.code_dim, self.beta = num_codes, code_dim, beta
        self.ema_decay, self.restart_dead, self.restart_window = ema_decay, restart_dead, restart_window
        # The course's initialisation: uniform in [-1/K, 1/K]. With EMA the codebook is a buffer
        # in all but name: it gets no gradient, so the optimiser never touches it.
        codebook = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        self.codebook = nn.Parameter(codebook, requires_grad=ema_decay is None)  # (K, D)
        # EMA statistics start as if each code had been assigned once, to itself: the first
        # update is then a proper weighted mean instead of a bias towards zero.
        self.register_buffer("ema_count", torch.ones(num_codes))  # (K,)
        self.register_buffer("ema_sum", codebook.clone())  # (K, D)
        self.register_buffer("steps_unused", torch.zeros(num_codes, dtype=torch.long))  # (K,)

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of each row of flat (N, D), by squared distance
        ||z||^2 - 2 z.e + ||e||^2: one matrix product instead of an (N, K, D) difference tensor.
        In float32 even under bf16 autocast: the three terms nearly cancel, and in bf16 the
        argmin is mostly rounding noise (tests/test_bf16.py measures it)."""
        with torch.autocast(flat.device.type, enabled=False):
            flat, e = flat.float(), self.codebook.float()  # (N, D), (K, D)
            dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ e.t() + e.pow(2).sum(1)  # (N, K)
        return dist.argmin(1)  # (N,)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors of an index map: (B, H, W) -> (B, D, H, W)."""
        return F.embedding(indices, self.codebook).permute(0, 3, 1, 2).contiguous()  # (B, D, H, W)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = z.float()  # (B, D, H, W); the bottleneck works in float32 even under bf16 autocast
        B, D, H, W = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, D)  # (B*H*W, D)
        indices = self.nearest(flat.detach())  # (B*H*W,)
        if self.training:
            self._update_codebook(flat.detach(), indices)
        quantized = self.lookup(indices.view(B, H, W))  # (B, D, H, W)

        # Commitment pulls the encoder towards its codes; the codebook term pulls codes towards
        # the encoder. With EMA updates on, the codebook is a buffer: the term then carries no
        # gradient and is kept only so that the loss is the same number as the course's.
        loss = self.beta * F.mse_loss(z, quantized.detach()) + F.mse_loss(quantized, z.detach())
        # Straight-through: the forward value is the code, the backward pass copies the
        # decoder's gradient to the encoder's output unchanged (argmin has no gradient).
        quantized = z + (quantized - z).detach()  # (B, D, H, W)
        return quantized, indices.view(B, H, W), loss

    @torch.no_grad()
    def _update_codebook(self, flat: torch.Tensor, indices: torch.Tensor) -> None:
        """Training-mode side effects: EMA updates and dead-code restarts. `flat` is float32
        (forward's z); autocast is off so that the sums stay float32 too."""
        with torch.autocast(flat.device.type, enabled=False):
            onehot = F.one_hot(indices, self.num_codes).type_as(flat)  # (N, K)
            counts = onehot.sum(0)  # (K,)
            if self.ema_decay is not None:
                d = self.ema_decay
                self.ema_count.mul_(d).add_(counts, alpha=1 - d)
                self.ema_sum.mul_(d).add_(onehot.t() @ flat, alpha=1 - d)  # (K, D)
                alive = self.ema_count > 1e-8  # a code never assigned keeps its place
                means = self.ema_sum / self.ema_count.clamp_min(1e-8)[:, None]  # (K, D)
                self.codebook.data.copy_(torch.where(alive[:, None], means, self.codebook.data))
            if self.restart_dead:
                self.steps_unused.add_(1).masked_fill_(counts > 0, 0)
                # Every code draws a candidate and only the dead ones take it: selecting the dead
                # codes by index (`nonzero`) would make the host wait for the GPU at every step.
                dead = self.steps_unused >= self.restart_window  # (K,)
                pick = flat[torch.randint(len(flat), (self.num_codes,), device=flat.device)]  # (K, D)
                self.codebook.data.copy_(torch.where(dead[:, None], pick, self.codebook.data))
                self.ema_sum.copy_(torch.where(dead[:, None], pick, self.ema_sum))
                self.ema_count.masked_fill_(dead, 1.0)
                self.steps_unused.masked_fill_(dead, 0)
