"""MADE: Masked Autoencoder for Distribution Estimation (Germain, Gregor, Murray & Larochelle, 2015).

An MLP whose weight matrices are multiplied by fixed binary masks so that output i sees only
inputs 0..i-1 (natural ordering). One pass therefore gives the parameters of every conditional
p(x_i | x_<i) at once; the course's VLAE uses it for the shift and scale of an autoregressive flow.

Degrees (the natural-ordering construction of the paper): input d has degree d + 1 (1..D); hidden
unit k has degree 1 + (k mod (D - 1)), so every degree 1..D-1 appears; a hidden unit of degree m
may see inputs of degree <= m, and output i (degree i + 1) may see hidden units of degree <= i.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (a buffer: saved, moved
    with the module, never trained)."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))  # (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """For x of shape (B, D) returns (B, D, n_out): n_out numbers per dimension (e.g. a mean and a
    log-scale), where out[:, i] depends on x[:, :i] only (out[:, 0] is a learned constant)."""

    def __init__(self, dim: int, hidden: tuple[int, ...] = (512, 512), n_out: int = 2):
        super().__init__()
        if dim < 2:
            raise ValueError(f"MADE needs at least 2 dimensions, got {dim}")
        self.dim, self.n_out = dim, n_out
        in_deg = torch.arange(1, dim + 1)  # (D,)
        degrees = [in_deg] + [1 + torch.arange(h) % (dim - 1) for h in hidden]
        layers: list[nn.Module] = []
        for prev, cur in zip(degrees[:-1], degrees[1:]):
            mask = cur[:, None] >= prev[None, :]  # (H_out, H_in): see degrees up to your own
            layers += [MaskedLinear(len(prev), len(cur), mask), nn.ReLU()]
        # outputs are laid out (n_out, D) so output unit j * D + i belongs to dimension i
        out_deg = in_deg.repeat(n_out)  # (n_out * D,)
        mask = out_deg[:, None] > degrees[-1][None, :]  # strictly: output i never sees x_i
        layers.append(MaskedLinear(len(degrees[-1]), n_out * dim, mask))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)  # (B, n_out * D)
        return out.view(-1, self.n_out, self.dim).transpose(1, 2)  # (B, D, n_out)
