"""The course's Q2a VAE trained the course's plain way, as a reference for `lvm run vae`.

Self-contained on purpose (it does not import lvm's models or trainer): the course's
architecture written out as its solution does, float32 images in [-1, 1] held in a
TensorDataset, a shuffling DataLoader, Adam 1e-3, batch 128. Only the data slice comes from
`lvm.engine.data.load`, so both see exactly the same images.

    OMP_NUM_THREADS=1 python benchmarks/course_reference.py --dataset shapes --epochs 5 \
        --train-limit 10000 --test-limit 2000 --out figures/vae/shapes-course/budget-8000x4/reference.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lvm.engine.data import load


class CourseVAE(nn.Module):
    def __init__(self, c: int, latent: int = 16):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            nn.Conv2d(c, 32, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(128, 256, 3, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(4 * 4 * 256, 2 * latent),
        )
        self.fc = nn.Linear(latent, 4 * 4 * 128)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(128, 128, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(32, c, 3, 1, 1),
        )

    def loss(self, x):
        mu, log_std = self.encoder(x).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * log_std.exp()
        x_recon = self.decoder(F.relu(self.fc(z)).view(-1, 128, 4, 4))
        recon = F.mse_loss(x_recon, x, reduction="none").view(len(x), -1).sum(1).mean()
        kl = (-log_std - 0.5 + (torch.exp(2 * log_std) + mu**2) * 0.5).sum(1).mean()
        return recon + kl, recon, kl


def evaluate(model, loader):
    model.eval()
    totals, n = torch.zeros(3), 0
    with torch.no_grad():
        for (x,) in loader:
            totals += torch.stack(model.loss(x)) * len(x)
            n += len(x)
    model.train()
    return (totals / n).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="shapes")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--test-limit", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args()

    torch.manual_seed(args.seed)
    data = load(args.dataset, train_limit=args.train_limit, test_limit=args.test_limit, download=False)
    train = data.train.float() / 127.5 - 1  # the course: float32 in [-1, 1]
    test = data.test.float() / 127.5 - 1
    train_loader = DataLoader(TensorDataset(train), batch_size=128, shuffle=True)
    test_loader = DataLoader(TensorDataset(test), batch_size=128)
    model = CourseVAE(train.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    start = time.perf_counter()
    curve = [evaluate(model, test_loader)]
    for _ in range(args.epochs):
        for (x,) in train_loader:
            loss, _, _ = model.loss(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        curve.append(evaluate(model, test_loader))
    seconds = time.perf_counter() - start
    neg_elbo, recon, kl = curve[-1]
    result = {
        "what": "the course's VAE trained the course's plain way (benchmarks/course_reference.py)",
        "dataset": args.dataset,
        "epochs": args.epochs,
        "train_limit": args.train_limit,
        "test_limit": args.test_limit,
        "train_size": len(train),
        "test_size": len(test),
        "batch_size": 128,
        "lr": 1e-3,
        "threads": torch.get_num_threads(),
        "seconds": round(seconds, 1),
        "test": {"neg_elbo": neg_elbo, "recon_loss": recon, "kl_loss": kl},
        "test_neg_elbo_per_epoch": [c[0] for c in curve],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
