"""The course's helper module for the latent-variable homework (CS294-158, spring 2020: the course
imports it as `from deepul.hw3_helper import *`), under the course's names and signatures, so
that a student's course notebook runs after changing its one import line to
`from lvm.homework import *`. Written anew on this repository's data and plotting code.

The course's contracts, which every `*_save_results` keeps:
- Q1: `fn(train, test, part, dset_id)` gets float32 (10000, 2) and (2500, 2) points and returns
  train losses (N, 3), test losses (E + 1, 3) as [-ELBO, recon, KL], and 1000 samples with and
  1000 without decoder noise, each (1000, 2).
- Q2 (part "a" VAE, "b" VLAE): `fn(train, test, dset_id)` gets uint8 (N, 32, 32, 3) 0..255 and
  returns train (N, 3) and test (E + 1, 3) losses, then samples, reconstructions (50 test images,
  each followed by its reconstruction) and interpolations, each (100, 32, 32, 3) in [0, 255].
- Q3 and Q4a: `fn(train, test, dset_id)` returns VQ-VAE train (N,) and test (E + 1,) losses,
  prior train (M,) and test (F + 1,) losses, samples and reconstructions (100, 32, 32, 3).
- Q4b (PixelVAE): `fn(train, test)` gets binarised MNIST, uint8 (N, 28, 28, 1) of 0/1, and
  returns train (N, 3) and test (E + 1, 3) losses as [-ELBO, recon, KL], samples and
  reconstructions (50 pairs), each (100, 28, 28, 1) of 0/1.

Data: dataset ids are the course's (1 = SVHN, 2 = CIFAR-10), read from the course's pickles
`svhn.pkl`, `cifar10.pkl` and `mnist.pkl` (dicts of uint8 arrays "train" and "test",
N x 32 x 32 x 3, MNIST N x 28 x 28 x 1) in the data folder, `$LVM_DATA_DIR` or else
`~/.cache/lvm` (torchvision's own files of those datasets are read there too). Where they are
missing, `use_standin()` (or `LVM_STANDIN=1` in the environment) puts an offline dataset in
their place: the generated colour `shapes` for SVHN and CIFAR-10, binarised Fashion-MNIST
(`apt-get install dataset-fashion-mnist`) for MNIST.

Project-only additions, kept because they add something: `use_standin`; `grading()` (True while
`lvm grade` calls your function); keyword-only `train_limit`/`test_limit` on each
`*_save_results`, to try a solution on a slice first. Figures go to `results/` as in the course
and are shown inline in a notebook.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lvm.engine import data as datasets
from lvm.engine import stores
from lvm.engine.errors import UserError
from lvm.engine.plotting import plot_training, save_image_grid, save_scatter

__all__ = [
    # the course's names (deepul.hw3_helper and the deepul.utils it re-exports)
    "q1_sample_data", "visualize_q1_data", "q1_save_results",
    "visualize_svhn", "visualize_cifar10", "visualize_colored_shapes",
    "q2_save_results", "q3_save_results", "q4_a_save_results", "q4_b_save_results",
    "plot_vae_training_plot", "save_training_plot", "save_scatter_2d", "show_samples",
    "load_pickled_data", "get_data_dir",
    "np", "torch",  # the course's star import brought these too; course notebooks lean on them
    # this project's
    "use_standin", "grading",
]

COURSE_IMAGES = {1: "svhn", 2: "cifar10"}  # the course's dset_id of Q2, Q3 and Q4a
COURSE_FILES = {"svhn": "svhn.pkl", "cifar10": "cifar10.pkl", "mnist": "mnist.pkl"}
DEFAULT_STANDINS = {"colour": "shapes", "binary": "fashion-mnist-binary"}
BINARY_STANDINS = ("fashion-mnist-binary", "shapes-binary")
ELBO_LABELS = ("-ELBO", "Recon Loss", "KL Loss")
RESULTS = Path("results")  # the course writes its figures here, relative to the notebook

_GRADING = False  # set by `lvm grade` (in the process that runs your function)
_standins: dict[str, str | None] | None = None  # set by use_standin(); None: read $LVM_STANDIN


def grading() -> bool:
    """True while `lvm grade` runs your function on its small slice of data. A solution may use
    it to shorten its training there, e.g. `epochs = 2 if grading() else 20`."""
    return _GRADING


# ----------------------------------------------------------------------------- stand-ins


def use_standin(colour: str | None = "shapes", binary: str | None = "fashion-mnist-binary") -> None:
    """From now on, a course dataset missing from the data folder is replaced by `colour` (for
    SVHN and CIFAR-10: any colour dataset of `lvm list`, e.g. `shapes`, generated, or
    `fashion-mnist`, its one channel repeated to three) or `binary` (for binarised MNIST:
    `fashion-mnist-binary`, or `shapes-binary`, generated; cropped to 28 x 28). None turns a
    stand-in off. The environment variable does the same without touching the notebook:
    `LVM_STANDIN=1` (the defaults) or `LVM_STANDIN=shapes,shapes-binary`."""
    global _standins
    _standins = {"colour": _standin_name(colour, "colour"), "binary": _standin_name(binary, "binary")}


def _standin_name(name: str | None, kind: str) -> str | None:
    if name is None:
        return None
    colour = [n for n in datasets.names() if n not in COURSE_FILES and datasets.source(n).kind == "image"]
    choices = BINARY_STANDINS if kind == "binary" else colour
    if name not in choices:
        raise UserError(f"no {kind} stand-in '{name}'; choose one of: {', '.join(choices)}")
    return name


def _current_standins() -> dict[str, str | None]:
    if _standins is not None:
        return _standins
    value = os.environ.get("LVM_STANDIN", "").strip()
    if value.lower() in ("", "0", "no", "false", "off"):
        return {"colour": None, "binary": None}
    if value.lower() in ("1", "yes", "true", "on"):
        return dict(DEFAULT_STANDINS)
    chosen = dict(DEFAULT_STANDINS)
    for name in filter(None, (v.strip() for v in value.split(","))):
        chosen["binary" if name in BINARY_STANDINS else "colour"] = name
    return {kind: _standin_name(name, kind) for kind, name in chosen.items()}


# ----------------------------------------------------------------------------- layouts


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 tensor -> (N, H, W, C) uint8 array: the course's layout."""
    return images.permute(0, 2, 3, 1).contiguous().numpy()


