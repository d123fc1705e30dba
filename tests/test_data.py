"""Datasets: the course's generators, the built-in shapes, and every loader on small files
written here in the real on-disk formats; then every way a file, a folder or the network can go
wrong, met the way a user meets it (`lvm data show`, `lvm list`, `lvm run`), each ending in one
line and exit status 2. No test touches the network."""

import gzip
import os
import pickle
import socket
import struct
import tracemalloc

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lvm.cli import cli
from lvm.engine import data, quality, stores
from lvm.engine.errors import UserError
from tests.helpers import invoke, one_line_error


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Every connection fails at once, as on an offline machine; a test that wants a download
    replaces the probe and torchvision's downloader itself."""

    def refuse(address, *args, **kwargs):
        raise OSError(101, "Network is unreachable (tests)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("LVM_DATA_DIR", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


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
    assert binary.train.shape == (7, 1, 28, 28)  # binary images keep the course's 28 x 28
    assert set(binary.train.unique().tolist()) <= {0, 1}
    assert torch.equal(binary.train, (d.train[:, :, 2:30, 2:30] >= 128).to(torch.uint8))


def test_truncated_idx_names_the_file(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((5, 28, 28)), False)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)), False)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        data.load("mnist", tmp_path, download=False)


CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(folder, protocol=2, n=4, seed=0, **entry):
    """Six batches of `n` random images and classes in DATA/cifar-10-batches-py, as the site's
    python version holds them (`entry` replaces or adds keys of every batch); returns the
    batches' dicts by file name."""
    (folder / "cifar-10-batches-py").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in CIFAR_BATCHES:
        batches[name] = {"batch_label": "x", "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         "labels": rng.integers(0, 10, n).tolist(), "filenames": ["a.png"] * n, **entry}
        with open(folder / "cifar-10-batches-py" / name, "wb") as f:
            pickle.dump(batches[name], f, protocol=protocol)
    return batches


def write_svhn(folder, counts=(6, 2), seed=0, compressed=False, y=None):
    """{train,test}_32x32.mat of random images and digits 1..10 (10 for 0), as format 2 holds
    them (y a double N x 1); `y` (split -> array) replaces the digits. Returns X and y by split."""
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(seed)
    x = {s: rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8) for s, n in zip(("train", "test"), counts)}
    ys = {s: rng.integers(1, 11, (n, 1)).astype(np.float64) for s, n in zip(("train", "test"), counts)}
    ys.update(y or {})
    for split in x:
        scipy_io.savemat(folder / f"{split}_32x32.mat", {"X": x[split], "y": ys[split]}, do_compression=compressed)
    return x, ys


@pytest.mark.parametrize("protocol", [2, 5])  # the real batches were pickled by Python 2
def test_cifar10_reads_python_batches(tmp_path, protocol):
    batches = {k: b["data"] for k, b in write_cifar(tmp_path, protocol).items()}
    d = data.load("cifar10", tmp_path, download=False)
    assert d.train.shape == (20, 3, 32, 32) and d.test.shape == (4, 3, 32, 32)
    # CIFAR rows are channel-major: the first 1024 bytes are the red plane
    assert torch.equal(d.train[0, 0].flatten(), torch.from_numpy(batches["data_batch_1"][0, :1024]))


@pytest.mark.parametrize("compressed", [False, True])  # the site's files are compressed
def test_svhn_reads_mat_files(tmp_path, compressed):
    x, _ = write_svhn(tmp_path, compressed=compressed)
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


# ----------------------------------------------------------------------------- pickles run no code


