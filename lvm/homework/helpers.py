"""Helpers for the homework notebooks in `homework/`: data in the course's shapes, pictures of
it, and `save_results_q*` functions that run a student's solution, print its final test numbers
the course's way and write the deliverable figures.

The course's conventions, kept here so that a solution written for the course runs unchanged:
- 2-D data (Q1): float32 arrays (N, 2).
- images (Q2, Q3, Q4a): uint8 arrays (N, 32, 32, 3), channels last, values 0..255. A one-channel
  dataset (Fashion-MNIST) is repeated to three channels, so every image question sees C = 3.
- binary images (Q4b): uint8 arrays (N, 32, 32, 1) of 0/1, channels last.
- a solution returns images as float arrays (N, 32, 32, C) with values in [0, 255].

Figures are written by `lvm.engine.plotting` into `out` (default `results/`), and shown inline when
running inside a notebook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lvm.engine import data as datasets
from lvm.engine.errors import UserError
from lvm.engine.plotting import plot_training, save_image_grid, save_scatter

# The course numbers its image datasets; a solution receives the id and may pick settings by it.
IMAGE_DATASETS = {"svhn": 1, "cifar10": 2, "shapes": 3, "fashion-mnist": 4}
BINARY_DATASETS = {"fashion-mnist-binary": 1, "mnist-binary": 2, "shapes-binary": 3}
Q1_LABELS = ("-ELBO", "Recon Loss", "KL Loss")


_GRADING = False  # set by `lvm grade` while it calls a question function


def grading() -> bool:
    """True while `lvm grade` runs your function on its small slice of data. A solution may use
    it to shorten its training there, e.g. `epochs = 2 if grading() else 20`."""
    return _GRADING


# ----------------------------------------------------------------------------- showing figures


def show(*paths: str | Path) -> list[Path]:
    """Display PNG files inline in a notebook (prints their paths elsewhere); returns them."""
    paths = [Path(p) for p in paths]
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        inline = get_ipython() is not None
    except ImportError:
        inline = False
    for p in paths:
        if inline:
            display(Image(filename=str(p)))
        else:
            print(f"wrote {p}")
    return paths


def to_chw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) values in [0, 255] -> (N, C, H, W) float in [0, 1], for lvm.engine.plotting."""
    return torch.as_tensor(np.asarray(images, np.float32) / 255.0).permute(0, 3, 1, 2)


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 tensor -> (N, H, W, C) uint8 array: the course's layout."""
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def from_hwc(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 array -> (N, C, H, W) uint8 tensor: lvm's layout (models take it)."""
    return torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- data


def q1_data(part: str, dset_id: int, n_train: int = 10_000, n_test: int = 2_500) -> tuple[np.ndarray, np.ndarray]:
    """The course's Q1 data: train (10000, 2) and test (2500, 2) float32, both from
    RandomState(0). part "a" is rotated, part "b" axis-aligned; dset_id 1 or 2."""
    if part not in ("a", "b") or dset_id not in (1, 2):
        raise UserError(f"q1 data: part must be 'a' or 'b' and dset_id 1 or 2, got {part!r}, {dset_id!r}")
    return datasets.gaussians(part, dset_id, n_train), datasets.gaussians(part, dset_id, n_test)


def image_data(name: str = "shapes", train_limit: int | None = None, test_limit: int | None = None,
               data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images of a dataset as uint8 arrays (N, 32, 32, 3), 0..255, channels last; a one-channel
    dataset is repeated to three channels. `shapes` is generated and always there; `svhn`,
    `cifar10` and `fashion-mnist` are read from disk (see `lvm list`)."""
    if name not in IMAGE_DATASETS:
        raise UserError(f"unknown image dataset '{name}'; choose one of: {', '.join(IMAGE_DATASETS)}")
    d = datasets.load(name, data_dir, train_limit, test_limit, download=False)
    train, test = d.train, d.test
    if d.info.channels == 1:
        train, test = train.expand(-1, 3, -1, -1), test.expand(-1, 3, -1, -1)
    return to_hwc(train), to_hwc(test)


q2_data = image_data  # Q2, Q3 and Q4a all take colour images
q3_data = image_data


def binary_data(name: str = "fashion-mnist-binary", train_limit: int | None = None, test_limit: int | None = None,
                data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Binary images as uint8 arrays (N, 32, 32, 1) of 0/1. `shapes-binary` (the shapes' grey
    level thresholded at 128) needs no files; the others are read from disk."""
    if name not in BINARY_DATASETS:
        raise UserError(f"unknown binary dataset '{name}'; choose one of: {', '.join(BINARY_DATASETS)}")
    if name == "shapes-binary":
        d = datasets.load("shapes", data_dir, train_limit, test_limit, download=False)
        grey = lambda x: (x.float().mean(1, keepdim=True) >= 128).to(torch.uint8)  # noqa: E731
        return to_hwc(grey(d.train)), to_hwc(grey(d.test))
    d = datasets.load(name, data_dir, train_limit, test_limit, download=False)
    return to_hwc(d.train), to_hwc(d.test)


def q4_data(part: str = "a", name: str | None = None, train_limit: int | None = None,
            test_limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Q4a: colour images (as `image_data`, default shapes); Q4b: binary images (as
    `binary_data`, default Fashion-MNIST, falling back to shapes-binary when it is not on disk)."""
    if part == "a":
        return image_data(name or "shapes", train_limit, test_limit)
    name = name or ("fashion-mnist-binary" if datasets.on_disk("fashion-mnist-binary") else "shapes-binary")
    return binary_data(name, train_limit, test_limit)


# ----------------------------------------------------------------------------- pictures


def visualize_q1_data(part: str, dset_id: int, out: str | Path = "results") -> Path:
    train, _ = q1_data(part, dset_id)
    path = save_scatter({"train": train}, Path(out) / f"q1_{part}_dset{dset_id}_data.png",
                        f"Q1({part}) dataset {dset_id}: training data")
    return show(path)[0]


def visualize_images(images: np.ndarray, title: str = "", out: str | Path = "results", name: str = "images.png") -> Path:
    """Up to 100 images (N, 32, 32, C) in [0, 255] as a grid."""
    images = np.asarray(images)[:100]
    if images.max() <= 1:  # binary 0/1 images
        images = images * 255.0
    return show(save_image_grid(to_chw(images), Path(out) / name, title))[0]


def _losses_plot(train: np.ndarray, test: np.ndarray, labels: tuple[str, ...], path: Path, title: str) -> Path:
    train = np.asarray(train, float).reshape(len(train), -1)
    test = np.asarray(test, float).reshape(len(test), -1)
    keys = [str(i) for i in range(test.shape[1])]
    return plot_training({k: train[:, i] for i, k in enumerate(keys)}, {k: test[:, i] for i, k in enumerate(keys)},
                         path, title, labels=dict(zip(keys, labels)))


# ----------------------------------------------------------------------------- running a solution


def save_results_q1(part: str, dset_id: int, fn: Callable, out: str | Path = "results") -> dict[str, float]:
    """Run `fn(train_data, test_data, part, dset_id)` on the Q1 data, print the final test
    numbers and write the training plot and both sample scatters."""
    out = Path(out)
    train, test = q1_data(part, dset_id)
    train_losses, test_losses, samples_noise, samples_nonoise = fn(train, test, part, dset_id)
    final = dict(zip(Q1_LABELS, np.asarray(test_losses)[-1]))
    print("Final " + ", ".join(f"{k}: {v:.4f}" for k, v in final.items()))
    stem = f"q1_{part}_dset{dset_id}"
    show(
        _losses_plot(train_losses, test_losses, Q1_LABELS, out / f"{stem}_train_plot.png", f"Q1({part}) dataset {dset_id}"),
        save_scatter({"samples": samples_noise}, out / f"{stem}_sample_with_noise.png",
                     f"Q1({part}) dataset {dset_id}: samples with decoder noise"),
        save_scatter({"samples": samples_nonoise}, out / f"{stem}_sample_without_noise.png",
                     f"Q1({part}) dataset {dset_id}: decoder means"),
    )
    return final


def save_results_q2(part: str, fn: Callable, name: str = "shapes", train_limit: int | None = None,
                    out: str | Path = "results") -> dict[str, float]:
    """Run `fn(train_data, test_data, dset_id)` (part "a" VAE, "b" VLAE) on `name`, print the
    final test numbers and write the training plot, samples, reconstructions, interpolations."""
    out = Path(out)
    train, test = image_data(name, train_limit)
    train_losses, test_losses, samples, reconstructions, interpolations = fn(train, test, IMAGE_DATASETS[name])
    final = dict(zip(Q1_LABELS, np.asarray(test_losses)[-1]))
    print("Final " + ", ".join(f"{k}: {v:.4f}" for k, v in final.items()))
    stem, title = f"q2_{part}_{name}", f"Q2({part}) {name}"
    show(
        _losses_plot(train_losses, test_losses, Q1_LABELS, out / f"{stem}_train_plot.png", title),
        save_image_grid(to_chw(samples), out / f"{stem}_samples.png", f"{title}: samples"),
        save_image_grid(to_chw(reconstructions), out / f"{stem}_reconstructions.png",
                        f"{title}: test images (left) and reconstructions"),
        save_image_grid(to_chw(interpolations), out / f"{stem}_interpolations.png", f"{title}: interpolations"),
    )
    return final


def save_results_vqvae(question: str, fn: Callable, name: str = "shapes", train_limit: int | None = None,
                       out: str | Path = "results") -> dict[str, float]:
    """Q3 and Q4a: run `fn(train_data, test_data, dset_id)`, print the VQ-VAE's and the prior's
    final test losses and write both training plots, samples and reconstructions."""
    out = Path(out)
    train, test = image_data(name, train_limit)
    vq_train, vq_test, prior_train, prior_test, samples, reconstructions = fn(train, test, IMAGE_DATASETS[name])
    final = {"VQ-VAE Test Loss": float(np.asarray(vq_test)[-1]), "Prior Test NLL": float(np.asarray(prior_test)[-1])}
    print("Final " + ", ".join(f"{k}: {v:.4f}" for k, v in final.items()))
    stem, title = f"{question}_{name}", f"{question.upper()} {name}"
    show(
        _losses_plot(vq_train, vq_test, ("VQ-VAE loss",), out / f"{stem}_vqvae_train_plot.png", f"{title}: VQ-VAE"),
        _losses_plot(prior_train, prior_test, ("NLL (nats per code)",), out / f"{stem}_prior_train_plot.png",
                     f"{title}: prior"),
        save_image_grid(to_chw(samples), out / f"{stem}_samples.png", f"{title}: samples"),
        save_image_grid(to_chw(reconstructions), out / f"{stem}_reconstructions.png",
                        f"{title}: test images (left) and reconstructions"),
    )
    return final


def save_results_q3(fn: Callable, name: str = "shapes", train_limit: int | None = None,
                    out: str | Path = "results") -> dict[str, float]:
    return save_results_vqvae("q3", fn, name, train_limit, out)


def save_results_q4a(fn: Callable, name: str = "shapes", train_limit: int | None = None,
                     out: str | Path = "results") -> dict[str, float]:
    return save_results_vqvae("q4a", fn, name, train_limit, out)


def save_results_q4b(fn: Callable, name: str | None = None, train_limit: int | None = None,
                     out: str | Path = "results") -> dict[str, float]:
    """Run `fn(train_data, test_data)` on binary images, print the final test NLL and write the
    training plot and the samples."""
    out = Path(out)
    train, test = q4_data("b", name, train_limit)
    train_losses, test_losses, samples = fn(train, test)
    final = {"Test NLL (nats/dim)": float(np.asarray(test_losses)[-1])}
    print("Final " + ", ".join(f"{k}: {v:.4f}" for k, v in final.items()))
    show(
        _losses_plot(train_losses, test_losses, ("NLL (nats/dim)",), out / "q4b_train_plot.png", "Q4(b) gated PixelCNN"),
        save_image_grid(to_chw(np.asarray(samples, np.float32) * 255.0), out / "q4b_samples.png", "Q4(b): samples"),
    )
    return final
