"""Causal convolutions for autoregressive grid models.

- `MaskedConv2d`: the PixelCNN's masked convolution (van den Oord et al. 2016, "Pixel Recurrent
  Neural Networks"). In raster order, type "A" sees only the positions strictly before the
  centre (first layer: a position must not see itself); type "B" also sees the centre (later
  layers: the centre then holds features of strictly earlier inputs).
- `GatedLayer`: one layer of the Gated PixelCNN (van den Oord et al. 2016, "Conditional Image
  Generation with PixelCNN Decoders"): a vertical stack that sees the rows above and a
  horizontal stack that sees the current row to the left, gated `tanh(a) * sigmoid(b)`
  activations, a 1x1 link from the vertical to the horizontal stack, a residual connection on the
  horizontal stack. A plain masked 3x3 stack never sees the region up and to the right of its
  cone (the "blind spot"); splitting the receptive field into the two stacks removes it.

The vertical stack here is built with the "shift down" trick: its convolution covers the rows
above AND the current row (a (k//2 + 1) x k kernel, padded on top), so its output at row i
depends on inputs of rows <= i only, and it is fed to the horizontal stack shifted down by one
row, where row i then sees rows < i only: every pixel of every earlier row, to both sides.

Conditioning (the conditional PixelCNN of the same paper): `GatedLayer(v, h, cond)` adds a term
that does not depend on the pixels, (B, 2C, 1, 1) for a global vector or (B, 2C, H, W) for a
spatial map, to the pre-activations of both stacks, before the gate. It cannot break causality:
it carries nothing of x.

Sampling (`raster_fill`, `at_window`, the reaches): an autoregressive model draws one position
at a time in raster order, and the logits at (i, j) depend only on the positions its layers
reach, so each pass can run on that window alone instead of on the whole grid.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm


class MaskedConv2d(nn.Conv2d):
    """A square 'same' convolution whose kernel is masked to the raster-order past.

    mask_type "A": rows above the centre, and the centre row left of the centre.
    mask_type "B": the same plus the centre itself.
    """

    def __init__(self, mask_type: str, in_channels: int, out_channels: int, kernel_size: int):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.mask_type = mask_type
        c = kernel_size // 2
        mask = torch.zeros(kernel_size, kernel_size)
        mask[:c, :] = 1  # every row above the centre
        mask[c, : c + (mask_type == "B")] = 1  # the centre row: left of the centre (B: and it)
        self.register_buffer("mask", mask[None, None])  # (1, 1, k, k), saved with the model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # masking the weight on every call (not once at init) keeps the masked taps at zero
        # whatever the optimiser does to them
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def down_shift(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (zeros enter at the top): row i then holds row i - 1."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]  # (B, C, H, W)


def gate(x: torch.Tensor) -> torch.Tensor:
    """The gated activation tanh(a) * sigmoid(b) of the two channel halves."""
    a, b = x.chunk(2, dim=1)  # (B, C, H, W) each
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of both stacks: (v, h) -> (v', h').

    v' at row i depends on inputs of rows <= i (used by the next layer's horizontal stack only
    after `down_shift`); h' at (i, j) depends on inputs strictly before (i, j) in raster order
    (first=True: the input at (i, j) itself is excluded, like mask "A") or up to and including
    (i, j) of the previous layer's features (first=False, like mask "B").
    """

    def __init__(self, in_channels: int, channels: int, kernel_size: int, first: bool = False):
        super().__init__()
        if kernel_size % 2 != 1 or (first and kernel_size < 3):
            raise ValueError(f"kernel_size must be odd{' and at least 3 in the first layer' if first else ''}, "
                             f"got {kernel_size}")  # a first 1-wide layer's horizontal stack sees no column
        self.first = first
        self.k = kernel_size // 2
        # vertical: k+1 rows (k above + the current one) by 2k+1 columns
        self.v_conv = nn.Conv2d(in_channels, 2 * channels, (self.k + 1, 2 * self.k + 1))
        # horizontal: the k columns to the left, plus the current one unless this is the first layer
        self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, self.k + (not first)))
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)  # vertical -> horizontal
        self.h_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: torch.Tensor, h: torch.Tensor,
                cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`cond` (B, 2C, 1, 1) or (B, 2C, H, W), optional: a conditioning term added to both
        stacks' pre-activations before the gate (a conditional PixelCNN)."""
        v, above = self.vertical(v, cond)
        return v, self.horizontal(h, above, cond)

    def vertical(self, v: torch.Tensor,
                 cond: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The vertical stack: v -> (v', what it passes to the horizontal stack). Both at row i
        depend on rows <= i of v; the second on rows < i only (it is shifted down)."""
        k = self.k
        v_pre = self.v_conv(F.pad(v, (k, k, k, 0)))  # (B, 2C, H, W): rows i-k..i
        above = self.link(down_shift(v_pre))  # (B, 2C, H, W): rows < i only reach the horizontal stack
        if cond is not None:  # added after the link, so the horizontal stack gets it once
            v_pre = v_pre + cond
        return gate(v_pre), above  # (B, C, H, W), (B, 2C, H, W)

    def horizontal(self, h: torch.Tensor, above: torch.Tensor,
                   cond: torch.Tensor | None = None) -> torch.Tensor:
        """The horizontal stack, given `above` from `vertical`: h' at (i, j) depends on h at
        columns <= j of row i and on `above` (and `cond`) at (i, j) only, so it can run on a part
        of a row (columns 0..j, with `above` and a spatial `cond` cut to match) and give the
        same values there as on the whole grid."""
        k = self.k
        W = h.shape[-1]
        h_in = F.pad(h, (k, 0, 0, 0))  # (B, C_in, H, W + k): k zero columns on the left
        h_pre = self.h_conv(h_in)[..., :W] + above  # (B, 2C, H, W): columns j-k..j (first: j-k..j-1)
        if cond is not None:
            h_pre = h_pre + cond
        out = self.h_out(gate(h_pre))  # (B, C, H, W)
        # no residual on the first layer: its input at (i, j) is the token at (i, j) itself
        return out if self.first else h + out


# ----------------------------------------------------------------------------- sampling in raster order


def masked_reach(first_kernel: int, kernel: int, layers: int) -> int:
    """How far the output of a masked stack (one type-A conv, then `layers` blocks of one type-B
    conv each) looks: rows above and columns to either side. The first conv looks k // 2
    positions each way, every later one k // 2 more."""
    return first_kernel // 2 + layers * (kernel // 2)


def gated_reach(first_kernel: int, kernel: int, layers: int) -> int:
    """How far the output of `layers` gated layers looks, rows above and columns to either side:
    each layer widens one of the paths by its kernel's half width; the shift down adds a row."""
    return first_kernel // 2 + (layers - 1) * (kernel // 2) + 1


def at_window(f: Callable[..., torch.Tensor], x: torch.Tensor, i: int, j: int, reach: int,
              *maps: torch.Tensor) -> torch.Tensor:
    """The output at (i, j) of `f` (a causal map of grids (..., H, W), with spatial maps beside
    them) run on the window (i, j) sees: rows i-reach..i, columns j-reach..j+reach of `x` and of
    every map. Features near the window's edges come out wrong (zero padding where the grid has
    values), but (i, j) depends on none of them, so its output is exact (tested), at a fraction
    of the cost of the whole grid. Returns f's output at (i, j): (...) without the last two dims."""
    top, left = max(0, i - reach), max(0, j - reach)
    rows, cols = slice(top, i + 1), slice(left, j + reach + 1)
    out = f(x[..., rows, cols], *(m[..., rows, cols] for m in maps))  # (..., <= r+1, <= 2r+1)
    return out[..., i - top, j - left]


def raster_fill(x: torch.Tensor, row: Callable[[int], Callable[[int], torch.Tensor]]) -> torch.Tensor:
    """Fill the grid x (B, H, W) in place, position by position in raster order: for each row
    i, `row(i)` (which may cache what row i shares, all rows above being drawn) gives a function
    j -> the values (B,) of position (i, j), given every position before it. Returns x."""
    H, W = x.shape[-2:]
    for i in tqdm(range(H), desc="sampling", unit="row", leave=False, disable=None):  # shown on a terminal only
        at = row(i)
        for j in range(W):
            x[:, i, j] = at(j)  # (B,)
    return x
