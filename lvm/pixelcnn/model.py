"""Autoregressive models of an H x W grid of integer tokens: the PixelCNN (van den Oord et al.
2016, "Pixel Recurrent Neural Networks") and the Gated PixelCNN (van den Oord et al. 2016,
"Conditional Image Generation with PixelCNN Decoders").

Both model p(x) = prod_i p(x_i | x_<i) in raster order with a categorical distribution over
`levels` values at every position. They serve as priors over VQ-VAE code grids (course Q3 and
Q4a) and as image models of binarised images (levels = 2).

The contract every grid model here keeps:
    model.logits(x)          x (B, H, W) (or (B, 1, H, W)) integer tokens -> (B, levels, H, W)
    model.loss(x)            {"loss": mean negative log-likelihood per position, nats}
    model.sample(n)          (n, H, W) int64 tokens of the configured grid shape, on the model's device
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lvm.blocks.distributions import sample_categorical
from lvm.blocks.masked import GatedLayer, MaskedConv2d, at_window, gated_reach, masked_reach, raster_fill
from lvm.engine.config import Range, Rule


@dataclass
class PixelCNNConfig:
    """Both models' hyperparameters; the defaults are the course's (the Q3 prior's widths)."""

    levels: Annotated[int, Range(2, 65536)] = 2  # values a token takes: 2 for binarised images, the codebook size for a VQ-VAE prior
    shape: Annotated[tuple[int, int], Range(1, 1024)] = (32, 32)  # the grid's height and width, for sampling (VQ-VAE codes: 8 x 8)
    gated: bool = False  # the Gated PixelCNN (course Q4a) instead of the plain one (Q3)
    embed_dim: Annotated[int, Range(1, 4096)] = 64  # token embedding size (the course's 64; its solution used 128)
    channels: Annotated[int, Range(1, 4096)] = 128  # width of the residual stack, or of both gated stacks
    # residual blocks of the plain model (the course: 10 for SVHN, 15 for CIFAR-10) or gated layers
    # (the course: 15); none = the course's
    layers: Annotated[int | None, Range(1, 256)] = None
    first_kernel: Annotated[int, Range(1, 31, odd=True)] = 7  # the first, type-A masked convolution
    kernel: Annotated[int, Range(1, 31, odd=True)] = 3  # the masked convolution of every later block or layer
    head_channels: Annotated[int, Range(1, 8192)] = 512  # the 1x1 output head's hidden width

    RULES: ClassVar = (Rule(lambda c: not c.gated or c.first_kernel >= 3,
                            "a gated model's first_kernel must be at least 3 (a 1-wide first layer sees no column)"),)

    @property
    def depth(self) -> int:
        return self.layers or (15 if self.gated else 10)


class GridModel(nn.Module):
    """What both models share: tokens in through an embedding, cross-entropy out, sampling.

    A subclass calls `super().__init__(cfg, reach)` (which makes the embedding) and implements
    `stack(e)`: embedded grid (B, E, H, W) ->
    logits (B, levels, H, W), where the logits at a position depend only on the embeddings of
    the positions before it in raster order (the tests check this through `stack`).
    """

    cfg: PixelCNNConfig
    levels: int
    embed: nn.Embedding
    # how far the logits at one position look: rows above and columns to either side
    reach: int

    def __init__(self, cfg: PixelCNNConfig, reach: int):
        super().__init__()
        self.cfg, self.levels, self.reach = cfg, cfg.levels, reach
        self.embed = nn.Embedding(cfg.levels, cfg.embed_dim)

    def stack(self, e: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, 1, H, W) images as stored: one channel of tokens
            x = x.squeeze(1)
        e = self.embed(x.long()).permute(0, 3, 1, 2)  # (B, E, H, W)
        return self.stack(e)  # (B, levels, H, W)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Negative log-likelihood, averaged over the batch and the positions, in nats."""
        if x.dim() == 4:
            x = x.squeeze(1)
        return {"loss": F.cross_entropy(self.logits(x).float(), x.long())}  # float32 under autocast too

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log p(x) = sum_i log p(x_i | x_<i) of each grid (B, H, W) or (B, 1, H, W):
        (B,), nats. Every position is a categorical over the levels, so this is the likelihood
        of the discrete data itself."""
        if x.dim() == 4:
            x = x.squeeze(1)
        return -F.cross_entropy(self.logits(x).float(), x.long(), reduction="none").flatten(1).sum(1)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int] | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n grids (of the configured shape, unless given) drawn position by position in raster
        order, each position's logits batched over all n samples; `temperature` divides the
        logits (0: argmax)."""
        H, W = shape or self.cfg.shape
        was_training = self.training
        self.eval()
        x = torch.zeros(n, H, W, dtype=torch.long, device=self.embed.weight.device)

        def row(i: int) -> Callable[[int], torch.Tensor]:
            logits_at = self.row_logits(x, i)
            return lambda j: sample_categorical(logits_at(j), temperature)  # (n,)

        raster_fill(x, row)
        self.train(was_training)
        return x  # (n, H, W)

    def row_logits(self, x: torch.Tensor, i: int) -> Callable[[int], torch.Tensor]:
        """For sampling row i of x (n, H, W), whose rows < i and columns < j of row i are drawn:
        a function j -> the logits (n, levels) at (i, j). Here, one pass per position on the
        window the logits at (i, j) can see (`at_window`): rows i-r..i, columns j-r..j+r."""
        return lambda j: at_window(self.logits, x, i, j, self.reach)  # (n, levels)


class ResidualBlock(nn.Module):
    """relu, 1x1 down to half width, relu, masked 3x3 (B), relu, 1x1 up, add."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, half, 1),
            nn.ReLU(), MaskedConv2d("B", half, half, kernel),
            nn.ReLU(), nn.Conv2d(half, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)  # (B, C, H, W)


class PixelCNN(GridModel):
    def __init__(self, cfg: PixelCNNConfig):
        super().__init__(cfg, masked_reach(cfg.first_kernel, cfg.kernel, cfg.depth))
        self.net = nn.Sequential(
            MaskedConv2d("A", cfg.embed_dim, cfg.channels, cfg.first_kernel),
            *[ResidualBlock(cfg.channels, cfg.kernel) for _ in range(cfg.depth)],
            # 1x1 convolutions mix channels at one position only: causality is kept
            nn.ReLU(), nn.Conv2d(cfg.channels, cfg.head_channels, 1),
            nn.ReLU(), nn.Conv2d(cfg.head_channels, cfg.levels, 1),
        )

    def stack(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)  # (B, levels, H, W)


class GatedPixelCNN(GridModel):
    def __init__(self, cfg: PixelCNNConfig):
        super().__init__(cfg, gated_reach(cfg.first_kernel, cfg.kernel, cfg.depth))
        self.layers = nn.ModuleList(
            [GatedLayer(cfg.embed_dim, cfg.channels, cfg.first_kernel, first=True)]
            + [GatedLayer(cfg.channels, cfg.channels, cfg.kernel) for _ in range(cfg.depth - 1)]
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(cfg.channels, cfg.head_channels, 1),
            nn.ReLU(), nn.Conv2d(cfg.head_channels, cfg.levels, 1),
        )

    def stack(self, e: torch.Tensor) -> torch.Tensor:
        v, h = e, e  # both stacks start from the embedded grid
        for layer in self.layers:
            v, h = layer(v, h)  # (B, C, H, W) each
        return self.head(h)  # (B, levels, H, W): only the horizontal stack is read out

    def row_logits(self, x: torch.Tensor, i: int) -> Callable[[int], torch.Tensor]:
        """Sampling with the vertical stack cached per row. What the vertical stack passes down
        to row i depends on rows i-r..i-1 only, all drawn by then: it is computed once per
        row, on those rows. Each position (i, j) then runs only the horizontal stack, on
        columns 0..j of row i, which is all it depends on: the same logits as a pass over the
        whole grid (tested)."""
        top = max(0, i - self.reach)
        v = self.embed(x[:, top : i + 1]).permute(0, 3, 1, 2)  # (n, E, i+1-top, W): row i not drawn, unseen
        above = []
        for layer in self.layers:
            v, a = layer.vertical(v)  # (n, C, i+1-top, W), (n, 2C, i+1-top, W)
            above.append(a[:, :, -1:])  # (n, 2C, 1, W): row i's input from the rows above

        def at(j: int) -> torch.Tensor:
            h = self.embed(x[:, i : i + 1, : j + 1]).permute(0, 3, 1, 2)  # (n, E, 1, j+1)
            for layer, a in zip(self.layers, above):
                h = layer.horizontal(h, a[..., : j + 1])  # (n, C, 1, j+1)
            return self.head(h[..., j:])[:, :, 0, 0]  # (n, levels): the head is 1x1, one column
        return at


def build(cfg: PixelCNNConfig) -> GridModel:
    """The model `cfg` describes: the Gated PixelCNN if `cfg.gated`, else the plain one."""
    return GatedPixelCNN(cfg) if cfg.gated else PixelCNN(cfg)
