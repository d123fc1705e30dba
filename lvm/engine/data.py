"""Datasets: one table of them (DATASETS), every dataset held in memory as a tensor and batched by index.

Images are uint8 tensors of shape (N, C, 32, 32), values 0..255 (28 x 28 ones zero-padded); the
binarised variants are 0/1 at their own size (the course's 28 x 28); the course's 2-D Gaussians
are float32 tensors of shape (N, 2). Models scale their
inputs themselves (`lvm.blocks.scaling.to_unit`), so the trainer never needs to know which kind it holds.

The datasets made here (the course's Gaussians, the shapes) need no files; the others are read
from the data dir by the stores of `lvm.engine.stores` (torchvision's layouts, the course's
pickles, downloads).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from lvm.engine.errors import UserError
from lvm.engine.stores import CifarBatches, CoursePickle, Generated, IdxFiles, Store, SvhnMat, data_root

if TYPE_CHECKING:
    import torch

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data to build itself."""

    name: str
    kind: str  # "points" (float 2-D), "image" (uint8 0..255) or "binary" (uint8 0/1)
    shape: tuple[int, ...]  # one example: (2,) or (C, H, W)

    @property
    def channels(self) -> int:
        return self.shape[0]


@dataclass
class Data:
    info: DataInfo
    train: torch.Tensor
    test: torch.Tensor


# ----------------------------------------------------------------------------- the course's Q1


def gaussians(part: str, dset_id: int, count: int) -> np.ndarray:
    """The course's 2-D Gaussian generators; every call draws from `RandomState(0)`."""
    rand = np.random.RandomState(0)
    if dset_id == 1:
        shift, scale = np.array([[1.0, 2.0]]), np.array([[5.0, 1.0]])
    else:
        shift, scale = np.array([[-1.0, 2.0]]), np.array([[1.0, 5.0]])
    x = rand.randn(count, 2) * scale
    if part == "a":
        s = np.sqrt(2) / 2
        x = x.dot(np.array([[s, s], [-s, s]]))
    return (shift + x).astype(np.float32)


def _gaussians(part: str, dset_id: int) -> Callable[[Path], tuple[np.ndarray, np.ndarray]]:
    return lambda data_dir: (gaussians(part, dset_id, 10_000), gaussians(part, dset_id, 2_500))


# ----------------------------------------------------------------------------- shapes (built in)

SHAPES_TRAIN, SHAPES_TEST = 20_000, 4_000


