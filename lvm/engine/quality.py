"""Sample quality: how close a model's samples are to the test set, in the feature space of a small
classifier lvm trains itself on the dataset's labels (no downloaded weights; works offline).

- Fréchet distance (computed as FID is, Heusel et al. 2017): fit a Gaussian to the features of
  the samples and one to those of real images, and take
      |mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).
  It is biased by the number of samples N (smaller N, larger FD): compare at equal N only.
- precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for
  Assessing Generative Models"): each feature vector's ball reaches its k-th nearest neighbour
  (k = 3) in its own set; precision = the fraction of samples inside some real image's ball (are
  samples realistic?), recall = the fraction of real images inside some sample's ball (do samples
  cover the data's variety?).

Why a classifier of our own: its features separate what matters in these datasets (which garment,
which shape), and it takes minutes on a CPU. The features of a classifier that cannot tell the
classes apart measure nothing, so its test accuracy is reported beside every FD. The classifier
is cached in the data dir, DATA/classifiers/NAME.pt, with its accuracy.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lvm.engine import data as datasets
from lvm.engine import stores
from lvm.engine.errors import UserError

FORMAT = "lvm-classifier-1"
NEIGHBOURS = 3  # the k of precision and recall's k-NN balls (Kynkäänniemi et al.'s default)


# ----------------------------------------------------------------------------- labels


def labels(name: str, data_dir: str | Path | None = None, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The class of every training and test example of a dataset, int64 (N,) each: what the
    generator knows for `shapes` (`make_shapes`), else what the dataset's store reads from its
    files (MNIST's and Fashion-MNIST's label files, CIFAR-10's batches, SVHN's y), fetching them
    when missing and `download` allows."""
    if name == "shapes":
        train = datasets.make_shapes(datasets.SHAPES_TRAIN, seed=0, labels=True)[1]
        test = datasets.make_shapes(datasets.SHAPES_TEST, seed=1, labels=True)[1]
        return train, test
    found = datasets.source(name).store.labels(stores.data_root(data_dir), download)
    if found is None:
        raise UserError(f"lvm has no reader for the labels of '{name}': the sample metrics (fd, precision, "
                        "recall) need a classifier trained on them")
    return found


# ----------------------------------------------------------------------------- the classifier


@dataclass
class ClassifierConfig:
    channels: int = 1
    classes: int = 10
    kind: str = "image"  # how inputs are scaled: "image" (0..255) or "binary" (0/1)
    width: int = 32  # channels of the first conv; the next two have twice as many
    features: int = 64  # the feature space of the metrics: the penultimate layer


class Classifier(nn.Module):
    """Three 3x3 convs, each with BatchNorm and ReLU (two 2x2 max-pools between them), average-pooled to 4x4, a linear layer to
    the features, then ReLU and a linear layer to the class logits. Takes images as stored."""

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        self.body = nn.Sequential(
            nn.Conv2d(cfg.channels, w, 3, 1, 1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            nn.Conv2d(w, 2 * w, 3, 1, 1), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # (B, 2w * 16): 28x28 and 32x32 alike
            nn.Linear(2 * w * 16, cfg.features),  # (B, F)
        )
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(cfg.features, cfg.classes))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Images as stored -> floats in [-1, 1]."""
        return x.float() * (2.0 / 255.0) - 1.0 if self.cfg.kind == "image" else 2 * x.float() - 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.scale(x))  # (B, F)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, classes)


@torch.no_grad()
def accuracy(model: Classifier, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    model.eval()
    right = sum((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item() for i in range(0, len(x), batch))
    return right / len(x)


def train_classifier(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, kind: str,
                     epochs: int = 2, width: int = 32, features: int = 64, seed: int = 0) -> tuple[Classifier, float]:
    """A classifier of images x (N, C, H, W) as stored with labels y (N,), trained `epochs` with
    Adam; returns it and its accuracy on the test images. Trains also when called under
    `torch.no_grad()` (as from an evaluation)."""
    with torch.enable_grad():
        return _train(x, y, x_test, y_test, kind, epochs, width, features, seed)


def _train(x, y, x_test, y_test, kind, epochs, width, features, seed) -> tuple[Classifier, float]:
    torch.manual_seed(seed)
    cfg = ClassifierConfig(channels=x.shape[1], classes=int(max(y.max(), y_test.max())) + 1, kind=kind,
                           width=width, features=features)
    model = Classifier(cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    steps = epochs * math.ceil(len(x) / 128)
    bar = tqdm(total=steps, desc="classifier", unit="step", leave=False, disable=None)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update()
    bar.close()
    return model.eval(), accuracy(model, x_test, y_test)


def classifier(name: str, data_dir: str | Path | None = None, train_limit: int = 20_000,
               epochs: int = 2, download: bool = True) -> tuple[Classifier, float]:
    """The dataset's classifier and its test accuracy: read from DATA/classifiers/NAME.pt, else
    trained on the first `train_limit` training images (a few CPU minutes) and cached there;
    `download` lets a missing image or label file be fetched."""
    path = classifier_path(name, data_dir)
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") == FORMAT:
                model = Classifier(ClassifierConfig(**state["config"]))
                model.load_state_dict(state["model"])
                return model.eval(), state["accuracy"]
        except Exception:  # a foreign or truncated file: train again and replace it
            pass
    data = datasets.load(name, data_dir, download=download)
    y_train, y_test = matching_labels(name, data_dir, data, download)
    x, y = data.train[:train_limit], y_train[:train_limit]
    start = time.perf_counter()
    model, acc = train_classifier(x, y, data.test, y_test, data.info.kind, epochs=epochs)
    save_classifier(path, model, acc, train_size=len(x), epochs=epochs, seconds=round(time.perf_counter() - start, 1))
    return model, acc


def matching_labels(name: str, data_dir: str | Path | None, data: datasets.Data,
                    download: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """`labels` as int64 tensors, one for each of `data`'s training and test images (all of them:
    loaded without limits); one line when the counts differ, as when a course pickle's images
    meet another copy's labels."""
    y_train, y_test = (torch.from_numpy(a) for a in labels(name, data_dir, download))
    if (len(y_train), len(y_test)) != (len(data.train), len(data.test)):
        raise UserError(f"'{name}' has {len(y_train)} training and {len(y_test)} test labels but "
                        f"{len(data.train)} and {len(data.test)} images: they cannot be these images' labels")
    return y_train, y_test


