"""The sample metrics (`lvm.engine.quality`): the Fréchet distance and precision/recall in the
feature space of a small classifier trained here on generated `shapes` (no files needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lvm.engine.data import make_shapes
from lvm.engine.errors import UserError
from lvm.engine.quality import (as_stored, classifier, classifier_path, frechet_distance, precision_recall, read_images,
                                 sample_quality, train_classifier)
from tests.helpers import single_thread
from tests.test_data import write_cifar, write_svhn


def _nchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def shapes_classifier():
    """A narrow classifier trained 3 epochs on 3,000 shapes (about 70% on their 6 classes, where
    chance is about 25%), and 1,000 test shapes with their classes."""
    torch.manual_seed(0)
    x, y = make_shapes(3000, seed=0, labels=True)
    xt, yt = make_shapes(1000, seed=1, labels=True)
    with single_thread():
        model, acc = train_classifier(_nchw(x), torch.from_numpy(y), _nchw(xt), torch.from_numpy(yt), "image",
                                      epochs=3, width=16)
    return model, acc, _nchw(xt), torch.from_numpy(yt)


def noised(x: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (x.float() + sigma * torch.randn(x.shape, generator=g)).clamp(0, 255).round().to(torch.uint8)


def blurred(x: torch.Tensor, radius: int) -> torch.Tensor:
    return F.avg_pool2d(x.float(), 2 * radius + 1, 1, radius, count_include_pad=False).round().to(torch.uint8)


def test_classifier_tells_the_classes_apart(shapes_classifier):
    _, acc, _, y = shapes_classifier
    chance = torch.bincount(y).max().item() / len(y)
    assert acc > chance + 0.25


def test_fd_of_real_halves_is_far_below_corrupted_and_grows_with_corruption(shapes_classifier):
    model, _, x, _ = shapes_classifier
    a, b = x[:500], x[500:]
    halves = sample_quality(model, b, a)["fd"]
    noise = [sample_quality(model, noised(b, s), a)["fd"] for s in (10, 30, 60)]
    blur = [sample_quality(model, blurred(b, r), a)["fd"] for s, r in ((0, 1), (0, 2), (0, 3))]
    assert noise[0] > 5 * halves and blur[0] > 5 * halves, (halves, noise, blur)
    assert noise == sorted(noise) and blur == sorted(blur), (noise, blur)


def test_precision_drops_on_noised_images(shapes_classifier):
    model, _, x, _ = shapes_classifier
    clean = sample_quality(model, x[500:], x[:500])["precision"]
    noisy = sample_quality(model, noised(x[500:], 30), x[:500])["precision"]
    assert clean > 0.8 and noisy < clean - 0.3, (clean, noisy)


def test_recall_drops_when_samples_cover_one_class(shapes_classifier):
    model, _, x, y = shapes_classifier
    one = x[500:][y[500:] == 0]  # every sample a lone circle
    assert len(one) > 40
    varied = x[500:][: len(one)]  # as many samples, of every class
    r_one = sample_quality(model, one, x[:500])["recall"]
    r_varied = sample_quality(model, varied, x[:500])["recall"]
    assert r_one < r_varied - 0.3, (r_one, r_varied)


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    """For diagonal covariances FD = |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2."""
    g = torch.Generator().manual_seed(0)
    sa, sb = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([2.0, 1.0, 0.5])
    a = torch.randn(200_000, 3, generator=g) * sa
    b = torch.randn(200_000, 3, generator=g) * sb + torch.tensor([1.0, 0.0, 0.0])
    expected = 1.0 + ((sa - sb) ** 2).sum().item()
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.05)
    assert abs(frechet_distance(a[:100_000], a[100_000:])) < 0.01


def test_precision_and_recall_of_a_set_and_a_far_one():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 4, generator=g)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100) == (0.0, 0.0)
    # samples on half the data: all realistic, half the data covered
    half = real[real[:, 0] > 0]
    precision, recall = precision_recall(real, half)
    assert precision == 1.0 and recall < 0.75


def test_as_stored_and_read_images(tmp_path):
    x = torch.zeros(2, 3, 32, 32)  # a model's floats in [-1, 1]
    x[..., 0], x[..., 1] = -1.0, 1.5  # out of range is clamped
    u = as_stored(x, "image", (3, 32, 32))
    assert u.dtype == torch.uint8 and {0, 128, 255} == set(u.unique().tolist())
    tokens = torch.randint(0, 2, (4, 28, 28))
    assert as_stored(tokens, "binary", (1, 28, 28)).shape == (4, 1, 28, 28)
    # NHWC at the course's 28 x 28 -> zero-padded NCHW at lvm's 32 x 32
    a = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=a)
    x = read_images(tmp_path / "s.npz", "image", (1, 32, 32))
    assert x.shape == (5, 1, 32, 32) and torch.equal(x[:, 0, 2:30, 2:30], torch.from_numpy(a[..., 0]))
    assert read_images(tmp_path / "s.npz", "binary", (1, 28, 28)).max() == 1
    np.savez(tmp_path / "bad.npz", images=a.astype(np.float32))
    with pytest.raises(UserError, match="uint8"):
        read_images(tmp_path / "bad.npz", "image", (1, 32, 32))
    with pytest.raises(UserError, match="shape"):
        read_images(tmp_path / "s.npz", "image", (3, 32, 32))


def test_classifier_trains_under_no_grad():
    """An evaluation runs under torch.no_grad(); the classifier it trains on first use must still learn."""
    x, y = make_shapes(64, seed=0, labels=True)
    with torch.no_grad():
        model, _ = train_classifier(_nchw(x), torch.from_numpy(y), _nchw(x), torch.from_numpy(y), "image",
                                    epochs=1, width=4, features=8)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_classifier_trains_on_the_files_labels_and_is_cached(tmp_path, name):
    """The classifier of a dataset read from its own files (tiny ones here: one step of training),
    then read back from the cache."""
    write_cifar(tmp_path) if name == "cifar10" else write_svhn(tmp_path, counts=(12, 4))
    with single_thread():
        model, acc = classifier(name, tmp_path, epochs=1, download=False)
    assert 0 <= acc <= 1 and model.cfg.channels == 3
    assert classifier_path(name, tmp_path).is_file()
    again, acc_again = classifier(name, tmp_path, download=False)
    assert acc_again == acc
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
