"""A transformer prior over VQ-VAE code grids: a decoder-only transformer (Radford et al. 2018,
"Improving Language Understanding by Generative Pre-Training"; the attention of Vaswani et al.
2017, "Attention Is All You Need") over the H x W codes read in raster order, the prior that
VQGAN (Esser et al. 2021, "Taming Transformers for High-Resolution Image Synthesis") puts where
the course puts a PixelCNN.

It models the same p(x) = prod_i p(x_i | x_<i) as the PixelCNNs of `lvm.pixelcnn`, with the
same contract (`logits`, `loss`, `sample`), but every position sees every earlier position
through causal self-attention instead of through a stack of masked convolutions. The input is
the grid shifted right by one, behind a start token, so that the output at position i is
computed from x_<i alone; learned position embeddings say where in the grid a token sits.

Sampling keeps a key/value cache: the keys and values of the positions fed so far are stored,
so drawing the next code costs one token's forward pass, where a PixelCNN reruns its whole
network over the grid for every code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lvm.blocks.distributions import sample_categorical


@dataclass
class TransformerPriorConfig:
    """Defaults give 5.61 M parameters at 128 levels, about the course's Gated PixelCNN prior
    (`make_prior("gated", 128)`: 5.56 M)."""

    levels: int = 128  # number of token values (the VQ-VAE's codebook size K)
    shape: tuple[int, int] = (8, 8)  # the grid (H, W): one learned position embedding per cell
    n_layer: int = 7  # transformer blocks
    n_head: int = 8  # attention heads per block; d_model must divide by it
    d_model: int = 256  # width of the residual stream
    dropout: float = 0.0  # on attention weights, block outputs and embeddings (training only)


class KVCache:
    """One attention layer's keys and values for the positions fed so far, in buffers sized
    for the whole sequence, so that a step writes into them instead of concatenating."""

    def __init__(self, batch: int, n_head: int, length: int, head_size: int,
                 device: torch.device, dtype: torch.dtype):
        self.k = torch.zeros(batch, n_head, length, head_size, device=device, dtype=dtype)  # (B, nh, T, hs)
        self.v = torch.zeros_like(self.k)  # (B, nh, T, hs)
        self.length = 0  # positions stored

    def add(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new positions' keys and values (B, nh, t, hs); return all so far."""
        end = self.length + k.shape[2]
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nh, end, hs) each


class SelfAttention(nn.Module):
    """Multi-head causal self-attention through `F.scaled_dot_product_attention`."""

    def __init__(self, cfg: TransformerPriorConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head != 0:
            raise ValueError(f"d_model {cfg.d_model} must be a multiple of n_head {cfg.n_head}")
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.out_drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # (B, T, C) each
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)  # (B, nh, T, hs)
        else:
            if T != 1:
                raise ValueError(f"the cached path takes one position at a time, got {T}")
            k, v = cache.add(k, v)  # (B, nh, t, hs): every position so far, this one the last
            # the one new query is the latest position: everything cached is its past, no mask
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, nh, 1, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C): the heads side by side
        return self.out_drop(self.proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, cfg: TransformerPriorConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model), nn.GELU(),
            nn.Linear(4 * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)  # (B, T, C)
        return x + self.mlp(self.ln2(x))  # (B, T, C)


class TransformerPrior(nn.Module):
    def __init__(self, cfg: TransformerPriorConfig):
        super().__init__()
        self.cfg = cfg
        self.levels = cfg.levels
        self.shape = tuple(cfg.shape)
        self.length = self.shape[0] * self.shape[1]  # T: the grid in raster order
        self.start = cfg.levels  # the start token's index: one past the code values
        self.tok_emb = nn.Embedding(cfg.levels + 1, cfg.d_model)
        self.pos_emb = nn.Embedding(self.length, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.levels)
        # GPT-2's initialisation: small normal weights, and the projections that add into the
        # residual stream scaled down by depth so the stream's variance does not grow with it
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, caches: list[KVCache] | None = None) -> torch.Tensor:
        """Input tokens (B, t) -> next-token logits (B, t, levels). Without caches, the
        positions are 0..t-1; with them, the next t positions after those cached (t = 1)."""
        B, t = tokens.shape
        first = caches[0].length if caches else 0
        pos = torch.arange(first, first + t, device=tokens.device)  # (t,)
        x = self.drop(self.tok_emb(tokens) + self.pos_emb(pos))  # (B, t, C)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None)  # (B, t, C)
        return self.head(self.ln_f(x))  # (B, t, levels)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:  # (B, 1, H, W) as stored: one channel of tokens
            x = x.squeeze(1)
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"this prior models {self.shape} grids (its position embeddings), got {tuple(x.shape[1:])}")
        return x.long()  # (B, H, W)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Code grids (B, H, W) or (B, 1, H, W) -> logits (B, levels, H, W); the logits at a
        position are computed from the codes before it in raster order only."""
        x = self._grid(x)
        B, H, W = x.shape
        seq = x.reshape(B, H * W)  # (B, T) raster order
        start = torch.full((B, 1), self.start, dtype=torch.long, device=x.device)  # (B, 1)
        inp = torch.cat([start, seq[:, :-1]], dim=1)  # (B, T): the grid shifted right by one
        out = self.forward(inp)  # (B, T, levels)
        return out.transpose(1, 2).reshape(B, self.levels, H, W)  # (B, levels, H, W)

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Negative log-likelihood, averaged over the batch and the positions, in nats."""
        x = self._grid(x)
        return {"loss": F.cross_entropy(self.logits(x).float(), x)}  # float32 under autocast too

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """The exact log p(x) of each code grid (B, H, W): (B,), nats."""
        x = self._grid(x)
        return -F.cross_entropy(self.logits(x).float(), x, reduction="none").flatten(1).sum(1)

    def new_caches(self, batch: int) -> list[KVCache]:
        """Empty key/value caches, one per block, for `batch` sequences of the whole grid."""
        w = self.head.weight
        hs = self.cfg.d_model // self.cfg.n_head
        return [KVCache(batch, self.cfg.n_head, self.length, hs, w.device, w.dtype) for _ in self.blocks]

    def step(self, tokens: torch.Tensor, caches: list[KVCache]) -> torch.Tensor:
        """Feed one token per sequence (B,) at the next position; return the logits (B, levels)
        of the code that follows it. The first token fed is the start token."""
        return self.forward(tokens[:, None], caches)[:, 0]  # (B, levels)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple[int, int] | None = None, temperature: float = 1.0) -> torch.Tensor:
        """n grids drawn code by code in raster order, one cached token's pass per code:
        (n, H, W) int64 on the model's device. `shape` must be the configured grid."""
        if shape is not None and tuple(shape) != self.shape:
            raise ValueError(f"this prior samples {self.shape} grids, asked for {tuple(shape)}")
        was_training = self.training
        self.eval()
        caches = self.new_caches(n)
        token = torch.full((n,), self.start, dtype=torch.long, device=self.head.weight.device)  # (n,)
        codes = []
        for _ in tqdm(range(self.length), desc="sampling", unit="code", leave=False, disable=None):  # shown on a terminal only
            token = sample_categorical(self.step(token, caches), temperature)  # (n,)
            codes.append(token)
        self.train(was_training)
        return torch.stack(codes, dim=1).view(n, *self.shape)  # (n, H, W)