class Trap:
    """Unpickling this with the standard unpickler creates `marker`: code run from a data file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def plant_traps(folder, marker):
    (folder / "cifar-10-batches-py").mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / "cifar-10-batches-py" / name).write_bytes(pickle.dumps({"data": Trap(marker)}, protocol=2))
    for name in ("mnist", "cifar10", "svhn"):
        (folder / f"{name}.pkl").write_bytes(pickle.dumps({"train": Trap(marker), "test": Trap(marker)}))


def test_list_opens_no_pickle(tmp_path):
    plant_traps(tmp_path, tmp_path / "pwned")
    r = invoke("list", "--data-dir", tmp_path)
    assert r.exit_code == 0, r.output
    # judged from names and sizes: booby-trapped files count as on disk, and nothing ran
    for name in ("mnist", "cifar10", "svhn"):
        assert any(line.split()[0] == name and line.endswith("[on disk]") for line in r.output.splitlines())
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name,file", [("svhn", "svhn.pkl"), ("mnist", "mnist.pkl"), ("cifar10", "cifar10.pkl")])
def test_a_pickle_that_names_code_is_refused(tmp_path, name, file):
    plant_traps(tmp_path, tmp_path / "pwned")
    one_line_error(invoke("data", "show", name, "--data-dir", tmp_path, "--no-download"),
                   str(tmp_path / file), "it names io.open;", "runs no code")
    assert not (tmp_path / "pwned").exists()


def test_a_cifar_batch_that_names_code_is_refused(tmp_path):
    plant_traps(tmp_path, tmp_path / "pwned")
    for name in ("mnist", "cifar10", "svhn"):
        (tmp_path / f"{name}.pkl").unlink()
    one_line_error(invoke("data", "show", "cifar10", "--data-dir", tmp_path, "--no-download"),
                   "data_batch_1", "not a CIFAR-10 batch", "it names io.open;")
    assert not (tmp_path / "pwned").exists()


def test_empty_files_are_not_on_disk(tmp_path):
    (tmp_path / "svhn.pkl").write_bytes(b"")
    (tmp_path / "train_32x32.mat").write_bytes(b"")
    (tmp_path / "test_32x32.mat").write_bytes(b"x")
    assert not data.on_disk("svhn", tmp_path)
    (tmp_path / "train_32x32.mat").write_bytes(b"x")
    assert data.on_disk("svhn", tmp_path)  # names and sizes only: a corrupt file is on disk


# ----------------------------------------------------------------------------- course pickles: dtypes, shapes


def write_course_pickle(folder, name, train, test=None):
    with open(folder / f"{name}.pkl", "wb") as f:
        pickle.dump({"train": train, "test": train[:2] if test is None else test}, f)


@pytest.mark.parametrize(
    "name,train,expect",
    [
        ("svhn", np.full((4, 32, 32, 3), 0.5), "are float64; expected uint8 (0..255)"),
        ("svhn", np.full((4, 32, 32, 3), 256, np.int64), "are int64 with values 256..256; expected 0..255"),
        ("svhn", np.full((4, 32, 32, 3), -1, np.int16), "int16 with values -1..-1"),
        ("svhn", np.full((4, 32, 32, 3), None, object), "are object; expected uint8"),
        ("mnist", np.zeros((4, 28, 32, 1), np.uint8), "shape (4, 28, 32, 1); expected N x 32 x 32 x 1"),
        ("svhn", np.zeros((4, 32, 32, 1), np.uint8), "shape (4, 32, 32, 1); expected N x 32 x 32 x 3"),
        ("svhn", np.zeros((4, 32, 32), np.uint8), "shape (4, 32, 32)"),
        ("svhn", np.zeros((0, 32, 32, 3), np.uint8), "the train split holds no images"),
        ("svhn", [[1, 2]], "are a list, not a numpy array"),
    ],
)
def test_course_pickle_of_the_wrong_kind_is_one_line(tmp_path, name, train, expect):
    test = np.zeros((2, 32, 32, 3), np.uint8) if name == "svhn" else np.zeros((2, 28, 28, 1), np.uint8)
    write_course_pickle(tmp_path, name, train, test)
    one_line_error(invoke("data", "show", name, "--data-dir", tmp_path, "--no-download"),
                   f"{tmp_path / (name + '.pkl')}: ", expect)


def test_course_pickle_not_a_dict_and_truncated(tmp_path):
    (tmp_path / "svhn.pkl").write_bytes(pickle.dumps([1, 2]))
    one_line_error(invoke("data", "show", "svhn", "--data-dir", tmp_path), "not the course's pickle", "'train'")
    write_course_pickle(tmp_path, "svhn", np.zeros((4, 32, 32, 3), np.uint8))
    path = tmp_path / "svhn.pkl"
    path.write_bytes(path.read_bytes()[:-40])
    one_line_error(invoke("data", "show", "svhn", "--data-dir", tmp_path), f"cannot read {path}: not the course's pickle")


def test_course_pickle_of_wider_integers_in_range_is_read_exactly(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (5, 28, 28, 1)).astype(np.int64)
    write_course_pickle(tmp_path, "mnist", train)
    d = data.load("mnist", tmp_path, download=False)
    assert d.train.dtype == torch.uint8
    assert torch.equal(d.train[:, 0, 2:30, 2:30], torch.from_numpy(train[..., 0]).to(torch.uint8))


# ----------------------------------------------------------------------------- IDX: bounded reads, empty splits


def mnist_dir(tmp_path, train=None, test=None, gz=False):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    write_idx(raw / "train-images-idx3-ubyte", np.zeros((5, 28, 28)) if train is None else train, gz)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28)) if test is None else test, gz)
    return raw


def test_gzip_bomb_is_read_no_further_than_its_header(tmp_path):
    raw = mnist_dir(tmp_path)
    bomb = raw / "train-images-idx3-ubyte.gz"
    (raw / "train-images-idx3-ubyte").unlink()
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2, 28, 28)
    with gzip.open(bomb, "wb") as f:
        f.write(header)
        for _ in range(64):  # 64 MiB of zeros behind a header that declares 1,568 bytes
            f.write(bytes(1 << 20))
    assert bomb.stat().st_size < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="more data than the 1,568 bytes its header declares"):
            stores.read_idx(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak  # a whole read would have taken 64 MiB
    one_line_error(invoke("data", "show", "mnist", "--data-dir", tmp_path, "--no-download"),
                   f"cannot read {bomb}", "more data than")


def test_idx_header_declaring_too_much_is_refused_before_reading(tmp_path):
    raw = mnist_dir(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 4_000_000, 28, 28))
    one_line_error(invoke("data", "show", "mnist", "--data-dir", tmp_path, "--no-download"),
                   str(path), "3,136,000,000 bytes; lvm reads at most 1,073,741,824")


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_idx_with_no_images_is_one_line_and_run_writes_nothing(tmp_path, split):
    empty = np.zeros((0, 28, 28))
    mnist_dir(tmp_path, **({"train": empty} if split == "train" else {"test": empty}))
    path = tmp_path / "MNIST" / "raw" / f"{split}-images-idx3-ubyte"
    which = "train" if split == "train" else "test"
    one_line_error(invoke("data", "show", "mnist", "--data-dir", tmp_path, "--no-download"),
                   f"{path}: the {which} split holds no images")
    out = tmp_path / "row"
    one_line_error(invoke("run", "vae", "--dataset", "mnist", "--data-dir", tmp_path, "--no-download",
                       "--epochs", "1", "--out", out), "holds no images")
    assert not out.exists()


def test_idx_of_other_image_sizes_is_one_line(tmp_path):
    mnist_dir(tmp_path, train=np.zeros((3, 28, 32)))
    one_line_error(invoke("data", "show", "mnist", "--data-dir", tmp_path, "--no-download"),
                   "train-images-idx3-ubyte: the train images have shape (3, 28, 32, 1)")


def test_svhn_mat_of_the_wrong_kind_is_one_line(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2))})  # float64
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    one_line_error(invoke("data", "show", "svhn", "--data-dir", tmp_path),
                   "train_32x32.mat: expected X, uint8 of 32x32x3xN; found double of (32, 32, 3, 2)")
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 but not really")
    one_line_error(invoke("data", "show", "svhn", "--data-dir", tmp_path), "not an SVHN .mat file")


def test_mat_bomb_is_refused_before_it_inflates(tmp_path):
    """A .mat whose X declares 32x32x3x2 while its data tag claims 32 MiB of zeros, compressed."""
    import io
    import zlib

    scipy_io = pytest.importorskip("scipy.io")
    buf = io.BytesIO()
    scipy_io.savemat(buf, {"X": np.zeros((32, 32, 3, 2), np.uint8)}, do_compression=False)
    header, element = buf.getvalue()[:128], buf.getvalue()[128:]
    body = element[8:]
    data_tag = len(body) - 6144 - 8  # X's data is the matrix's last part, 6,144 bytes
    kind, _ = struct.unpack("<II", body[data_tag:data_tag + 8])
    big = 32 << 20
    lying = body[:data_tag] + struct.pack("<II", kind, big) + bytes(big)
    packed = zlib.compress(struct.pack("<II", 14, len(lying)) + lying, 9)
    (tmp_path / "train_32x32.mat").write_bytes(header + struct.pack("<II", 15, len(packed)) + packed)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    assert (tmp_path / "train_32x32.mat").stat().st_size < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="variable X inflates past the 6,144 bytes it declares"):
            data.load("svhn", tmp_path, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak  # scipy alone would have taken the 32 MiB, and more
    one_line_error(invoke("data", "show", "svhn", "--data-dir", tmp_path),
                   "train_32x32.mat: not an SVHN .mat file (ValueError: variable X inflates past")


# ----------------------------------------------------------------------------- labels, for the sample metrics


def mnist_with_labels(tmp_path, train_labels=(3, 1, 4, 1, 5), test_labels=(9, 2), gz=False):
    raw = mnist_dir(tmp_path, np.zeros((5, 28, 28)), np.zeros((2, 28, 28)), gz)
    write_idx(raw / "train-labels-idx1-ubyte", np.array(train_labels), gz)
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array(test_labels), gz)
    return raw


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_labels_are_read_beside_the_images(tmp_path, gz):
    mnist_with_labels(tmp_path, gz=gz)
    train, test = quality.labels("mnist-binary", tmp_path, download=False)
    assert train.dtype == test.dtype == np.int64
    assert train.tolist() == [3, 1, 4, 1, 5] and test.tolist() == [9, 2]


def test_cifar10_labels_are_read_from_the_batches(tmp_path):
    batches = write_cifar(tmp_path)
    train, test = quality.labels("cifar10", tmp_path, download=False)
    assert train.dtype == test.dtype == np.int64
    assert train.tolist() == [y for name in CIFAR_BATCHES[:5] for y in batches[name]["labels"]]
    assert test.tolist() == batches["test_batch"]["labels"]


def test_svhn_labels_write_the_digit_0_as_10(tmp_path):
    _, y = write_svhn(tmp_path, compressed=True, y={"train": np.array([[10.0], [1], [9], [10], [2], [5]])})
    train, test = quality.labels("svhn", tmp_path, download=False)
    assert train.dtype == test.dtype == np.int64
    assert train.tolist() == [0, 1, 9, 0, 2, 5] and test.tolist() == [v % 10 for v in y["test"].ravel().astype(int)]


def test_the_course_pickle_takes_its_labels_from_the_datasets_files(tmp_path):
    write_course_pickle(tmp_path, "mnist", np.zeros((5, 28, 28, 1), np.uint8), np.zeros((2, 28, 28, 1), np.uint8))
    one_line_error(score(tmp_path, "mnist"), "mnist.pkl holds no labels", "train-images-idx3-ubyte")
    mnist_with_labels(tmp_path)
    assert quality.labels("mnist", tmp_path, download=False)[0].tolist() == [3, 1, 4, 1, 5]
    write_course_pickle(tmp_path, "mnist", np.zeros((4, 28, 28, 1), np.uint8), np.zeros((2, 28, 28, 1), np.uint8))
    one_line_error(score(tmp_path, "mnist"), "'mnist' has 5 training and 2 test labels but 4 and 2 images")


def score(tmp_path, name):
    """`lvm eval --dataset NAME --images FILE.npz` of four blank images, offline: the classifier's
    first training reads the labels."""
    np.savez(tmp_path / "fake.npz", images=np.zeros((4, 32, 32, 1 if "mnist" in name else 3), np.uint8))
    return invoke("eval", "--dataset", name, "--images", tmp_path / "fake.npz", "--data-dir", tmp_path, "--no-download")


def bad_cifar(tmp_path, case):
    if case == "no labels":
        batches = write_cifar(tmp_path)
        with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
            pickle.dump({"data": batches["test_batch"]["data"]}, f, protocol=2)
    else:
        write_cifar(tmp_path, labels={"short": [0, 1, 2], "range": [0, 1, 10, 3], "str": ["a"] * 4}[case])


def bad_svhn(tmp_path, case):
    if case == "no labels":
        write_svhn(tmp_path)
        pytest.importorskip("scipy.io").savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8)})
    else:
        write_svhn(tmp_path, y={"train": {"short": np.ones((5, 1)), "range": np.zeros((6, 1)),
                                          "str": np.full((6, 1), 1.5)}[case]})


def bad_mnist(tmp_path, case):
    raw = mnist_with_labels(tmp_path, train_labels={"short": [1] * 4, "range": [1, 2, 3, 4, 12]}.get(case, [1] * 5))
    if case == "no labels":
        (raw / "t10k-labels-idx1-ubyte").unlink()
    elif case == "str":
        (raw / "train-labels-idx1-ubyte").write_bytes(b"not idx")


@pytest.mark.parametrize("name,write,file", [("cifar10", bad_cifar, "data_batch_1"), ("svhn", bad_svhn, "train_32x32.mat"),
                                             ("mnist", bad_mnist, "train-labels-idx1-ubyte")])
@pytest.mark.parametrize("case,expect", [("short", "labels for"), ("range", "labels run"), ("str", ""),
                                         ("no labels", "labels")])
def test_bad_labels_are_one_line_naming_the_file(tmp_path, name, write, file, case, expect):
    write(tmp_path, case)
    if case == "no labels":  # the test split's file lacks them
        file = {"cifar10": "test_batch", "svhn": "test_32x32.mat", "mnist": "t10k-labels-idx1-ubyte"}[name]
    one_line_error(score(tmp_path, name), file, expect)
    assert not (tmp_path / "classifiers").exists()


def test_mnist_labels_are_fetched_when_only_the_images_are_there(tmp_path, monkeypatch):
    """A data dir filled when lvm fetched no labels: the labels come with a new download of the
    four files (faked here), and fetch asks for the label files too."""
    import torchvision.datasets.utils

    mnist_dir(tmp_path)
    fetched = []

    def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        fetched.append(filename)
        os.makedirs(root, exist_ok=True)
        labels = filename.startswith(("train-labels", "t10k-labels"))
        write_idx(root / filename.removesuffix(".gz"), np.ones(5 if filename.startswith("train") else 2)
                  if labels else np.zeros((5 if filename.startswith("train") else 2, 28, 28)), gz=True)

    monkeypatch.setattr(stores, "_unreachable", lambda url: "")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)
    with pytest.raises(UserError, match=r"no train-labels-idx1-ubyte\[.gz\] for mnist.*downloads turned off"):
        quality.labels("mnist", tmp_path, download=False)
    train, test = quality.labels("mnist", tmp_path)
    assert train.tolist() == [1] * 5 and test.tolist() == [1] * 2
    assert sorted(fetched) == sorted(f"{f}.gz" for f in stores.IdxFiles.files + stores.IdxFiles.label_files)


def test_end_of_run_evaluation_keeps_downloads_off(tmp_path, monkeypatch):
    """`lvm run --no-download`: the classifier the end-of-run evaluation trains on first use fetches
    no missing label file (the row keeps its likelihood); with downloads on, it asks for them."""
    import torchvision.datasets.utils

    from lvm import registry
    from lvm.engine.evaluate import at_end_of_run
    from lvm.vae import VAE, VAEConfig

    mnist_dir(tmp_path)
    fetched = []
    monkeypatch.setattr(stores, "_unreachable", lambda url: "")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url",
                        lambda url, root, filename=None, md5=None, **kw: fetched.append(filename))
    d = data.load("mnist", tmp_path, download=False)
    model = VAE(VAEConfig(channels=1, latent_dim=2, enc_widths=(4, 4, 4, 4), dec_widths=(4, 4, 4, 4)))
    how = registry.get("vae").evaluation
    out = at_end_of_run(model, d, how, full_run=True, data_dir=tmp_path, download=False)
    assert fetched == [] and "nll" in out and "fd" not in out
    at_end_of_run(model, d, how, full_run=True, data_dir=tmp_path, download=True)
    assert fetched  # the same call with downloads on does ask


def test_end_of_run_evaluation_says_why_it_has_no_fd(tmp_path, monkeypatch):
    """A quick trial (`lvm run --train-limit`) scores samples only with a cached classifier; without
    one its metrics.json says why fd is missing and what adds it. A full run, or a quick one whose
    classifier is cached, asks for the samples and says nothing of the kind."""
    from lvm import registry
    from lvm.engine import evaluate as evaluation
    from lvm.engine import quality
    from lvm.vae import VAE, VAEConfig

    mnist_dir(tmp_path)
    d = data.load("mnist", tmp_path, download=False)
    model = VAE(VAEConfig(channels=1, latent_dim=2, enc_widths=(4, 4, 4, 4), dec_widths=(4, 4, 4, 4)))
    how = registry.get("vae").evaluation
    quick = evaluation.at_end_of_run(model, d, how, full_run=False, data_dir=tmp_path, download=False)
    assert "nll" in quick and "fd" not in quick
    assert "classifier" in quick["samples_skipped"] and "lvm eval" in quick["samples_skipped"]

    asked = []  # the samples each call asks `evaluate` for (its scoring is tested on its own)
    monkeypatch.setattr(evaluation, "evaluate", lambda *a, samples, **kw: asked.append(samples) or {"nll": 1.0})
    full = evaluation.at_end_of_run(model, d, how, full_run=True, data_dir=tmp_path, download=False)
    cached = quality.classifier_path("mnist", tmp_path)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"cached")
    quick_cached = evaluation.at_end_of_run(model, d, how, full_run=False, data_dir=tmp_path, download=False)
    assert asked == [how.run_samples, how.run_samples] and how.run_samples > 0
    assert "samples_skipped" not in full and "samples_skipped" not in quick_cached


# ----------------------------------------------------------------------------- the shapes cache


def test_truncated_shapes_cache_is_drawn_again(tmp_path):
    first = data.load("shapes", tmp_path, train_limit=8, test_limit=8)
    cache = tmp_path / "shapes" / "shapes-v1.npz"
    cache.write_bytes(cache.read_bytes()[:5000])  # what an interrupted writer would leave
    again = data.load("shapes", tmp_path, train_limit=8, test_limit=8)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    with np.load(cache) as f:  # and the cache is whole again
        assert f["train"].shape == (data.SHAPES_TRAIN, 32, 32, 3)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["shapes-v1.npz"]  # no temporary left


def test_shapes_cache_writers_use_names_of_their_own(tmp_path, monkeypatch):
    """Two runs writing the cache at once must not share a temporary file."""
    names = []
    real = np.savez

    def spy(file, **arrays):  # the name of the file really written, however it was opened
        names.append(os.readlink(f"/proc/self/fd/{file.fileno()}") if hasattr(file, "fileno") else str(file))
        real(file, **arrays)

    monkeypatch.setattr(data, "make_shapes", lambda count, seed: np.zeros((count, 32, 32, 3), np.uint8))
    monkeypatch.setattr(np, "savez", spy)
    data.load("shapes", tmp_path / "a")
    data.load("shapes", tmp_path / "b")
    (tmp_path / "b" / "shapes" / "shapes-v1.npz").unlink()
    data.load("shapes", tmp_path / "b")
    assert len(names) == 3 and len({os.path.basename(n) for n in names}) == 3
    assert not any(n.endswith("shapes-v1.npz") for n in names)  # written aside, then renamed


# ----------------------------------------------------------------------------- the data dir


@pytest.mark.parametrize("command", [["list"], ["data", "show", "svhn"]])
def test_data_dir_of_an_unknown_user_is_one_line(command):
    one_line_error(invoke(*command, env={"LVM_DATA_DIR": "~nosuchuser/x"}),
                   "$LVM_DATA_DIR=~nosuchuser/x: cannot expand '~'")
    one_line_error(invoke(*command, "--data-dir", "~nosuchuser/x"), "--data-dir ~nosuchuser/x: cannot expand '~'")


# ----------------------------------------------------------------------------- missing data, downloads


def test_missing_data_offline_is_one_line_fast_and_creates_nothing(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    def no_download(*args, **kwargs):
        raise AssertionError("the probe failed: torchvision must not be asked")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", no_download)
    home = tmp_path / "cache" / "lvm"
    line = one_line_error(
        invoke("data", "show", "svhn", env={"LVM_DATA_DIR": str(home)}),
        f"dataset 'svhn' not found: no train_32x32.mat, test_32x32.mat in {home} or {home / 'svhn'}",
        "http://ufldl.stanford.edu/housenumbers/", f"the course's {home / 'svhn.pkl'}",
        "--data-dir", "$LVM_DATA_DIR", "no download tried: cannot reach ufldl.stanford.edu:80",
    )
    assert "Network is unreachable" in line
    assert not (tmp_path / "cache").exists()


def test_missing_data_with_downloads_off_says_so(tmp_path):
    one_line_error(invoke("data", "show", "cifar10", "--data-dir", tmp_path, "--no-download"),
                   "data_batch_1", "https://www.cs.toronto.edu/~kriz/cifar.html", "cifar10.pkl",
                   "no download tried (downloads turned off)")
    if not data.DEBIAN_FASHION_MNIST.exists():  # else the Debian package's files are found
        one_line_error(invoke("data", "show", "fashion-mnist", "--data-dir", tmp_path, "--no-download"),
                       "apt-get install dataset-fashion-mnist")


def test_a_probe_that_hangs_counts_as_offline(monkeypatch):
    import time

    def hang(address, timeout=None):
        time.sleep(3)
        raise OSError("answered too late")

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(stores, "PROBE_SECONDS", 0.1)
    assert stores._unreachable("http://ufldl.stanford.edu/x.mat") == "ufldl.stanford.edu:80 did not answer within 0.1 s"


def test_the_probe_asks_the_proxy_when_there_is_one(monkeypatch):
    asked = []

    def record(address, timeout=None):
        asked.append(address)
        raise OSError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", record)
    monkeypatch.setenv("https_proxy", "http://proxy.example:3128")
    assert "cannot reach proxy.example:3128" in stores._unreachable("https://www.cs.toronto.edu/x.tar.gz")
    assert asked == [("proxy.example", 3128)]


def fake_svhn_download(monkeypatch, fail_on=None):
    """torchvision's download_url, writing small SVHN files (or half of one, then failing)."""
    import torchvision.datasets.utils
    scipy_io = pytest.importorskip("scipy.io")

    fetched = []

    def download_url(url, root, filename=None, md5=None, max_redirect_hops=3):
        fetched.append(url)
        os.makedirs(root, exist_ok=True)
        if filename == fail_on:
            (root / filename).write_bytes(b"MATLAB half a file")
            raise OSError(104, "Connection reset by peer")
        n = 6 if filename.startswith("train") else 2
        scipy_io.savemat(root / filename, {"X": np.full((32, 32, 3, n), 7, np.uint8)})

    monkeypatch.setattr(stores, "_unreachable", lambda url: "")
    monkeypatch.setattr(torchvision.datasets.utils, "download_url", download_url)
    return fetched