def make_shapes(count: int, seed: int, labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """`count` 32x32 RGB images (N, 32, 32, 3) uint8: one or two coloured circles, squares or
    triangles on a plain background, every parameter drawn from `seed`. With `labels`, also
    what the generator knows of each image as a class (N,) in 0..5: the first shape's kind
    (0 circle, 1 square, 2 triangle), plus 3 when a second shape is drawn (the images are the same)."""
    rng = np.random.default_rng(seed)
    size = 32
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # (32, 32) pixel centres
    background = rng.uniform(0, 90, (count, 1, 1, 3))
    images = np.broadcast_to(background, (count, size, size, 3)).copy()
    classes = np.zeros(count, np.int64)
    for layer in range(2):
        present = np.ones(count, bool) if layer == 0 else rng.random(count) < 0.5
        kind = rng.integers(0, 3, count)  # 0 circle, 1 square, 2 triangle
        radius = rng.uniform(5, 11, count)
        cx = rng.uniform(radius, size - radius)
        cy = rng.uniform(radius, size - radius)
        colour = rng.uniform(110, 255, (count, 3))
        r, x0, y0 = radius[:, None, None], cx[:, None, None], cy[:, None, None]
        dx, dy = xx[None] - x0, yy[None] - y0  # (N, 32, 32)
        circle = dx**2 + dy**2 <= r**2
        square = (np.abs(dx) <= r * 0.8) & (np.abs(dy) <= r * 0.8)
        # upward triangle: below the top vertex's two edges and above the base
        triangle = (dy <= r * 0.7) & (2 * np.abs(dx) <= (dy + r))
        mask = np.choose(kind[:, None, None], [circle, square, triangle]) & present[:, None, None]
        images[mask] = np.repeat(colour, mask.reshape(count, -1).sum(1), axis=0)
        classes += kind if layer == 0 else 3 * present
    images = images.round().astype(np.uint8)
    return (images, classes) if labels else images


def _shapes(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The shapes, cached in the data dir. A cache that does not hold exactly the arrays expected
    (truncated, foreign, an older layout) is drawn again and rewritten."""
    cache = data_dir / "shapes" / "shapes-v1.npz"
    try:
        with np.load(cache, allow_pickle=False) as f:
            train, test = f["train"], f["test"]
        if (train.dtype == test.dtype == np.uint8 and train.shape == (SHAPES_TRAIN, 32, 32, 3)
                and test.shape == (SHAPES_TEST, 32, 32, 3)):
            return train, test
    except Exception:  # missing (OSError), truncated (BadZipFile), foreign (KeyError, ValueError)
        pass
    train, test = make_shapes(SHAPES_TRAIN, seed=0), make_shapes(SHAPES_TEST, seed=1)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # a name of its own per writer: several runs may start at once and each renames its
        # complete file into place, so a reader never sees half a cache
        fd, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".shapes-v1.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, train=train, test=test)
            os.replace(tmp, cache)
        finally:
            Path(tmp).unlink(missing_ok=True)
    except OSError:
        pass  # an unwritable data dir only costs drawing them again next time
    return train, test


# ----------------------------------------------------------------------------- the table of datasets


@dataclass(frozen=True)
class Source:
    summary: str
    kind: str
    store: Store
    binarise: bool = False

    @property
    def builtin(self) -> bool:
        """Generated here: needs no files."""
        return isinstance(self.store, Generated)


_fashion = IdxFiles("fashion-mnist", "FashionMNIST",
                    "https://github.com/zalandoresearch/fashion-mnist, or `apt-get install dataset-fashion-mnist`",
                    (DEBIAN_FASHION_MNIST,))
_mnist = CoursePickle(IdxFiles("mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"))

DATASETS: dict[str, Source] = {
    "gaussians-a1": Source("course Q1 part a, dataset 1 (rotated)", "points", Generated(_gaussians("a", 1))),
    "gaussians-a2": Source("course Q1 part a, dataset 2 (rotated)", "points", Generated(_gaussians("a", 2))),
    "gaussians-b1": Source("course Q1 part b, dataset 1 (axis-aligned)", "points", Generated(_gaussians("b", 1))),
    "gaussians-b2": Source("course Q1 part b, dataset 2 (axis-aligned)", "points", Generated(_gaussians("b", 2))),
    "shapes": Source("coloured shapes, 3x32x32, generated (20k/4k)", "image", Generated(_shapes)),
    "mnist": Source("MNIST, 1x32x32 (padded)", "image", _mnist),
    "mnist-binary": Source("MNIST binarised at 128, 1x28x28", "binary", _mnist, binarise=True),
    "fashion-mnist": Source("Fashion-MNIST, 1x32x32 (padded)", "image", _fashion),
    "fashion-mnist-binary": Source("Fashion-MNIST binarised at 128, 1x28x28", "binary", _fashion, binarise=True),
    "cifar10": Source("CIFAR-10, 3x32x32", "image", CoursePickle(CifarBatches())),
    "svhn": Source("SVHN, 3x32x32", "image", CoursePickle(SvhnMat())),
}


def names() -> list[str]:
    return list(DATASETS)


def source(name: str) -> Source:
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def on_disk(name: str, data_dir: str | Path | None = None) -> bool:
    """Whether the files `load(name)` reads are there, judged from their names and sizes: this
    opens no file (a pickle runs code), so a corrupt file still counts as on disk."""
    return source(name).store.found(data_root(data_dir))


def _to_tensor(images: np.ndarray, binarise: bool) -> torch.Tensor:
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, C, H, W)
    if binarise:  # binary images keep their own size: the course's are 28 x 28, as its PixelCNNs model them
        return (x >= 128).to(torch.uint8).contiguous()  # the course's threshold: > 127.5
    if x.shape[-1] == 28:  # MNIST-like 0..255 images: zero-pad to the 32x32 the image models expect
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    return x.contiguous()


def load(
    name: str,
    data_dir: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    download: bool = True,
) -> Data:
    """Load a dataset by name; raises `UserError` (one readable line) when it cannot."""
    src = source(name)
    for flag, value in (("{train_limit}", train_limit), ("{test_limit}", test_limit)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    root = data_root(data_dir)
    if data_dir and not root.is_dir() and not src.builtin:
        raise UserError(f"{{data_dir}} {root} is not a folder")
    train, test = src.store.read(root, download)
    if src.kind == "points":
        import torch

        tr, te = torch.from_numpy(train), torch.from_numpy(test)
    else:
        tr, te = _to_tensor(train, src.binarise), _to_tensor(test, src.binarise)
    tr, te = tr[:train_limit], te[:test_limit]
    return Data(DataInfo(name, src.kind, tuple(tr.shape[1:])), tr, te)
