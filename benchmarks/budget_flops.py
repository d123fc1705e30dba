"""What each row of the results table costs at its default budget, in floating-point operations:
one training step's forward and backward pass counted by torch's FlopCounterMode, per example,
times the examples the default budget trains on. Compute-bound work divided by a GPU's achieved
rate bounds a row's time from below; it says which rows dominate a table before a GPU is lent.

    python benchmarks/budget_flops.py --out figures/bench/budget_flops.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from lvm import registry
from lvm.bench import random_batch
from lvm.engine.data import DataInfo
from lvm.vqvae.model import VQVAEConfig, make_prior

IMAGE = DataInfo("shapes", "image", (3, 32, 32))  # Fashion-MNIST has 1 channel: its first conv is cheaper
BINARY = DataInfo("fashion-mnist-binary", "binary", (1, 32, 32))
TRAIN_SIZES = {"shapes": 20_000, "fashion-mnist": 60_000}


def step_flops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Floating-point operations of one loss forward + backward, per example of the batch x."""
    with FlopCounterMode(display=False) as counter:
        model.loss(x)["loss"].backward()
    return counter.get_total_flops() / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/bench/budget_flops.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    images, bits = random_batch(IMAGE, 32), random_batch(BINARY, 32)
    codes = torch.randint(0, 128, (32, 8, 8))
    prior_epochs = VQVAEConfig().prior_epochs

    def default(name: str, info: DataInfo, x: torch.Tensor, **config) -> tuple[float, int, str]:
        """A registered model's first stage at its defaults (`config` picks a variant): FLOP, epochs, data."""
        spec = registry.get(name)
        model = spec.stages[0].build(dataclasses.replace(spec.default_config(info), **config))
        return step_flops(model, x), spec.train.epochs, info.kind

    rows = {  # name: (FLOP per example, epochs, which data)
        "vae": default("vae", IMAGE, images),
        "vlae": default("vlae", IMAGE, images),
        "vqvae": default("vqvae", IMAGE, images),
        "vqvae prior (pixelcnn)": (step_flops(make_prior("pixelcnn", 128), codes), prior_epochs, "image"),
        "vqvae prior (gated)": (step_flops(make_prior("gated", 128), codes), prior_epochs, "image"),
        "pixelcnn": default("pixelcnn", BINARY, bits),
        "pixelcnn (gated)": default("pixelcnn", BINARY, bits, gated=True),
    }
    result = {"per_example_gflop": {k: round(v[0] / 1e9, 4) for k, v in rows.items()},
              "epochs": {k: v[1] for k, v in rows.items()}, "total_pflop": {}}
    for dataset, n in TRAIN_SIZES.items():
        total = {k: f * e * n / 1e15 for k, (f, e, kind) in rows.items() if kind == "image" or dataset == "fashion-mnist"}
        result["total_pflop"][dataset] = {**{k: round(v, 3) for k, v in total.items()}, "all": round(sum(total.values()), 2)}
        print(f"{dataset} ({n} training examples): " + ", ".join(f"{k} {v:.2f}" for k, v in total.items())
              + f"; all {sum(total.values()):.1f} PFLOP")
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
