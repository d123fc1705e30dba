"""The likelihood of a trained model on test data, the way the literature reports it.

A model speaks one of two contracts (its spec's `Evaluation.likelihood` says which):

- `log_weights(x, k) -> (k, B)`: for each example of the batch x, k draws z_j ~ q(z|x) and their
  log importance weights log p(x, z_j) - log q(z_j|x). Their mean is the ELBO; the log of their
  mean is the IWAE estimate of log p(x) (Burda, Grosse & Salakhutdinov 2015), a lower bound too,
  but one that rises towards log p(x) as k grows (its expectation never falls with k);
- `log_prob(x) -> (B,)`: log p(x) itself (autoregressive models), or a lower bound no k tightens
  (the VQ-VAE's, from its one-hot posterior).

Both are in nats per example, over the data as stored: for 8-bit images a probability over the
256 levels of every value, for binary images over 2, for points a density. Each model's docstring
says how its decoder becomes that likelihood. The log-mean-exp over the k weights is taken in
float64: the weights of one image are thousands of nats apart from 0, and only their differences
matter.

bits per dimension = nll / (D ln 2), D the number of values in one example (C x H x W): the scale
of the literature (8 for a uniform guess over 256 levels, 1 over two).

This module names no model: it calls the contract and reads the spec's defaults.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lvm.engine.errors import UserError
from lvm.engine.spec import Evaluation

UNITS = 2048  # examples x draws per forward pass: bounds the memory of one pass


@torch.no_grad()
def importance_sampled(model: nn.Module, x: torch.Tensor, k: int, units: int = UNITS,
                       device: torch.device | str = "cpu", desc: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """The IWAE estimate of log p(x) and the ELBO of every example of x (N, ...), each (N,)
    float64 on the CPU, from `model.log_weights` with k draws per example. Examples are batched
    and the k draws split into passes so that one pass holds at most `units` examples x draws."""
    if k < 1:
        raise UserError(f"-k must be at least 1, got {k}")
    batch = max(1, min(len(x), units // k))  # examples per batch
    per_pass = max(1, units // batch)  # draws per pass
    iwae, elbo = [], []
    starts = tqdm(range(0, len(x), batch), desc=desc or f"log p(x), k={k}", unit="batch", leave=False, disable=None)
    for i in starts:
        xb = x[i : i + batch].to(device)
        w = torch.cat([model.log_weights(xb, min(per_pass, k - j)).double().cpu()
                       for j in range(0, k, per_pass)])  # (k, b)
        iwae.append(torch.logsumexp(w, 0) - math.log(k))
        elbo.append(w.mean(0))
    return torch.cat(iwae), torch.cat(elbo)


@torch.no_grad()
def exact(model: nn.Module, x: torch.Tensor, batch: int = 256, device: torch.device | str = "cpu") -> torch.Tensor:
    """`model.log_prob` of every example of x (N, ...), (N,) float64 on the CPU, in batches."""
    starts = tqdm(range(0, len(x), batch), desc="log p(x)", unit="batch", leave=False, disable=None)
    return torch.cat([model.log_prob(x[i : i + batch].to(device)).double().cpu() for i in starts])


def likelihood(model: nn.Module, x: torch.Tensor, how: Evaluation, k: int | None = None,
               device: torch.device | str = "cpu") -> dict[str, Any]:
    """nll, elbo (both the negatives, nats per example, averaged over x), k and bits_per_dim of a
    trained model on the test examples x (N, ...) as stored. `k` defaults to the spec's; it
    applies only to an importance-sampled likelihood, and is None in the result otherwise."""
    model.eval()
    dims = math.prod(x.shape[1:])
    if how.likelihood == "iwae":
        k = k or how.k
        log_p, elbo = importance_sampled(model, x, k, device=device)
        out = {"nll": -log_p.mean().item(), "k": k, "elbo": -elbo.mean().item()}
    elif how.likelihood in ("exact", "bound"):
        log_p = exact(model, x, device=device)
        # an exact likelihood is its own ELBO; the bound is the ELBO of the one-hot posterior
        out = {"nll": -log_p.mean().item(), "k": None, "elbo": -log_p.mean().item()}
    else:
        raise ValueError(f"unknown likelihood {how.likelihood!r}")
    return {**out, "bits_per_dim": out["nll"] / (dims * math.log(2)), "likelihood": how.likelihood,
            "test_examples": len(x)}
