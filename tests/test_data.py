"""Datasets: the course's generators, the built-in shapes, and every loader on small files
written here in the real on-disk formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from lvm.engine import data
from lvm.engine.errors import UserError


def test_gaussians_follow_the_course_formula():
    rs = np.random.RandomState(0)
    eps = rs.randn(10_000, 2)
    s = np.sqrt(2) / 2
    rot = np.array([[s, s], [-s, s]])
    expected = {
        "gaussians-a1": [1, 2] + (eps * [5, 1]).dot(rot),
        "gaussians-a2": [-1, 2] + (eps * [1, 5]).dot(rot),
        "gaussians-b1": [1, 2] + eps * [5, 1],
        "gaussians-b2": [-1, 2] + eps * [1, 5],
    }
    for name, want in expected.items():
        d = data.load(name)
        assert d.train.shape == (10_000, 2) and d.test.shape == (2_500, 2)
        np.testing.assert_allclose(d.train.numpy(), want, rtol=1e-5, atol=1e-5)
        # both splits are drawn from RandomState(0): the test set is the first 2,500 training points
        assert torch.equal(d.test, d.train[:2_500])


def test_rotated_data_is_correlated_and_axis_aligned_is_not():
    a = np.corrcoef(data.load("gaussians-a1").train.numpy().T)[0, 1]
    b = np.corrcoef(data.load("gaussians-b1").train.numpy().T)[0, 1]
    assert abs(a) > 0.8 and abs(b) < 0.05


def test_shapes_are_deterministic_and_varied():
    a, b = data.make_shapes(64, seed=3), data.make_shapes(64, seed=3)
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, data.make_shapes(64, seed=4))
    # every image has a shape brighter than its background, and images differ from each other
    assert (a.reshape(64, -1, 3).max(1).max(1) >= 110).all()
    assert len({img.tobytes() for img in a}) == 64


def test_shapes_load_and_cache(tmp_path):
    d = data.load("shapes", tmp_path, train_limit=100, test_limit=10)
    assert d.train.shape == (100, 3, 32, 32) and d.train.dtype == torch.uint8
    assert (tmp_path / "shapes" / "shapes-v1.npz").exists()
    again = data.load("shapes", tmp_path, train_limit=100, test_limit=10)
    assert torch.equal(d.train, again.train) and torch.equal(d.test, again.test)


def write_idx(path, array, gz):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.mark.parametrize("name,folder,gz", [("mnist", "MNIST", False), ("fashion-mnist", "FashionMNIST", True)])
def test_mnist_family_reads_torchvision_layout(tmp_path, name, folder, gz):
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (7, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    write_idx(raw / "train-images-idx3-ubyte", train, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", test, gz)
    d = data.load(name, tmp_path, download=False)
    assert d.train.shape == (7, 1, 32, 32) and d.test.shape == (3, 1, 32, 32)
    assert torch.equal(d.train[:, 0, 2:30, 2:30], torch.from_numpy(train.astype(np.uint8)))
    assert d.train[:, :, :2].sum() == 0  # zero padding
    binary = data.load(name + "-binary", tmp_path, download=False)
    assert set(binary.train.unique().tolist()) <= {0, 1}
    assert torch.equal(binary.train, (d.train >= 128).to(torch.uint8))


def test_truncated_idx_names_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((5, 28, 28)), False)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), False)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        data.load("mnist", tmp_path, download=False)


def test_cifar10_reads_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": batches[name], "labels": [0] * 4}, f)
    d = data.load("cifar10", tmp_path, download=False)
    assert d.train.shape == (20, 3, 32, 32) and d.test.shape == (4, 3, 32, 32)
    # CIFAR rows are channel-major: the first 1024 bytes are the red plane
    assert torch.equal(d.train[0, 0].flatten(), torch.from_numpy(batches["data_batch_1"][0, :1024]))


def test_svhn_reads_mat_files(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    x = {s: rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8) for s, n in (("train", 6), ("test", 2))}
    for split, arr in x.items():
        scipy_io.savemat(tmp_path / f"{split}_32x32.mat", {"X": arr, "y": np.ones((arr.shape[3], 1))})
    d = data.load("svhn", tmp_path, download=False)
    assert d.train.shape == (6, 3, 32, 32) and d.test.shape == (2, 3, 32, 32)
    assert torch.equal(d.train[1], torch.from_numpy(x["train"][..., 1]).permute(2, 0, 1))


def test_course_pickle_is_preferred(tmp_path):
    rng = np.random.default_rng(0)
    bundle = {"train": rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8),
              "test": rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)}
    with open(tmp_path / "svhn.pkl", "wb") as f:
        pickle.dump(bundle, f)
    d = data.load("svhn", tmp_path, download=False)
    assert torch.equal(d.train, torch.from_numpy(bundle["train"]).permute(0, 3, 1, 2))


def test_missing_dataset_names_folder_and_files(tmp_path):
    with pytest.raises(UserError) as e:
        data.load("svhn", tmp_path, download=False)
    msg = str(e.value)
    assert str(tmp_path) in msg and "train_32x32.mat" in msg and "\n" not in msg


def test_limits_and_bad_names():
    d = data.load("gaussians-b2", train_limit=10, test_limit=5)
    assert len(d.train) == 10 and len(d.test) == 5
    with pytest.raises(UserError, match="choose one of"):
        data.load("imagenet")
    with pytest.raises(UserError, match="at least 1"):
        data.load("gaussians-b2", train_limit=0)


@pytest.mark.skipif(not data.DEBIAN_FASHION_MNIST.exists(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_debian_package(tmp_path):
    d = data.load("fashion-mnist", tmp_path, download=False)
    assert d.train.shape == (60_000, 1, 32, 32) and d.test.shape == (10_000, 1, 32, 32)
