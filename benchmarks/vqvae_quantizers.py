"""The course's VQ-VAE at equal budget with each quantizer: the course's (codebook learned by
gradient), dead-code restarts alone, EMA alone, and ours (EMA + restarts, the default). Course
architecture on shapes, 2,000 training / 500 test images, 3 epochs, batch 128, Adam 1e-3, clip 1;
the loss is the course's (reconstruction MSE + codebook + commitment, beta 1) for every variant.

    python benchmarks/vqvae_quantizers.py --out figures/vqvae/quantizers.json
    python benchmarks/vqvae_quantizers.py --dataset fashion-mnist --train-limit 6000 --test-limit 1000 \
        --epochs 4 --variants course --out figures/vqvae/fashion-mnist/course_quantizer.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from lvm.engine import data as datasets
from lvm.engine.train import TrainConfig, fit
from lvm.vqvae import codebook_usage, encode_all
from lvm.vqvae.model import VQVAE, VQVAEConfig

VARIANTS = {
    "course": dict(ema_decay=None, restart_dead=False),
    "restarts": dict(ema_decay=None, restart_dead=True),
    "ema": dict(ema_decay=0.99, restart_dead=False),
    "ours (default)": {},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/vqvae/quantizers.json")
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--test-limit", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    data = datasets.load(args.dataset, train_limit=args.train_limit, test_limit=args.test_limit)
    results = {}
    for name in args.variants:
        options = VARIANTS[name]
        torch.manual_seed(0)  # the same initial weights as `lvm run vqvae` with --seed 0
        model = VQVAE(VQVAEConfig(channels=data.info.channels, **options))
        start = time.perf_counter()
        history = fit(model, data.train, data.test, TrainConfig(epochs=args.epochs, grad_clip=1.0, device="cpu"))
        usage = codebook_usage(encode_all(model, data.test), model.cfg.num_codes)
        results[name] = {"config": options, "test": {k: v[-1] for k, v in history.test.items()}, **usage,
                         "seconds": round(time.perf_counter() - start, 1)}
        print(name, results[name], flush=True)
    with open(args.out, "w") as f:
        json.dump({"dataset": args.dataset, "train_size": len(data.train), "test_size": len(data.test), "epochs": args.epochs,
                   "device": f"cpu ({torch.get_num_threads()} threads)", "variants": results}, f, indent=2)


if __name__ == "__main__":
    main()
