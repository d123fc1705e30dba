"""The transformer prior over code grids: the cached sampler computes the full pass's logits,
causality (by gradients and by changing the future), the loss, learning a toy grid
distribution, temperature (for every prior), and its size against the Gated PixelCNN's."""

from __future__ import annotations

import math

import pytest
import torch

from lvm.blocks.distributions import sample_categorical
from lvm.vqvae.model import make_prior
from lvm.vqvae.transformer import TransformerPrior, TransformerPriorConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # these models are tiny


def tiny(levels: int = 7, shape: tuple[int, int] = (4, 5), **kw) -> TransformerPrior:
    return TransformerPrior(TransformerPriorConfig(levels=levels, shape=shape, **{
        "n_layer": 2, "n_head": 2, "d_model": 16, **kw}))


def shaken(model: TransformerPrior, seed: int = 0) -> TransformerPrior:
    """The model with unit-scale random weights: GPT's small initialisation makes every logit
    nearly zero, where a wrong cache could hide below any tolerance."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                continue
            matrix = p.dim() == 2 and "emb" not in name
            p.normal_(0, 1 / math.sqrt(p.shape[1]) if matrix else 0.5)  # logits of order 1
    return model.eval()


def cached_logits(model: TransformerPrior, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, levels, H, W) for the grids x through the sampler's path: one cached step per
    position, fed the start token and then x's own codes (instead of drawn ones)."""
    B, H, W = x.shape
    caches = model.new_caches(B)
    token = torch.full((B,), model.start, dtype=torch.long)
    out = []
    for t, code in enumerate(x.reshape(B, H * W).unbind(1)):
        out.append(model.step(token, caches))  # (B, levels)
        assert all(c.length == t + 1 for c in caches)
        token = code
    return torch.stack(out, dim=2).view(B, model.levels, H, W)


# ----------------------------------------------------------------------------- the cache


@pytest.mark.parametrize("cfg", [dict(), dict(n_layer=3, n_head=4, d_model=32), "default"])
def test_cached_steps_give_the_full_pass_logits_at_every_position(cfg):
    if cfg == "default":  # the real size: 7 blocks of 256, 128 levels, 8x8
        model = shaken(TransformerPrior(TransformerPriorConfig()))
    else:
        model = shaken(tiny(**cfg))
    H, W = model.shape
    with torch.no_grad():
        for seed in range(1 if cfg == "default" else 3):
            torch.manual_seed(100 + seed)
            x = torch.randint(0, model.levels, (4, H, W))
            full = model.logits(x)  # (4, levels, H, W)
            assert full.dtype == torch.float32 and full.std() > 0.3  # not a near-zero logit map
            assert torch.allclose(cached_logits(model, x), full, rtol=0, atol=1e-5), seed


def test_cache_refuses_more_than_one_position_per_step():
    model = tiny()
    with pytest.raises(ValueError):
        model.forward(torch.zeros(2, 3, dtype=torch.long), model.new_caches(2))


# ----------------------------------------------------------------------------- causality


def test_logits_have_zero_gradient_from_the_present_and_future():
    model = shaken(tiny(shape=(3, 4)))
    H, W = model.shape
    T = H * W
    x = torch.randint(0, model.levels, (1, H, W))
    seen = {}

    def leaf(module, inputs, output):  # the token embeddings become a leaf we differentiate by
        seen["e"] = output.detach().requires_grad_()
        return seen["e"]

    handle = model.tok_emb.register_forward_hook(leaf)
    try:
        for i in range(T):
            logits = model.logits(x).reshape(1, model.levels, T)  # (1, levels, T)
            logits[0, :, i].sum().backward()
            g = seen["e"].grad[0].abs().sum(1)  # (T,): input s holds the start (s=0) or code s-1
            # code i sits at input i+1: it and every later code have exactly zero influence
            assert torch.all(g[i + 1 :] == 0), f"position {i} sees codes {g[i + 1:].nonzero().tolist()}"
            assert torch.all(g[: i + 1] > 0), f"position {i} is blind to part of its past"
    finally:
        handle.remove()


def test_changing_the_future_leaves_earlier_logits_alone():
    model = shaken(tiny())
    H, W = model.shape
    T = H * W
    torch.manual_seed(3)
    x = torch.randint(0, model.levels, (2, H, W))
    base = model.logits(x).reshape(2, model.levels, T)
    for i in range(T):
        y = x.reshape(2, T).clone()
        y[:, i:] = (y[:, i:] + torch.randint(1, model.levels, y[:, i:].shape)) % model.levels  # all differ
        out = model.logits(y.view(2, H, W)).reshape(2, model.levels, T)
        assert torch.allclose(out[:, :, : i + 1], base[:, :, : i + 1], atol=1e-6)
        if i + 1 < T:  # and the positions after a changed code do see the change
            assert not torch.allclose(out[:, :, i + 1], base[:, :, i + 1], atol=1e-3)


