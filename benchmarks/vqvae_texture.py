"""Where the VQ-VAE's repeated texture comes from: the power of the images' spectrum at the
code grid's period (each code covers 4 x 4 pixels of the 32 x 32 image, so a pattern repeated
per code shows at frequencies k/4 cycles per pixel) and at the checkerboard's (1/2), in test
images, their reconstructions (encoder, codebook and decoder: no prior), the decoder applied to
the encoder's output before it is quantised (no codebook), and samples (the prior too). If the
reconstructions already carry the excess, the prior is not its cause; if the unquantised decodes
carry it too, the codebook is not either.

    python benchmarks/vqvae_texture.py figures/vqvae/fashion-mnist/checkpoint.pt \\
        --out figures/vqvae/texture-fashion-mnist.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import lvm
from lvm.blocks.scaling import to_unit
from lvm.engine import data as datasets


def spectrum(x: torch.Tensor) -> torch.Tensor:
    """Mean power spectrum (H, W) of images (N, C, H, W) on [-1, 1], each image's mean removed."""
    x = x.float().mean(1)  # (N, H, W): channels averaged
    x = x - x.mean(dim=(1, 2), keepdim=True)
    return (torch.fft.fft2(x).abs() ** 2).mean(0)  # (H, W)


def peaks(power: torch.Tensor) -> dict:
    """Shares of the total power at the code grid's harmonics (period 4 along either axis, not
    the zero frequency) and at the checkerboard (period 2)."""
    h, w = power.shape
    fy, fx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    grid = ((fy % (h // 4) == 0) & (fx % (w // 4) == 0)) & ~((fy == 0) & (fx == 0))
    checker = ((fy == h // 2) | (fx == w // 2))
    total = power.sum()
    return {"code_grid": (power[grid].sum() / total).item(), "checkerboard": (power[checker].sum() / total).item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("-n", type=int, default=500)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, meta = lvm.load_model(args.checkpoint)
    model.eval()
    data = datasets.load(meta["data"]["name"], test_limit=args.n, download=False)
    real = data.test[: args.n]
    vq = model.vqvae  # the first stage: encoder, codebook, decoder
    with torch.no_grad():
        images = {
            "test images": real.float() / 127.5 - 1,
            "reconstructions": torch.cat([model.reconstruct(real[i : i + 100]) for i in range(0, len(real), 100)]),
            "decoded unquantised": torch.cat([vq.decoder(vq.encoder(to_unit(real[i : i + 100]))).clamp(-1, 1)
                                               for i in range(0, len(real), 100)]),
            "samples": torch.cat([model.sample(100).clamp(-1, 1) for _ in range(0, args.n, 100)]),
        }
    report = {"what": __doc__.splitlines()[0], "checkpoint": args.checkpoint, "dataset": meta["data"]["name"],
              "images": args.n, "device": f"cpu ({torch.get_num_threads()} threads)", "machine": platform.machine(),
              "torch": torch.__version__, "shares": {k: peaks(spectrum(v)) for k, v in images.items()}}
    for k, v in report["shares"].items():
        print(f"{k:16s} code-grid harmonics {v['code_grid']:.5f}  checkerboard {v['checkerboard']:.5f}")
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
