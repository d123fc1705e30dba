"""Datasets: one registry, every dataset held in memory as a tensor and batched by index.

Images are uint8 tensors of shape (N, C, 32, 32) (values 0..255, or 0..1 for the binarised
variants); the course's 2-D Gaussians are float32 tensors of shape (N, 2). Models scale their
inputs themselves (`to_unit`), so the trainer never needs to know which kind it holds.

Files are read in torchvision's own on-disk layout under the data dir (`--data-dir`, else
`$LVM_DATA_DIR`, else `~/.cache/lvm`), so a folder torchvision filled works as it is; when the
files are missing, torchvision's downloader fills that folder where the network allows.
"""

from __future__ import annotations

import gzip
import os
import pickle
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from lvm.engine.errors import UserError

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


def default_data_dir() -> Path:
    return Path(os.environ.get("LVM_DATA_DIR") or Path.home() / ".cache" / "lvm").expanduser()


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 images 0..255 -> float in [-1, 1], the course's scaling."""
    return x.float() * (2.0 / 255.0) - 1.0


def from_unit(x: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> float in [0, 1], for plotting."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


def picture(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Images to draw, as (N, C, H, W) floats in [0, 1]: data as stored (uint8 0..255, or 0/1
    for binary images) or a model's output (floats in [-1, 1], or 0/1 tokens (N, H, W))."""
    x = x.detach().cpu()
    if kind == "binary":
        x = x.float()
        return x[:, None] if x.dim() == 3 else x
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    return from_unit(x.float())


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


def _load_gaussians(part: str, dset_id: int) -> Callable[[Path, bool], tuple[np.ndarray, np.ndarray]]:
    def load(data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        return gaussians(part, dset_id, 10_000), gaussians(part, dset_id, 2_500)

    return load


# ----------------------------------------------------------------------------- shapes (built in)

SHAPES_TRAIN, SHAPES_TEST = 20_000, 4_000


def make_shapes(count: int, seed: int) -> np.ndarray:
    """`count` 32x32 RGB images (N, 32, 32, 3) uint8: one or two coloured circles, squares or
    triangles on a plain background, every parameter drawn from `seed`."""
    rng = np.random.default_rng(seed)
    size = 32
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5  # (32, 32) pixel centres
    background = rng.uniform(0, 90, (count, 1, 1, 3))
    images = np.broadcast_to(background, (count, size, size, 3)).copy()
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
    return images.round().astype(np.uint8)


def _load_shapes(data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    cache = data_dir / "shapes" / "shapes-v1.npz"
    if cache.exists():
        try:
            with np.load(cache) as f:
                return f["train"], f["test"]
        except (OSError, ValueError, KeyError):
            pass  # a broken cache is regenerated below
    train, test = make_shapes(SHAPES_TRAIN, seed=0), make_shapes(SHAPES_TEST, seed=1)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, train=train, test=test)
        tmp.replace(cache)
    except OSError:
        pass  # an unwritable data dir only costs regenerating next time
    return train, test


# ----------------------------------------------------------------------------- file formats


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), plain or gzipped, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
        zero, dtype, ndim = struct.unpack(">HBB", raw[:4])
        if zero != 0 or dtype != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        body = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(dims)):
            raise ValueError(f"{body.size} bytes of data for shape {dims}")
        return body.reshape(dims).copy()  # frombuffer is read-only
    except (OSError, EOFError, struct.error, ValueError) as e:
        raise UserError(f"cannot read {path}: truncated or corrupt IDX file ({e})") from None


def _find(folders: list[Path], name: str) -> Path | None:
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.exists():
                return candidate
    return None


def _missing(name: str, folders: list[Path], files: list[str], how: str) -> UserError:
    where = " or ".join(str(f) for f in folders)
    return UserError(
        f"dataset '{name}' not found: looked in {where} for {', '.join(files)}; {how}"
    )


def _try_download(make: Callable[[], object]) -> None:
    """Run a torchvision downloader, giving up quickly when there is no network."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(15)
    try:
        make()
    except Exception:  # no network, a proxy page, a checksum mismatch: report as missing
        pass
    finally:
        socket.setdefaulttimeout(old)


def _mnist_family(folder: str, extra: list[Path]):
    files = ["train-images-idx3-ubyte", "t10k-images-idx3-ubyte"]

    def load(data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        folders = [data_dir / folder / "raw", *extra]
        if download and any(_find(folders, f) is None for f in files):
            import torchvision

            cls = getattr(torchvision.datasets, folder)
            _try_download(lambda: cls(str(data_dir), train=True, download=True))
            _try_download(lambda: cls(str(data_dir), train=False, download=True))
        paths = [_find(folders, f) for f in files]
        if None in paths:
            how = (
                f"put torchvision's {folder} files (optionally .gz) in {folders[0]}"
                + (", or `apt-get install dataset-fashion-mnist`" if extra else "")
                + ", or run once with network access"
            )
            raise _missing(folder, folders, files, how)
        train, test = (read_idx(p) for p in paths)
        for p, a in zip(paths, (train, test)):
            if a.ndim != 3 or a.shape[1:] != (28, 28):
                raise UserError(f"{p}: expected images of 28x28, found shape {a.shape}")
        return train[..., None], test[..., None]  # (N, 28, 28, 1)

    return load


def _cifar10(data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    folder = data_dir / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    if download and not all((folder / n).exists() for n in names):
        import torchvision

        _try_download(lambda: torchvision.datasets.CIFAR10(str(data_dir), download=True))
    if not all((folder / n).exists() for n in names):
        raise _missing(
            "cifar10", [folder], names, "extract torchvision's cifar-10-python.tar.gz there"
        )

    def batch(name: str) -> np.ndarray:
        path = folder / name
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            return np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        except Exception as e:  # unpickling errors are of many types
            raise UserError(f"cannot read {path}: not a CIFAR-10 batch ({e})") from None

    train = np.concatenate([batch(n) for n in names[:5]])
    return train, batch(names[5])


def _svhn(data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
    names = ["train_32x32.mat", "test_32x32.mat"]
    folders = [data_dir, data_dir / "svhn"]
    if download and any(_find(folders, n) is None for n in names):
        import torchvision

        for split in ("train", "test"):
            _try_download(lambda: torchvision.datasets.SVHN(str(data_dir), split=split, download=True))
    paths = [_find(folders, n) for n in names]
    if None in paths:
        raise _missing("svhn", folders[:1], names, "download them from the SVHN site (format 2)")

    def read(path: Path) -> np.ndarray:
        import scipy.io

        try:
            x = scipy.io.loadmat(str(path))["X"]  # (32, 32, 3, N)
        except Exception as e:  # scipy raises several types for a bad .mat
            raise UserError(f"cannot read {path}: not an SVHN .mat file ({e})") from None
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3):
            raise UserError(f"{path}: expected X of shape 32x32x3xN, found {x.shape}")
        return np.ascontiguousarray(x.transpose(3, 0, 1, 2))

    return read(paths[0]), read(paths[1])


def _course_pickle(name: str, fallback: Callable[[Path, bool], tuple[np.ndarray, np.ndarray]]):
    """Prefer the course's own bundle (`<name>.pkl`: dict of N x H x W x C uint8) when present."""

    def load(data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        path = data_dir / f"{name}.pkl"
        if not path.exists():
            return fallback(data_dir, download)
        try:
            with open(path, "rb") as f:
                bundle = pickle.load(f)
            train, test = np.asarray(bundle["train"]), np.asarray(bundle["test"])
        except Exception as e:  # a truncated or foreign pickle
            raise UserError(f"cannot read {path}: not the course's pickle ({e})") from None
        for a in (train, test):
            if a.ndim != 4 or a.shape[1] not in (28, 32) or a.shape[3] not in (1, 3):
                raise UserError(f"{path}: expected arrays N x 32 x 32 x C, found {a.shape}")
        return train.astype(np.uint8), test.astype(np.uint8)

    return load


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class Source:
    summary: str
    kind: str
    load: Callable[[Path, bool], tuple[np.ndarray, np.ndarray]]
    builtin: bool = False  # generated here: needs no files
    binarise: bool = False


_fashion = _mnist_family("FashionMNIST", [DEBIAN_FASHION_MNIST])
_mnist = _course_pickle("mnist", _mnist_family("MNIST", []))

DATASETS: dict[str, Source] = {
    "gaussians-a1": Source("course Q1 part a, dataset 1 (rotated)", "points", _load_gaussians("a", 1), True),
    "gaussians-a2": Source("course Q1 part a, dataset 2 (rotated)", "points", _load_gaussians("a", 2), True),
    "gaussians-b1": Source("course Q1 part b, dataset 1 (axis-aligned)", "points", _load_gaussians("b", 1), True),
    "gaussians-b2": Source("course Q1 part b, dataset 2 (axis-aligned)", "points", _load_gaussians("b", 2), True),
    "shapes": Source("coloured shapes, 3x32x32, generated (20k/4k)", "image", _load_shapes, True),
    "mnist": Source("MNIST, 1x32x32 (padded)", "image", _mnist),
    "mnist-binary": Source("MNIST binarised at 128, 1x32x32", "binary", _mnist, binarise=True),
    "fashion-mnist": Source("Fashion-MNIST, 1x32x32 (padded)", "image", _fashion),
    "fashion-mnist-binary": Source("Fashion-MNIST binarised at 128", "binary", _fashion, binarise=True),
    "cifar10": Source("CIFAR-10, 3x32x32", "image", _course_pickle("cifar10", _cifar10)),
    "svhn": Source("SVHN, 3x32x32", "image", _course_pickle("svhn", _svhn)),
}


def names() -> list[str]:
    return list(DATASETS)


def source(name: str) -> Source:
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    return DATASETS[name]


def on_disk(name: str, data_dir: Path | None = None) -> bool:
    """Whether `load(name)` would succeed without the network."""
    src = source(name)
    if src.builtin:
        return True
    try:
        src.load(Path(data_dir or default_data_dir()), False)
        return True
    except UserError:
        return False


def _to_tensor(images: np.ndarray, binarise: bool) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)  # (N, C, H, W)
    if x.shape[-1] == 28:  # MNIST-like: zero-pad to the 32x32 every model expects
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    if binarise:
        x = (x >= 128).to(torch.uint8)
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
    for flag, value in (("--train-limit", train_limit), ("--test-limit", test_limit)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if data_dir and not root.is_dir() and not src.builtin:
        raise UserError(f"--data-dir {root} is not a folder")
    train, test = src.load(root, download)
    if src.kind == "points":
        tr, te = torch.from_numpy(train), torch.from_numpy(test)
    else:
        tr, te = _to_tensor(train, src.binarise), _to_tensor(test, src.binarise)
    tr, te = tr[:train_limit], te[:test_limit]
    return Data(DataInfo(name, src.kind, tuple(tr.shape[1:])), tr, te)