def from_hwc(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) uint8 array -> (N, C, H, W) uint8 tensor: lvm's layout (models take it)."""
    return torch.as_tensor(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()


def to_chw(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, C) values in [0, 255] -> (N, C, H, W) float in [0, 1], for lvm.engine.plotting."""
    return torch.as_tensor(np.asarray(images, np.float32) / 255.0).permute(0, 3, 1, 2)


def _crop28(x: torch.Tensor) -> torch.Tensor:
    """(N, C, 32, 32) -> (N, C, 28, 28): the course's MNIST size (lvm pads 28 x 28 data to 32)."""
    return x[..., 2:30, 2:30] if x.shape[-1] == 32 else x


# ----------------------------------------------------------------------------- data


def q1_sample_data(part: str, dset_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The course's Q1 data, bit for bit: train (10000, 2) and test (2500, 2) float32, each drawn
    from RandomState(0) (so the test set is the first 2500 training points); part "a" rotated by
    45 degrees, part "b" axis-aligned; dset_id 1 or 2."""
    if part not in ("a", "b") or dset_id not in (1, 2):
        raise UserError(f"q1: part must be 'a' or 'b' and dset_id 1 or 2, got {part!r}, {dset_id!r}")
    return datasets.gaussians(part, dset_id, 10_000), datasets.gaussians(part, dset_id, 2_500)


def binary_data(name: str = "fashion-mnist-binary", train_limit: int | None = None, test_limit: int | None = None,
                data_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Binary images as uint8 (N, 32, 32, 1) of 0/1, lvm's size. `shapes-binary` (the shapes'
    grey level thresholded at 128) needs no files. Not the course's: notebooks/05 uses it."""
    if not name.endswith("-binary"):
        raise UserError(f"'{name}' is not a binary dataset; choose one of: {', '.join(BINARY_STANDINS)}")
    if name == "shapes-binary":
        d = datasets.load("shapes", data_dir, train_limit, test_limit, download=False)
        grey = lambda x: (x.float().mean(1, keepdim=True) >= 128).to(torch.uint8)  # noqa: E731
        return to_hwc(grey(d.train)), to_hwc(grey(d.test))
    d = datasets.load(name, data_dir, train_limit, test_limit, download=False)
    return to_hwc(d.train), to_hwc(d.test)


def dataset_hwc(name: str, train_limit: int | None, test_limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """A dataset of lvm.engine.data in the course's layout: colour (N, 32, 32, 3) 0..255, one
    channel repeated to three; binary (N, 28, 28, 1) of 0/1."""
    if name == "shapes-binary":
        train, test = (from_hwc(a) for a in binary_data(name, train_limit, test_limit))
    else:
        d = datasets.load(name, None, train_limit, test_limit, download=False)
        train, test = d.train, d.test
        if d.info.kind == "image" and d.info.channels == 1:
            train, test = train.expand(-1, 3, -1, -1), test.expand(-1, 3, -1, -1)
    if name.endswith("-binary"):
        train, test = _crop28(train), _crop28(test)
    return to_hwc(train), to_hwc(test)


def course_data(name: str, train_limit: int | None = None, test_limit: int | None = None,
                quiet: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The course's dataset `name` ("svhn", "cifar10" or "mnist", the last binarised at > 127.5
    as the course does) from the data folder, or its stand-in when it is missing and one was
    asked for (`use_standin`); else one UserError line saying where the file goes."""
    binary = name == "mnist"
    try:
        return dataset_hwc("mnist-binary" if binary else name, train_limit, test_limit)
    except UserError as e:
        if "not found" not in str(e):  # there, but unreadable: say so, never substitute
            raise
    standin = _current_standins()["binary" if binary else "colour"]
    folder = stores.default_data_dir()
    if standin is None:
        raise UserError(
            f"{COURSE_FILES[name]} not found in {folder}: put the course's {COURSE_FILES[name]} there (or point "
            f"$LVM_DATA_DIR at its folder), or work offline on a stand-in ("
            f"{'binarised Fashion-MNIST' if binary else 'the generated shapes'}): call use_standin() in the "
            "notebook, or set LVM_STANDIN=1 in the environment (LVM_STANDIN=shapes,shapes-binary needs no files)")
    if not quiet:
        print(f"note: {COURSE_FILES[name]} is not in {folder}; using the stand-in '{standin}'", file=sys.stderr)
    try:
        return dataset_hwc(standin, train_limit, test_limit)
    except UserError as e:
        if "not found" not in str(e):
            raise
        raise UserError(f"{COURSE_FILES[name]} is not in {folder}, and its stand-in '{standin}' is not installed "
                        f"either; what works offline is generated: LVM_STANDIN=shapes,shapes-binary (or "
                        f"use_standin('shapes', 'shapes-binary'))") from None


def load_pickled_data(fname: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A course pickle (a dict of uint8 arrays "train" and "test", N x H x W x C): MNIST (a file
    named mnist.pkl) binarised at > 127.5 as the course does. A missing svhn.pkl, cifar10.pkl or
    mnist.pkl falls back to its stand-in when one was asked for (`use_standin`)."""
    path = Path(fname)
    name = {v: k for k, v in COURSE_FILES.items()}.get(path.name)
    if not path.is_file():
        if name is None:
            raise UserError(f"no such file: {path}")
        return course_data(name)
    train, test = stores.read_course_pickle(path)  # the one reader of the course's pickles
    if path.name == "mnist.pkl":
        train, test = (train > 127.5).astype(np.uint8), (test > 127.5).astype(np.uint8)
    return train, test


def get_data_dir(hw_number: int = 3) -> str:  # noqa: ARG001 - the course's signature
    """The data folder: `$LVM_DATA_DIR`, else ~/.cache/lvm (the course used a folder inside its
    repository)."""
    return str(stores.default_data_dir())


def _image_data(dset_id: int, train_limit: int | None, test_limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    if dset_id not in COURSE_IMAGES:
        raise UserError(f"dset_id must be 1 (SVHN) or 2 (CIFAR-10), got {dset_id!r}")
    return course_data(COURSE_IMAGES[dset_id], train_limit, test_limit)


# ----------------------------------------------------------------------------- pictures


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


def plot_vae_training_plot(train_losses, test_losses, title: str, fname: str | Path) -> Path:
    """The course's VAE plot: -ELBO, reconstruction and KL, per training minibatch and per test
    evaluation, on an epoch axis."""
    train = np.asarray(train_losses, float).reshape(len(train_losses), -1)  # (N, 3)
    test = np.asarray(test_losses, float).reshape(len(test_losses), -1)  # (E + 1, 3)
    keys = [str(i) for i in range(test.shape[1])]
    return show(plot_training({k: train[:, i] for i, k in enumerate(keys)}, {k: test[:, i] for i, k in enumerate(keys)},
                              fname, title, labels=dict(zip(keys, ELBO_LABELS))))[0]


def save_training_plot(train_losses, test_losses, title: str, fname: str | Path) -> Path:
    """The course's plot of one loss: per training minibatch and per test evaluation."""
    return show(plot_training({"loss": np.asarray(train_losses, float).ravel()},
                              {"loss": np.asarray(test_losses, float).ravel()}, fname, title, {"loss": "NLL"}))[0]


def save_scatter_2d(data, title: str, fname: str | Path) -> Path:
    return show(save_scatter({"samples": np.asarray(data)}, fname, title))[0]


def show_samples(samples, fname: str | Path | None = None, nrow: int = 10, title: str = "Samples") -> Path:
    """Images (N, H, W, C) with values in [0, 255] as a grid, `nrow` to a row. Without `fname`
    the grid goes to results/samples.png (the course only showed it)."""
    path = Path(fname) if fname is not None else RESULTS / "samples.png"
    return show(save_image_grid(to_chw(samples), path, title, nrow=nrow))[0]


def visualize_q1_data(part: str, dset_id: int) -> Path:
    train, test = q1_sample_data(part, dset_id)
    print(f"Dataset {dset_id}")
    return show(save_scatter({"train": train, "test": test}, RESULTS / f"q1_{part}_dset{dset_id}_data.png",
                             f"Q1({part}) dataset {dset_id}"))[0]


def _visualize(name: str, title: str) -> Path:
    train, _ = course_data(name)
    pick = np.random.default_rng(0).choice(len(train), size=min(100, len(train)), replace=False)
    return show_samples(train[pick], RESULTS / f"{name}_data.png", title=title)


def visualize_svhn() -> Path:
    return _visualize("svhn", "SVHN Samples")


def visualize_cifar10() -> Path:
    return _visualize("cifar10", "CIFAR10 Samples")


def visualize_colored_shapes() -> Path:
    """The course read shapes_colored.pkl; this shows lvm's generated colour `shapes`."""
    train, _ = dataset_hwc("shapes", None, None)
    pick = np.random.default_rng(0).choice(len(train), size=100, replace=False)
    return show_samples(train[pick], RESULTS / "shapes_data.png", title="Colored Shapes Samples")


# ----------------------------------------------------------------------------- running a solution


def _final_elbo(test_losses) -> dict[str, float]:
    final = dict(zip(ELBO_LABELS, (float(v) for v in np.asarray(test_losses)[-1])))
    print("Final " + ", ".join(f"{k}: {v:.4f}" for k, v in final.items()))
    return final


def q1_save_results(part: str, dset_id: int, fn: Callable) -> dict[str, float]:
    """Run `fn(train_data, test_data, part, dset_id)` on the Q1 data, print the final test
    numbers the course's way and write the training plot and both sample scatters."""
    train, test = q1_sample_data(part, dset_id)
    train_losses, test_losses, samples_noise, samples_nonoise = fn(train, test, part, dset_id)
    final = _final_elbo(test_losses)
    stem = RESULTS / f"q1_{part}_dset{dset_id}"
    plot_vae_training_plot(train_losses, test_losses, f"Q1({part}) Dataset {dset_id} Train Plot", f"{stem}_train_plot.png")
    save_scatter_2d(samples_noise, "Samples with Decoder Noise", f"{stem}_sample_with_noise.png")
    save_scatter_2d(samples_nonoise, "Samples without Decoder Noise", f"{stem}_sample_without_noise.png")
    return final


def q2_save_results(part: str, dset_id: int, fn: Callable, *, train_limit: int | None = None,
                    test_limit: int | None = None) -> dict[str, float]:
    """Run `fn(train_data, test_data, dset_id)` (part "a" VAE, "b" VLAE; dset_id 1 SVHN, 2
    CIFAR-10), print the final test numbers and write the training plot, samples,
    reconstructions and interpolations."""
    if part not in ("a", "b"):
        raise UserError(f"q2: part must be 'a' or 'b', got {part!r}")
    train, test = _image_data(dset_id, train_limit, test_limit)
    train_losses, test_losses, samples, reconstructions, interpolations = fn(train, test, dset_id)
    final = _final_elbo(test_losses)
    stem, title = RESULTS / f"q2_{part}_dset{dset_id}", f"Q2({part}) Dataset {dset_id}"
    plot_vae_training_plot(train_losses, test_losses, f"{title} Train Plot", f"{stem}_train_plot.png")
    show_samples(samples, f"{stem}_samples.png", title=f"{title} Samples")
    show_samples(reconstructions, f"{stem}_reconstructions.png", title=f"{title} Reconstructions")
    show_samples(interpolations, f"{stem}_interpolations.png", title=f"{title} Interpolations")
    return final


def _vqvae_save_results(question: str, label: str, dset_id: int, fn: Callable, train_limit: int | None,
                        test_limit: int | None) -> dict[str, float]:
    train, test = _image_data(dset_id, train_limit, test_limit)
    vq_train, vq_test, prior_train, prior_test, samples, reconstructions = fn(train, test, dset_id)
    final = {"VQ-VAE": float(np.asarray(vq_test).ravel()[-1]), "PixelCNN Prior": float(np.asarray(prior_test).ravel()[-1])}
    print(f"VQ-VAE Final Test Loss: {final['VQ-VAE']:.4f}")
    print(f"PixelCNN Prior Final Test Loss: {final['PixelCNN Prior']:.4f}")
    stem, title = RESULTS / f"{question}_dset{dset_id}", f"{label} Dataset {dset_id}"
    save_training_plot(vq_train, vq_test, f"{title} VQ-VAE Train Plot", f"{stem}_vqvae_train_plot.png")
    save_training_plot(prior_train, prior_test, f"{title} PixelCNN Prior Train Plot", f"{stem}_pixelcnn_train_plot.png")
    show_samples(samples, f"{stem}_samples.png", title=f"{title} Samples")
    show_samples(reconstructions, f"{stem}_reconstructions.png", title=f"{title} Reconstructions")
    return final


def q3_save_results(dset_id: int, fn: Callable, *, train_limit: int | None = None,
                    test_limit: int | None = None) -> dict[str, float]:
    """Run `fn(train_data, test_data, dset_id)` (a VQ-VAE and its PixelCNN prior), print both
    final test losses and write both training plots, samples and reconstructions."""
    return _vqvae_save_results("q3", "Q3", dset_id, fn, train_limit, test_limit)


def q4_a_save_results(dset_id: int, fn: Callable, *, train_limit: int | None = None,
                      test_limit: int | None = None) -> dict[str, float]:
    """As `q3_save_results`, for the VQ-VAE with a Gated PixelCNN prior."""
    return _vqvae_save_results("q4_a", "Q4(a)", dset_id, fn, train_limit, test_limit)


def q4_b_save_results(fn: Callable, *, train_limit: int | None = None,
                      test_limit: int | None = None) -> dict[str, float]:
    """Run `fn(train_data, test_data)` (a PixelVAE) on binarised MNIST (N, 28, 28, 1) of 0/1,
    print the final test numbers and write the training plot, samples and reconstructions."""
    train, test = course_data("mnist", train_limit, test_limit)
    train_losses, test_losses, samples, reconstructions = fn(train, test)
    final = _final_elbo(test_losses)
    plot_vae_training_plot(train_losses, test_losses, "Q4(b) Train Plot", RESULTS / "q4_b_train_plot.png")
    show_samples(np.asarray(samples, np.float32) * 255, RESULTS / "q4_b_samples.png", title="Q4(b) Samples")
    show_samples(np.asarray(reconstructions, np.float32) * 255, RESULTS / "q4_b_reconstructions.png",
                 title="Q4(b) Reconstructions")
    return final
