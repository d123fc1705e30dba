"""The evidence for vae2d's two departures from the course: a cosine learning-rate decay and
standardised inputs. Trains the four variants (course = constant lr on raw inputs) on the four
Gaussian datasets for two seeds, at the course's budget (20 epochs, batch 128, Adam 1e-3), and
writes every final test number to a JSON file.

    python benchmarks/vae2d_ablation.py --out figures/vae2d/ablation.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from lvm.engine.data import load
from lvm.engine.pipeline import describe_device
from lvm.engine.train import TrainConfig, fit
from lvm.vae2d.model import VAE2d, VAE2dConfig

VARIANTS = {  # name: (lr schedule, standardised inputs)
    "course": ("constant", False),
    "cosine": ("cosine", False),
    "standardised": ("constant", True),
    "ours": ("cosine", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/vae2d/ablation.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    start, runs = time.perf_counter(), []
    for name in ("gaussians-a1", "gaussians-a2", "gaussians-b1", "gaussians-b2"):
        data = load(name)
        for variant, (schedule, standardise) in VARIANTS.items():
            for seed in args.seeds:
                torch.manual_seed(seed)
                model = VAE2d(VAE2dConfig())
                if standardise:
                    model.standardise_with(data.train)
                cfg = TrainConfig(epochs=20, batch_size=128, lr=1e-3, seed=seed, lr_schedule=schedule,
                                  cpu_threads=1, device="cpu")
                h = fit(model, data.train, data.test, cfg)
                test = {"neg_elbo": h.test["loss"][-1], "recon_loss": h.test["recon_loss"][-1],
                        "kl_loss": h.test["kl_loss"][-1]}
                runs.append({"dataset": name, "variant": variant, "seed": seed, "test": test})
                print(f"{name} {variant:<13} seed {seed}: -ELBO {test['neg_elbo']:.4f}", flush=True)
    result = {"epochs": 20, "device": describe_device(torch.device("cpu"), 1),
              "seconds": round(time.perf_counter() - start, 1), "variants": VARIANTS, "runs": runs}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
