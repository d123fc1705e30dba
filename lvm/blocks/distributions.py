"""Small, numerically stable pieces of probability the models share (all in nats)."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample whose gradient flows into mu and sigma."""
    return mu + log_std.exp() * torch.randn_like(mu)


def gaussian_kl(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) in closed form, summed over the last dimension."""
    return 0.5 * (mu.pow(2) + (2 * log_std).exp() - 1.0 - 2 * log_std).sum(-1)


def gaussian_log_prob(x: torch.Tensor, mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(x; mu, sigma^2), elementwise (not summed)."""
    return -0.5 * (((x - mu) * torch.exp(-log_std)) ** 2 + LOG_2PI) - log_std


def standard_normal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log N(x; 0, 1), elementwise."""
    return -0.5 * (x.pow(2) + LOG_2PI)


def sample_categorical(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One draw per row from softmax(logits / temperature): (B, K) -> (B,) int64.

    temperature < 1 sharpens the distribution towards its mode, > 1 flattens it; 0 takes the
    mode itself (argmax), the limit of ever lower temperatures.
    """
    if not temperature >= 0:  # also refuses NaN
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=1)
    # in float64 (also under autocast), with the largest logit at 0 first: divided by a tiny
    # temperature (1e-300 is one, nearly argmax) the others go to -inf, never to inf - inf = NaN
    logits = logits.double()
    probs = torch.softmax((logits - logits.amax(dim=1, keepdim=True)) / temperature, dim=1)  # (B, K)
    return torch.multinomial(probs, 1).squeeze(1)


def _log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails: on the right of 0 it takes
    Phi(-a) - Phi(-b), the same mass measured from the other end, where it does not cancel."""
    flip = a > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)  # lo < hi, both mostly <= 0
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def discretised_gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor | float) -> torch.Tensor:
    """log P(x) of 8-bit values x (uint8 0..255) under N(mean, sigma^2) on the [-1, 1] scale,
    integrated over each value's bin: value v is the interval v/127.5 - 1 +- 1/255, and the two
    end values take the tails (0 everything below, 255 everything above), so the 256
    probabilities sum to 1 (as PixelCNN++'s discretised logistic does). Elementwise, float64."""
    centre = x.double() * (2.0 / 255.0) - 1.0
    inv_std = torch.exp(-torch.as_tensor(log_std, dtype=torch.float64, device=centre.device))
    mean = mean.double()
    upper = torch.where(x >= 255, torch.inf, (centre + 1.0 / 255.0 - mean) * inv_std)
    lower = torch.where(x <= 0, -torch.inf, (centre - 1.0 / 255.0 - mean) * inv_std)
    return _log_diff_ndtr(lower, upper)