# ----------------------------------------------------------------------------- loss, learning


def test_loss_is_cross_entropy_per_position_and_takes_stored_grids():
    model = shaken(tiny())
    x = torch.randint(0, model.levels, (3, *model.shape), dtype=torch.uint8)
    logits = model.logits(x)
    log_p = logits - logits.logsumexp(dim=1, keepdim=True)  # (B, levels, H, W)
    by_hand = -log_p.gather(1, x.long()[:, None]).mean()
    assert torch.allclose(model.loss(x)["loss"], by_hand, atol=1e-6)
    assert torch.allclose(model.loss(x[:, None])["loss"], by_hand, atol=1e-6)  # (B, 1, H, W)
    with pytest.raises(ValueError):
        model.logits(torch.zeros(2, 5, 5, dtype=torch.long))  # not the configured grid


def test_learns_a_toy_grid_distribution():
    # four fixed random 4x4 grids, equally likely: the first code picks the grid, every later
    # code follows from it, so the best NLL is log(4) / 16 per position
    torch.manual_seed(0)
    levels, shape = 16, (4, 4)
    patterns = torch.randint(0, levels, (4, *shape))
    patterns[:, 0, 0] = torch.arange(4)  # distinct first codes
    model = tiny(levels=levels, shape=shape, n_layer=2, d_model=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = model.loss(patterns)["loss"].item()
    for _ in range(120):
        loss = model.loss(patterns[torch.randint(0, 4, (32,))])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = model.loss(patterns)["loss"].item()
    assert start > 0.9 * math.log(levels)  # about uniform at initialisation
    assert end < 0.25, (start, end)  # the floor is log(4) / 16 = 0.087
    samples = model.sample(64, shape, temperature=0.5)
    hits = (samples[:, None] == patterns[None]).flatten(2).all(2).any(1)  # (64,)
    assert hits.float().mean() > 0.9  # samples are the training grids


# ----------------------------------------------------------------------------- sampling


def test_sample_shape_dtype_mode_and_determinism():
    model = tiny()
    model.train()
    torch.manual_seed(1)
    a = model.sample(6, model.shape)
    assert a.shape == (6, *model.shape) and a.dtype == torch.int64
    assert a.min() >= 0 and a.max() < model.levels and len(a.unique()) > 1
    assert model.training  # sampling leaves the mode as it found it
    torch.manual_seed(1)
    assert torch.equal(model.sample(6), a)
    with pytest.raises(ValueError):
        model.sample(2, (3, 3))


def any_prior(kind: str):
    if kind == "transformer":
        return shaken(tiny(levels=5, shape=(5, 6)))
    torch.manual_seed(0)
    return make_prior(kind, 5, embed_dim=4, channels=8, head_channels=8, layers=2).eval()


@pytest.mark.parametrize("kind", ["pixelcnn", "gated", "transformer"])
def test_temperature(kind):
    model = any_prior(kind)
    shape = (5, 6)
    greedy = model.sample(8, shape, temperature=0)
    # each greedy code is the argmax of the full pass's logits given the codes drawn before it
    assert torch.equal(model.logits(greedy).argmax(1), greedy)
    assert torch.equal(greedy, greedy[:1].expand_as(greedy))  # no noise left: all alike
    torch.manual_seed(0)
    assert torch.equal(model.sample(8, shape, temperature=1e-4), greedy)  # the limit
    # a higher temperature spreads the draws: fewer codes agree with their position's mode
    torch.manual_seed(0)
    hot, cool = model.sample(200, shape, temperature=3.0), model.sample(200, shape, temperature=0.3)

    def at_mode(s):  # fraction of codes that equal the most common code at their position
        return (s == s.mode(dim=0).values).float().mean()

    assert at_mode(hot) < at_mode(cool) - 0.1, (at_mode(hot), at_mode(cool))
    with pytest.raises(ValueError):
        model.sample(2, shape, temperature=-1.0)


def test_sample_categorical_matches_the_tempered_distribution():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 0.0, -1.0]]).expand(20_000, 3)
    for t in (0.5, 2.0):
        draws = sample_categorical(logits, t)
        freq = torch.bincount(draws, minlength=3).float() / len(draws)
        assert torch.allclose(freq, torch.softmax(logits[0] / t, 0), atol=0.015), t


# ----------------------------------------------------------------------------- size


def test_default_size_is_about_the_gated_pixelcnn():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ours, gated = count(TransformerPrior(TransformerPriorConfig())), count(make_prior("gated", 128))
    assert abs(ours / gated - 1) < 0.03, (ours, gated)
