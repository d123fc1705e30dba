"""Where a Gaussian decoder's importance-sampled NLL comes from: the discretised likelihood's end
bins (value 0 takes everything below, 255 everything above: `discretised_gaussian_log_prob`)
reward a decoder whose means overshoot the data's range on black or white pixels. This script
estimates the IWAE NLL at several k on the same test images twice: with the decoder's means as
they are, and clamped to [-1, 1], where the end bins can give at most half their tail.

    python benchmarks/edge_bins.py figures/vae/fashion-mnist/checkpoint.pt \\
        figures/vae/fashion-mnist-course/checkpoint.pt --out figures/eval/edge-bins-fashion-mnist.json

Written for the models whose decoder is `decode(z)` -> means on [-1, 1] with the fixed
`DECODER_LOG_STD` (vae, vlae).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

import lvm
from lvm.blocks.distributions import discretised_gaussian_log_prob, gaussian_log_prob, reparameterize
from lvm.engine import data as datasets
from lvm.vae.model import DECODER_LOG_STD


def cpu_flags() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = next((l.split(":", 1)[1] for l in info.splitlines() if l.startswith("flags")), "")
    model = next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith("model name")), platform.processor())
    return {"cpu": model, "flags": [f for f in line.split() if f.startswith(("avx", "fma", "amx"))]}


@torch.no_grad()
def log_weights(model, x: torch.Tensor, k: int, clamp: bool) -> tuple[torch.Tensor, float]:
    """(k, B) log p(x, z) - log q(z|x) in float64, as `VAE.log_weights` with the means clamped or
    not; and the share of the 0-valued pixels whose decoded mean lies below -1."""
    mu, log_std = (t.float() for t in model.encode(x))  # (B, L) each
    z = reparameterize(mu.expand(k, *mu.shape), log_std)  # (k, B, L)
    mean = model.decode(z.flatten(0, 1)).float()  # (k B, C, H, W)
    target = x.expand(k, *x.shape).flatten(0, 1)
    below = ((mean < -1) & (target == 0)).sum().item() / max((target == 0).sum().item(), 1)
    if clamp:
        mean = mean.clamp(-1, 1)
    log_px = discretised_gaussian_log_prob(target, mean, DECODER_LOG_STD).flatten(1).sum(1)  # (k B,)
    log_pz = model.log_prior(z.flatten(0, 1))
    log_qz = gaussian_log_prob(z, mu, log_std).sum(-1).flatten()
    return (log_px + log_pz - log_qz).view(k, len(x)).double(), below


def measure(path: str, x: torch.Tensor, ks: list[int], batch: int) -> dict:
    model, meta = lvm.load_model(path)
    model.eval()
    out = {"checkpoint": path, "config": meta.get("config", {}).get("model") if isinstance(meta, dict) else None}
    for clamp in (False, True):
        rows = []
        for k in ks:
            torch.manual_seed(0)
            start, nll, elbo, below = time.perf_counter(), 0.0, 0.0, 0.0
            for i in range(0, len(x), batch):
                w, b = log_weights(model, x[i : i + batch], k, clamp)
                nll -= (torch.logsumexp(w, 0) - math.log(k)).sum().item()
                elbo -= w.mean(0).sum().item()
                below += b * len(w[0])
            rows.append({"k": k, "nll": nll / len(x), "elbo": elbo / len(x), "gap": (elbo - nll) / len(x),
                         "below_minus_one": below / len(x), "seconds": round(time.perf_counter() - start, 1)})
            print(path, "clamped" if clamp else "as is", rows[-1], flush=True)
        out["clamped" if clamp else "as_is"] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("-k", type=int, nargs="+", default=[1, 10, 100])
    parser.add_argument("--test-limit", type=int, default=50)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    first = lvm.load_model(args.checkpoints[0])[1]
    dataset = first["data"]["name"]
    x = datasets.load(dataset, test_limit=args.test_limit, download=False).test[: args.test_limit]
    report = {"what": __doc__.splitlines()[0], "dataset": dataset, "test_examples": len(x), "k": args.k,
              "device": f"cpu ({torch.get_num_threads()} threads)", **cpu_flags(), "torch": torch.__version__,
              "models": [measure(p, x, args.k, args.batch) for p in args.checkpoints]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
