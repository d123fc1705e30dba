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
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from lvm.engine import quality
from lvm.engine.data import Data
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


@torch.no_grad()
def exact_parts(model: nn.Module, x: torch.Tensor, batch: int = 256,
                device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """`model.log_prob_parts` (named terms that sum to `log_prob`) of every example, each (N,)."""
    got: dict[str, list[torch.Tensor]] = {}
    for i in tqdm(range(0, len(x), batch), desc="log p(x)", unit="batch", leave=False, disable=None):
        for name, t in model.log_prob_parts(x[i : i + batch].to(device)).items():
            got.setdefault(name, []).append(t.double().cpu())
    return {name: torch.cat(ts) for name, ts in got.items()}


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
        parts = {}
        if hasattr(model, "log_prob_parts"):  # a sum of named terms: report each too
            parts = {name: -t.mean().item() for name, t in exact_parts(model, x, device=device).items()}
            nll = sum(parts.values())
        else:
            nll = -exact(model, x, device=device).mean().item()
        # an exact likelihood is its own ELBO; the bound is the ELBO of the one-hot posterior
        out = {"nll": nll, "k": None, "elbo": nll, **({"nll_parts": parts} if parts else {})}
    else:
        raise ValueError(f"unknown likelihood {how.likelihood!r}")
    return {**out, "bits_per_dim": out["nll"] / (dims * math.log(2)), "likelihood": how.likelihood,
            "test_examples": len(x)}


def sample_metrics(model: nn.Module, data: Data, n: int, data_dir: str | Path | None = None,
                   device: torch.device | str = "cpu", batch: int = 500, download: bool = True) -> dict[str, Any]:
    """fd, precision and recall of n samples of a trained image model against the first n test
    images, in the features of the dataset's classifier (trained and cached on first use), with
    that classifier's test accuracy. Samples are drawn in batches of `batch`; `download` lets a
    classifier trained on first use fetch a missing label file."""
    classifier = quality.classifier(data.info.name, data_dir, download=download)  # before sampling: fails first
    n = min(n, len(data.test))
    model.eval()
    start = time.perf_counter()
    fake = torch.cat([model.sample(min(batch, n - i)) for i in range(0, n, batch)])
    seconds = time.perf_counter() - start
    return {**score_samples(fake, data, classifier), "sample_seconds": round(seconds, 1)}


def score_samples(x: torch.Tensor, data: Data, classifier: tuple[nn.Module, float] | None = None,
                  data_dir: str | Path | None = None, download: bool = True) -> dict[str, Any]:
    """fd, precision and recall of samples x (N, C, H, W), as the model gives them, against the
    first N test images, in the dataset classifier's features, with its test accuracy;
    `classifier` is (model, accuracy) as `quality.classifier` gives it, read here if not given."""
    clf, acc = classifier or quality.classifier(data.info.name, data_dir, download=download)
    fake = quality.as_stored(x, data.info.kind, data.info.shape)
    return {**quality.sample_quality(clf, fake, data.test[:len(fake)]), "classifier_accuracy": acc}


def evaluate(model: nn.Module, data: Data, how: Evaluation, *, k: int | None = None, samples: int | None = None,
             test_limit: int | None = None, data_dir: str | Path | None = None,
             device: torch.device | str = "cpu", seed: int = 0, download: bool = True) -> dict[str, Any]:
    """Everything `lvm eval` reports of a trained model on its data: the likelihood numbers on the
    first `test_limit` test examples, and for images the sample metrics of `samples` samples (0:
    none); each budget at the spec's default when not given."""
    limit = test_limit if test_limit is not None else how.test_limit
    samples = how.samples if samples is None else samples
    torch.manual_seed(seed)
    start = time.perf_counter()
    out = likelihood(model, data.test[:limit], how, k=k, device=device)
    out["likelihood_seconds"] = round(time.perf_counter() - start, 1)
    out["likelihood_note"] = how.note
    if samples and data.info.kind != "points":
        torch.manual_seed(seed)
        out.update(sample_metrics(model, data, samples, data_dir, device, download=download))
    return out


def summary(numbers: dict[str, Any]) -> str:
    """One results line: `nll 95.12 nats (k=100), -ELBO 96.40, 0.1751 bits/dim; fd 3.21, ...`."""
    line = f"nll {numbers['nll']:.4f} nats"
    line += f" (k={numbers['k']})" if numbers.get("k") else f" ({numbers.get('likelihood', 'exact')})"
    line += f", -ELBO {numbers['elbo']:.4f}, {numbers['bits_per_dim']:.4f} bits/dim"
    if "fd" in numbers:
        line += (f"; fd {numbers['fd']:.3f}, precision {numbers['precision']:.3f}, recall {numbers['recall']:.3f} "
                 f"({numbers['samples']} samples; classifier accuracy {numbers['classifier_accuracy']:.3f})")
    return line


def at_end_of_run(model: nn.Module, data: Data, how: Evaluation, *, full_run: bool,
                  data_dir: str | Path | None = None, device: torch.device | str = "cpu",
                  download: bool = True) -> dict[str, Any]:
    """The numbers `lvm run` adds to metrics.json ("eval"): `evaluate` at the spec's small run
    budgets (`run_k`, `run_test_limit`, `run_samples`). The sample metrics need the dataset's
    classifier: a full run (no --train-limit) trains it once per data dir (minutes, then cached);
    a quick trial uses it only when it is cached already, and a dataset whose labels lvm cannot
    read goes without them. `lvm eval` measures with the larger default budgets."""
    has = "log_weights" if how.likelihood == "iwae" else "log_prob"
    if not hasattr(model, has):  # a model (a plugin) that does not speak the contract
        return {}
    samples = how.run_samples if data.info.kind != "points" else 0
    skipped = {}
    if samples and not (full_run or quality.classifier_path(data.info.name, data_dir).is_file()):
        samples = 0
        skipped = {"samples_skipped": f"no fd: no cached '{data.info.name}' classifier, and a run with --train-limit "
                                      "does not train one; `lvm eval --checkpoint CHECKPOINT` trains it and adds fd"}
    budget = {"k": min(how.k, how.run_k), "test_limit": min(how.test_limit or len(data.test), how.run_test_limit)}
    try:
        return skipped | evaluate(model, data, how, samples=samples, data_dir=data_dir, device=device,
                                  download=download, **budget)
    except UserError:  # no labels for this dataset's classifier: the likelihood alone
        return evaluate(model, data, how, samples=0, device=device, **budget)