def test_download_moves_complete_files_into_the_data_dir(tmp_path, monkeypatch):
    fetched = fake_svhn_download(monkeypatch)
    home = tmp_path / "cache" / "lvm"
    r = invoke("data", "show", "svhn", "--out", tmp_path / "s.png", env={"LVM_DATA_DIR": str(home)})
    assert r.exit_code == 0, r.output
    assert "svhn: 6 train, 2 test, one example: 3x32x32 uint8" in r.output
    assert fetched == ["http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                       "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"]
    assert sorted(p.name for p in home.iterdir()) == ["test_32x32.mat", "train_32x32.mat"]


def test_a_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    fake_svhn_download(monkeypatch, fail_on="test_32x32.mat")
    home = tmp_path / "cache" / "lvm"
    one_line_error(invoke("data", "show", "svhn", env={"LVM_DATA_DIR": str(home)}),
                   "the download from ufldl.stanford.edu failed",
                   "(ConnectionResetError: [Errno 104] Connection reset by peer)")
    assert not (tmp_path / "cache").exists()


def test_no_download_into_a_data_dir_that_cannot_be_written(tmp_path, monkeypatch):
    fetched = fake_svhn_download(monkeypatch)
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(invoke("data", "show", "svhn", env={"LVM_DATA_DIR": str(blocker / "lvm")}),
                   f"no download tried: cannot write into {blocker}")
    assert fetched == []


# ----------------------------------------------------------------------------- data show's picture


def test_data_show_writes_its_picture_under_runs(tmp_path):
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        r = runner.invoke(cli, ["data", "show", "gaussians-b1"])
        assert r.exit_code == 0, r.output
        assert r.output.strip().endswith("wrote runs/data/gaussians-b1.png")
        assert open("runs/data/gaussians-b1.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_data_show_out_must_be_a_writable_png(tmp_path):
    one_line_error(invoke("data", "show", "gaussians-b1", "--out", tmp_path / "x.txt"),
                   "x.txt: the picture is a PNG; give a path ending in .png")
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("")
    for out in (blocker / "x.png", blocker / "sub" / "x.png"):
        one_line_error(invoke("data", "show", "gaussians-b1", "--out", out),
                       f"cannot write {out}: {blocker} is a file, not a folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_data_show_into_a_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        one_line_error(invoke("data", "show", "gaussians-b1", "--out", folder / "x.png"),
                       "cannot write", "Permission denied")
    finally:
        folder.chmod(0o700)


def test_data_show_refused_by_the_file_system(tmp_path, monkeypatch):
    """What a read-only folder or a full disk does to the picture, even when the tests run as root
    (pictures are drawn in memory, then written by lvm.engine.files: its write is refused here)."""
    from lvm.engine import files

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(files, "open", refuse, raising=False)
    one_line_error(invoke("data", "show", "gaussians-b1", "--out", tmp_path / "x.png"),
                   f"cannot write {tmp_path / 'x.png'}: permission denied")