def classifier_path(name: str, data_dir: str | Path | None = None) -> Path:
    return stores.data_root(data_dir) / "classifiers" / f"{name}.pt"


def save_classifier(path: Path, model: Classifier, accuracy: float, **record: Any) -> None:
    """Cache a classifier with its test accuracy (and `record`: how it was trained), atomically."""
    state = {"format": FORMAT, "config": asdict(model.cfg), "model": model.state_dict(), "accuracy": accuracy, **record}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)  # an unwritable data dir only costs training it again next time


@torch.no_grad()
def features(model: Classifier, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    """Feature vectors (N, F) float64 of images (N, C, H, W) as stored."""
    model.eval()
    return torch.cat([model.features(x[i : i + batch]).double() for i in range(0, len(x), batch)])


# ----------------------------------------------------------------------------- the metrics


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets a (N, F) and b (M, F).
    tr (S_a S_b)^(1/2) is the sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2),
    a symmetric matrix: no general matrix square root, no complex parts."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)  # (F, F) each
    vals, vecs = torch.linalg.eigh(cov_a)
    root_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp_min(0).sqrt().sum()
    return ((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * middle).item()


def _radii(f: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """The distance from every row of f to its k-th nearest other row, (N,)."""
    return torch.cat([torch.cdist(f[i : i + chunk], f).kthvalue(k + 1, dim=1).values for i in range(0, len(f), chunk)])


def _covered(query: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Whether each query row lies in some centre's ball, (N,) bool."""
    return torch.cat([(torch.cdist(query[i : i + chunk], centres) <= radii[None]).any(1)
                      for i in range(0, len(query), chunk)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Kynkäänniemi et al.'s precision (fake inside the real manifold) and recall (real inside
    the fake manifold), each manifold the union of k-NN balls of its feature vectors."""
    real, fake = real.double(), fake.double()
    precision = _covered(fake, real, _radii(real, k)).double().mean().item()
    recall = _covered(real, fake, _radii(fake, k)).double().mean().item()
    return precision, recall


def sample_quality(model: Classifier, samples: torch.Tensor, real: torch.Tensor) -> dict[str, Any]:
    """fd, precision and recall of images `samples` against images `real`, both as stored."""
    if len(samples) <= NEIGHBOURS or len(real) <= NEIGHBOURS:
        raise UserError(f"the sample metrics need more than {NEIGHBOURS} images on each side, got "
                        f"{len(samples)} samples and {len(real)} real images")
    f_fake, f_real = features(model, samples), features(model, real)
    precision, recall = precision_recall(f_real, f_fake)
    return {"fd": frechet_distance(f_real, f_fake), "precision": precision, "recall": recall,
            "samples": len(samples), "reference": len(real)}


def as_stored(x: torch.Tensor, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A model's samples as the dataset stores images, uint8 (N, C, H, W): floats in [-1, 1] to
    0..255, tokens (N, H, W) or (N, 1, H, W) of 0/1 to 0/1."""
    x = x.detach().cpu()
    if kind == "binary":
        x = (x > 0.5).to(torch.uint8)
    elif x.dtype != torch.uint8:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.reshape(len(x), *shape)


def read_images(path: str | Path, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """FILE.npz's array `images` (uint8, N x H x W x C or N x C x H x W, at the dataset's stored
    size or the course's 28 x 28 for MNIST-like data) as the dataset stores images, (N, C, H, W);
    for a binary dataset, values above 1 are thresholded at 128 as the dataset is."""
    try:
        with np.load(path, allow_pickle=False) as f:
            a = f["images"]
    except KeyError:
        raise UserError(f"{path} holds no array named 'images'") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    C, H, W = shape
    if a.dtype != np.uint8 or a.ndim != 4:
        raise UserError(f"{path}: 'images' must be uint8 of 4 dimensions, got {a.dtype} of shape {a.shape}")
    if a.shape[-1] == C and a.shape[1] != C:
        a = a.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    x = torch.from_numpy(np.ascontiguousarray(a))
    if x.shape[2:] == (28, 28) and (H, W) == (32, 32):
        x = F.pad(x, (2, 2, 2, 2))  # as lvm stores MNIST-like images: zero-padded
    if tuple(x.shape[1:]) != tuple(shape):
        raise UserError(f"{path}: images of shape {tuple(a.shape[1:])}, but this dataset's are {C} x {H} x {W} "
                        f"(N x H x W x C or N x C x H x W)")
    if kind == "binary" and x.max() > 1:
        x = (x >= 128).to(torch.uint8)
    return x
