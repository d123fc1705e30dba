"""The PixelVAE (course Q4b) against a plain VAE at equal budget on binarised Fashion-MNIST.

Both are `lvm.pixelvae.PixelVAE` with the same config (the same encoder, the same map from z,
the same free bits, the same data, epochs, batch, learning rate and seed) except the decoder:
`autoregressive=True` is the PixelVAE (a Gated PixelCNN over the pixels, conditioned on the map
of z); `autoregressive=False` is a factorised Bernoulli decoder (one logit per pixel from the
map: the course's conv decoder shape ending in one channel). Both train with the shared trainer
(`lvm.engine.train.fit`) in float32 on the CPU, one thread.

Writes the JSON (test -ELBO = recon + true KL, the objective with free bits, recon, KL, per
epoch; seconds; budget; device and CPU flags; the command) and, for the PixelVAE, 100 samples
drawn pixel by pixel, 50 test images with their reconstructions (a draw from p(x|z) at the
posterior mean) and the training plot, into the folder of `--out`.

    OMP_NUM_THREADS=1 python benchmarks/pixelvae_vs_vae.py --train-limit 20000 --epochs 3 \
        --out figures/pixelvae/vs_vae-fashion-mnist-binary.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from lvm.engine import train
from lvm.engine.data import load
from lvm.engine.plotting import plot_training, save_image_grid, save_reconstructions
from lvm.engine.train import TrainConfig, fit
from lvm.pixelvae import PixelVAE, PixelVAEConfig

LABELS = {"loss": "recon + max(KL, free bits)", "recon_loss": "recon", "kl_loss": "KL"}


def cpu_flags() -> str:
    """The flags that decide CPU speed here, for the JSON (`lvm.engine.train.cpu_flags` reads them)."""
    flags = train.cpu_flags()
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or platform.machine()


def binary_28(train_limit: int | None, test_limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    d = load("fashion-mnist-binary", train_limit=train_limit, test_limit=test_limit, download=False)
    if d.train.shape[-1] == 32:  # the loader's zero padding to 32 x 32: back to the native 28 x 28
        return d.train[..., 2:-2, 2:-2].contiguous(), d.test[..., 2:-2, 2:-2].contiguous()
    return d.train, d.test


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-limit", type=int, default=20_000)
    p.add_argument("--test-limit", type=int, default=2_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels", type=int, default=PixelVAEConfig.channels)
    p.add_argument("--n-layers", type=int, default=PixelVAEConfig.n_layers)
    p.add_argument("--free-bits", type=float, default=10.0,
                   help="the floor of both models (default: the course's 10, what the committed JSON ran; lvm's is 0)")
    p.add_argument("--out", type=Path, default=Path("figures/pixelvae/vs_vae-fashion-mnist-binary.json"))
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    train, test = binary_28(args.train_limit, args.test_limit)
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, seed=args.seed, device="cpu",
                      cpu_threads=1, amp="off")
    folder = args.out.parent
    runs = {}
    for name, autoregressive in (("pixelvae", True), ("vae", False)):
        mcfg = PixelVAEConfig(shape=tuple(train.shape[1:]), channels=args.channels, n_layers=args.n_layers,
                              free_bits=args.free_bits, autoregressive=autoregressive)
        torch.manual_seed(args.seed)
        model = PixelVAE(mcfg)
        start = time.perf_counter()
        h = fit(model, train, test, cfg, desc=name)
        seconds = time.perf_counter() - start
        neg_elbo = [r + k for r, k in zip(h.test["recon_loss"], h.test["kl_loss"])]
        runs[name] = {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(mcfg).items()},
            "parameters": sum(q.numel() for q in model.parameters()),
            "train_seconds": round(seconds, 1),
            "test": {"neg_elbo": neg_elbo[-1], "loss": h.test["loss"][-1],
                     "recon_loss": h.test["recon_loss"][-1], "kl_loss": h.test["kl_loss"][-1]},
            "test_per_epoch": {"neg_elbo": neg_elbo, "recon_loss": h.test["recon_loss"],
                               "kl_loss": h.test["kl_loss"]},
        }
        print(name, json.dumps(runs[name]["test"]), f"{seconds:.0f} s", flush=True)
        plot_training(h.train, h.test, folder / f"{name}_train_plot.png",
                      f"{name} on fashion-mnist-binary 28x28 ({len(train)} images x {args.epochs} epochs)", LABELS)
        model.eval()
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        samples = model.sample(100)  # (100, 1, 28, 28) of 0/1
        runs[name]["sample_seconds_100"] = round(time.perf_counter() - start, 1)
        save_image_grid(samples, folder / f"{name}_samples.png", f"{name}: 100 samples")
        x = test[:50]
        save_reconstructions(x.float(), model.reconstruct(x), folder / f"{name}_reconstructions.png",
                             f"{name}: test images (left) and draws from p(x|z = mu(x))")

    result = {
        "what": "PixelVAE against a plain VAE (same encoder, factorised Bernoulli decoder) at equal budget",
        "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
        "dataset": "fashion-mnist-binary, 28x28 (binarised at 128)",
        "train_size": len(train), "test_size": len(test), "epochs": args.epochs, "batch_size": 128,
        "lr": 1e-3, "seed": args.seed, "precision": "float32",
        "device": f"cpu ({platform.machine()}, 1 thread)", "cpu_flags": cpu_flags(),
        "neg_elbo_is": "recon_loss + kl_loss (the true KL); 'loss' adds max(KL, free bits) per image instead",
        "runs": runs,
        "gap_neg_elbo": runs["vae"]["test"]["neg_elbo"] - runs["pixelvae"]["test"]["neg_elbo"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v["test"] for k, v in runs.items()}, indent=1))


if __name__ == "__main__":
    main()
