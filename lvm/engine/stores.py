"""Where datasets' files live and how they are read: torchvision's on-disk layouts, the course's
pickles, downloads, and the data dir (`--data-dir`, else `$LVM_DATA_DIR`, else `~/.cache/lvm`).
The table of datasets that uses these stores is `lvm.engine.data`.

Files are read in torchvision's own on-disk layout under the data dir, so a folder torchvision
filled works as it is. Reading them cannot hurt the user:
- whether a dataset is on disk is judged from file names and sizes alone (`lvm list` opens nothing);
- a pickle can run code, so pickles (CIFAR-10's batches, the course's `NAME.pkl`) are opened only
  when that dataset is asked for, and then through `lvm.engine.formats`, which builds arrays and
  refuses anything else; IDX and .mat files are read no further than their headers declare;
- dtypes and shapes are checked, and every failure is one line (`UserError`) naming the file;
- a store that can also reads the classes of the images (`labels`, for the sample metrics'
  classifier) from the same files or the label files beside them, one per image, checked;
- a missing dataset is downloaded (with torchvision's progress bar) into a temporary folder and
  moved into place only when complete, after a quick probe of the host so that an offline machine
  answers at once; a failed download leaves nothing behind.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np

from lvm.engine.errors import UserError
from lvm.engine.formats import idx_shape, mat_variables, one_line, read_idx, read_pickle

PROBE_SECONDS = 3.0  # how long the download host has to answer before we call the machine offline


def _expand(path: str | Path, what: str) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # "~nosuchuser/...", or no home folder at all
        raise UserError(f"{what}{path}: cannot expand '~' (no such user, or no home folder)") from None


def default_data_dir() -> Path:
    """`$LVM_DATA_DIR`, else `~/.cache/lvm`."""
    env = os.environ.get("LVM_DATA_DIR")
    if env:
        return _expand(env, "$LVM_DATA_DIR=")
    return _expand("~/.cache/lvm", "the default data dir ")

def data_root(data_dir: str | Path | None = None) -> Path:
    """The data dir: `data_dir` with '~' expanded, else `default_data_dir()`."""
    return _expand(data_dir, "{data_dir} ") if data_dir else default_data_dir()


# ----------------------------------------------------------------------------- reading files safely


def _present(path: Path) -> bool:
    """A file that is there and not empty: judged from its name and size, without opening it."""
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:  # an unreadable folder on the way
        return False


def _images(a: object, path: Path, split: str, channels: int) -> np.ndarray:
    """`a` as uint8 images N x S x S x `channels`, S 28 or 32, at least one of them; one line
    naming the file when it is anything else. Integers 0..255 of a wider type are taken as they
    are; other dtypes are refused rather than cast, which would wrap around or truncate."""
    if not isinstance(a, np.ndarray):
        raise UserError(f"{path}: the {split} images are a {type(a).__name__}, not a numpy array")
    if a.ndim != 4 or a.shape[1:] not in ((28, 28, channels), (32, 32, channels)):
        raise UserError(f"{path}: the {split} images have shape {a.shape}; expected "
                        f"N x 32 x 32 x {channels} (or N x 28 x 28 x {channels})")
    if len(a) == 0:
        raise UserError(f"{path}: the {split} split holds no images")
    if a.dtype != np.uint8:
        if a.dtype.kind not in "iu":
            raise UserError(f"{path}: the {split} images are {a.dtype}; expected uint8 (0..255)")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi > 255:
            raise UserError(f"{path}: the {split} images are {a.dtype} with values {lo}..{hi}; expected 0..255")
    return a.astype(np.uint8, copy=False)


def _labels(y: object, path: Path, split: str, count: int, lo: int = 0, hi: int = 9, images: str = "") -> np.ndarray:
    """`y` as int64 classes (N,), one per image of the split (`count` of them, in `images` when
    that is another file), each lo..hi; one line naming the file when it is anything else.
    Floats are taken when they are whole numbers (SVHN's y is a double)."""
    a = np.asarray(y) if isinstance(y, (list, tuple, np.ndarray)) else np.empty((0, 0))
    if a.ndim != 1 or a.dtype.kind not in "iuf" or (a.dtype.kind == "f" and not np.all(a == np.round(a))):
        raise UserError(f"{path}: the {split} labels are not a list of whole numbers")
    if len(a) != count:
        raise UserError(f"{path}: {len(a)} {split} labels for {count} {split} images{images}")
    if len(a) and (a.min() < lo or a.max() > hi):
        raise UserError(f"{path}: the {split} labels run {a.min():g}..{a.max():g}; expected {lo}..{hi}")
    return a.astype(np.int64)


# ----------------------------------------------------------------------------- missing files, downloads


class Missing(UserError):
    """A dataset whose files are not on disk. Its one line says which files were looked for and
    where, where to get them, the course's pickle when there is one, and what became of a download."""

    def __init__(self, name: str, files: tuple[str, ...], folders: list[Path], site: str, download: str):
        super().__init__(name)
        self.name, self.files, self.folders, self.site, self.download = name, files, folders, site, download
        self.pickle: Path | None = None

    def template(self) -> str:
        where = " or ".join(str(f) for f in self.folders)
        alternative = f", nor the course's {self.pickle}" if self.pickle else ""
        return (f"dataset '{self.name}' not found: no {', '.join(self.files)} in {where} (get them from "
                f"{self.site}){alternative}; put them there, or point {{data_dir}} or $LVM_DATA_DIR at a "
                f"folder that holds them; {self.download}")


def _unreachable(url: str) -> str:
    """Why no TCP connection to the url's host (or to the proxy that serves it) opened within
    PROBE_SECONDS, or "" when one did. Name lookups ignore socket timeouts, hence the thread."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy)
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    outcome: list[str] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
            outcome.append("")
        except OSError as e:
            outcome.append(f"cannot reach {host}:{port} ({e.strerror or e})")

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(PROBE_SECONDS)
    return outcome[0] if outcome else f"{host}:{port} did not answer within {PROBE_SECONDS:g} s"


def _move_into(src: Path, dst: Path) -> None:
    """Every file under `src` to the same place under `dst`, each appearing whole or not at all."""
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            shutil.move(str(path), part)  # a copy when /tmp is another file system
            os.replace(part, target)
        finally:
            part.unlink(missing_ok=True)


class Store:
    """Where a dataset's files live and how to read them. `found` judges from names and sizes
    alone (what `lvm list` shows); `read` opens the files, fetching them first when allowed."""

    name: str
    channels: int
    files: tuple[str, ...]  # for messages: what a user must put in place
    site: str  # for messages: where a person gets the files

    def found(self, data_dir: Path) -> bool:
        raise NotImplementedError

    def read(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        """train, test: (N, H, W, C) arrays."""
        raise NotImplementedError

    def labels(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """train, test: the class of every image, int64 (N,) each, in the order `read` gives the
        images; checked against the images' counts. None where the files hold no labels."""
        return None

    def folders(self, data_dir: Path) -> list[Path]:
        return [data_dir]

    def url(self) -> str:
        """The first address the download fetches; the probe asks its host."""
        raise NotImplementedError

    def fetch(self, into: Path) -> None:
        """Download the files into the empty folder `into`, in the layout `found` looks for."""
        raise NotImplementedError

    def ensure(self, data_dir: Path, download: bool) -> None:
        """Return when the files are on disk; else download them when allowed; else raise `Missing`."""
        if self.found(data_dir):
            return
        outcome = self.download(data_dir) if download else "no download tried (downloads turned off)"
        if not self.found(data_dir):
            raise Missing(self.name, self.files, self.folders(data_dir), self.site,
                          outcome or "the download finished without them")

    def download(self, data_dir: Path) -> str:
        """Fetch into a temporary folder and move the files into `data_dir` only when all came:
        a failed download creates nothing there. Returns "" on success, else what went wrong."""
        url = self.url()
        ancestor = next(p for p in (data_dir, *data_dir.parents) if p.exists())
        if not (ancestor.is_dir() and os.access(ancestor, os.W_OK)):  # know before fetching 180 MB
            return f"no download tried: cannot write into {ancestor}"
        why = _unreachable(url)
        if why:
            return f"no download tried: {why}"
        tmp = Path(tempfile.mkdtemp(prefix="lvm-download-"))
        timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(30)  # a stalled transfer fails instead of hanging
        try:
            try:
                self.fetch(tmp)
            except Exception as e:  # an HTTP error, a checksum mismatch, a full disk
                return f"the download from {urllib.parse.urlsplit(url).hostname} failed ({one_line(e)})"
            try:
                _move_into(tmp, data_dir)
            except OSError as e:
                return f"the download came but could not be moved into {data_dir} ({one_line(e)})"
            return ""
        finally:
            socket.setdefaulttimeout(timeout)
            shutil.rmtree(tmp, ignore_errors=True)


class Generated(Store):
    """Made here from a fixed seed: needs no files."""

    def __init__(self, make: Callable[[Path], tuple[np.ndarray, np.ndarray]]):
        self.make = make

    def found(self, data_dir: Path) -> bool:
        return True

    def read(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        return self.make(data_dir)


class IdxFiles(Store):
    """torchvision's MNIST layout: DATA/<Folder>/raw/{train,t10k}-images-idx3-ubyte[.gz], the
    classes in {train,t10k}-labels-idx1-ubyte[.gz] beside them."""

    files = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    label_files = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte")
    channels = 1

    def __init__(self, name: str, folder: str, site: str, extra: tuple[Path, ...] = ()):
        self.name, self.folder, self.site, self.extra = name, folder, site, extra

    def folders(self, data_dir: Path) -> list[Path]:
        return [data_dir / self.folder / "raw", *self.extra]

    def _paths(self, data_dir: Path, files: tuple[str, ...] = ()) -> list[Path | None]:
        folders = self.folders(data_dir)
        return [next((p for d in folders for p in (d / f, d / f"{f}.gz") if _present(p)), None)
                for f in files or self.files]

    def found(self, data_dir: Path) -> bool:
        return None not in self._paths(data_dir)

    def read(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        self.ensure(data_dir, download)
        splits = []
        for path, split in zip(self._paths(data_dir), ("train", "test")):
            a = read_idx(path)
            if a.ndim != 3:
                raise UserError(f"{path}: expected images of 28x28, found shape {a.shape}")
            splits.append(_images(a[..., None], path, split, self.channels))  # (N, 28, 28, 1)
        return splits[0], splits[1]

    def labels(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        """The label files, fetched with the images when missing (a data dir filled before lvm
        fetched labels has the images only) and downloads are allowed."""
        self.ensure(data_dir, download)
        outcome = "no download tried (downloads turned off)"
        if None in self._paths(data_dir, self.label_files) and download:
            outcome = self.download(data_dir) or "the download finished without them"
        splits = []
        for file, path, images, split in zip(self.label_files, self._paths(data_dir, self.label_files),
                                             self._paths(data_dir), ("train", "test")):
            if path is None:
                where = " or ".join(str(f) for f in self.folders(data_dir))
                raise UserError(f"no {file}[.gz] for {self.name} in {where} (get it from {self.site}): the sample "
                                f"metrics need the dataset's labels; {outcome}")
            splits.append(_labels(read_idx(path), path, split, idx_shape(images)[0], images=f" in {images}"))
        return splits[0], splits[1]

    def _torchvision(self):
        import torchvision

        return getattr(torchvision.datasets, self.folder)

    def url(self) -> str:
        return self._torchvision().mirrors[0]

    def fetch(self, into: Path) -> None:
        from torchvision.datasets.utils import download_url

        cls = self._torchvision()
        md5 = dict(cls.resources)
        for name in (f"{f}.gz" for f in self.files + self.label_files):  # the labels: for the sample metrics
            for i, mirror in enumerate(cls.mirrors):
                try:
                    download_url(mirror + name, into / self.folder / "raw", name, md5[name])
                    break
                except Exception:
                    if i == len(cls.mirrors) - 1:
                        raise


class CifarBatches(Store):
    """torchvision's CIFAR-10 layout: DATA/cifar-10-batches-py/{data_batch_1..5,test_batch}, each
    a pickled dict whose "data" holds N rows of 3072 bytes, channel-major, and "labels" their N
    classes 0..9."""

    name, channels, site = "cifar10", 3, "https://www.cs.toronto.edu/~kriz/cifar.html, the python version"
    files = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)

    def folders(self, data_dir: Path) -> list[Path]:
        return [data_dir / "cifar-10-batches-py"]

    def found(self, data_dir: Path) -> bool:
        return all(_present(self.folders(data_dir)[0] / f) for f in self.files)

    def _entry(self, path: Path) -> tuple[dict, np.ndarray]:
        """A batch's dict and its "data" rows (N, 3072)."""
        entry = read_pickle(path, "a CIFAR-10 batch", encoding="latin1")  # pickled by Python 2
        rows = entry.get("data") if isinstance(entry, dict) else None
        if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] != 3072:
            raise UserError(f"{path}: not a CIFAR-10 batch (no 'data' array of N x 3072)")
        return entry, rows

    def _batch(self, path: Path, split: str) -> np.ndarray:
        rows = self._entry(path)[1]
        return _images(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), path, split, 3)  # (N, 32, 32, 3)

    def _batch_labels(self, path: Path, split: str) -> np.ndarray:
        entry, rows = self._entry(path)
        if "labels" not in entry:
            raise UserError(f"{path}: not a CIFAR-10 batch (no 'labels' list)")
        return _labels(entry["labels"], path, split, len(rows))

    def _splits(self, data_dir: Path, download: bool, read: Callable) -> tuple[np.ndarray, np.ndarray]:
        """`read(path, split)` of the five training batches, concatenated, and of the test batch."""
        self.ensure(data_dir, download)
        folder = self.folders(data_dir)[0]
        train = np.concatenate([read(folder / f, "train") for f in self.files[:5]])
        return train, read(folder / self.files[5], "test")

    def read(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        return self._splits(data_dir, download, self._batch)

    def labels(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        return self._splits(data_dir, download, self._batch_labels)

    def url(self) -> str:
        import torchvision

        return torchvision.datasets.CIFAR10.url

    def fetch(self, into: Path) -> None:
        import torchvision
        from torchvision.datasets.utils import download_and_extract_archive

        c = torchvision.datasets.CIFAR10
        download_and_extract_archive(c.url, into, filename=c.filename, md5=c.tgz_md5, remove_finished=True)


class SvhnMat(Store):
    """SVHN's format 2: DATA/{train,test}_32x32.mat (DATA/svhn/ also looked in), X of 32x32x3xN
    and y of N x 1, the digits 1..10 (10 for the digit 0)."""

    name, channels, site = "svhn", 3, "http://ufldl.stanford.edu/housenumbers/, format 2"
    files = ("train_32x32.mat", "test_32x32.mat")

    def folders(self, data_dir: Path) -> list[Path]:
        return [data_dir, data_dir / "svhn"]

    def _paths(self, data_dir: Path) -> list[Path | None]:
        return [next((d / f for d in self.folders(data_dir) if _present(d / f)), None) for f in self.files]

    def found(self, data_dir: Path) -> bool:
        return None not in self._paths(data_dir)

    def _load(self, path: Path, name: str, check: Callable[[dict], int]) -> tuple[np.ndarray, int]:
        """Variable `name` of the file, once `check` passed the variables' headers (shape and
        class): the variable and the number of images `check` returned."""
        import scipy.io

        try:
            n = check(mat_variables(path))
            return scipy.io.loadmat(str(path), variable_names=[name])[name], n
        except UserError:
            raise
        except Exception as e:  # scipy raises several types for a bad .mat
            raise UserError(f"cannot read {path}: not an SVHN .mat file ({one_line(e)})") from None

    @staticmethod
    def _x(path: Path, variables: dict) -> int:
        """The number of images X declares, after checking it is uint8 of 32x32x3xN."""
        shape, cls = variables.get("X", ((), "none"))
        if len(shape) != 4 or shape[:3] != (32, 32, 3) or cls != "uint8":
            raise UserError(f"{path}: expected X, uint8 of 32x32x3xN; found {cls} of {shape}")
        return shape[3]

    def _read(self, path: Path, split: str) -> np.ndarray:
        x, _ = self._load(path, "X", lambda v: self._x(path, v))  # (32, 32, 3, N)
        return _images(np.ascontiguousarray(x.transpose(3, 0, 1, 2)), path, split, 3)  # (N, 32, 32, 3)

    def _y(self, path: Path, variables: dict) -> int:
        """The number of images X declares, after checking y is a vector of numbers."""
        n = self._x(path, variables)
        if "y" not in variables:
            raise UserError(f"{path}: no labels (no variable y beside X)")
        shape, cls = variables["y"]
        if len(shape) != 2 or 1 not in shape or cls == "char":
            raise UserError(f"{path}: expected y, numbers of N x 1; found {cls} of {shape}")
        return n

    def _split_labels(self, path: Path, split: str) -> np.ndarray:
        y, n = self._load(path, "y", lambda v: self._y(path, v))  # (N, 1)
        y = _labels(y.ravel(), path, split, n, lo=1, hi=10, images=" in X")
        return np.where(y == 10, 0, y)  # format 2 writes the digit 0 as 10

    def _splits(self, data_dir: Path, download: bool, read: Callable) -> tuple[np.ndarray, np.ndarray]:
        self.ensure(data_dir, download)
        train, test = self._paths(data_dir)
        return read(train, "train"), read(test, "test")

    def read(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        return self._splits(data_dir, download, self._read)

    def labels(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        return self._splits(data_dir, download, self._split_labels)

    def url(self) -> str:
        import torchvision

        return torchvision.datasets.SVHN.split_list["train"][0]

    def fetch(self, into: Path) -> None:
        import torchvision
        from torchvision.datasets.utils import download_url

        for split in ("train", "test"):
            url, filename, md5 = torchvision.datasets.SVHN.split_list[split]
            download_url(url, into, filename, md5)


class CoursePickle(Store):
    """The course's own bundle, DATA/<name>.pkl: a dict of "train" and "test" uint8 arrays
    N x H x W x C. Preferred when present; otherwise the dataset's own files are read."""

    def __init__(self, fallback: Store):
        self.fallback, self.name = fallback, fallback.name

    def path(self, data_dir: Path) -> Path:
        return data_dir / f"{self.name}.pkl"

    def found(self, data_dir: Path) -> bool:
        return _present(self.path(data_dir)) or self.fallback.found(data_dir)

    def read(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray]:
        path = self.path(data_dir)
        if not _present(path):
            try:
                return self.fallback.read(data_dir, download)
            except Missing as e:
                e.pickle = path
                raise
        return read_course_pickle(path, self.fallback.channels)

    def labels(self, data_dir: Path, download: bool) -> tuple[np.ndarray, np.ndarray] | None:
        """The pickle holds no labels: the dataset's own files do (its images are taken to be
        theirs, in the same order; `lvm.engine.quality` checks that the counts agree)."""
        try:
            return self.fallback.labels(data_dir, download)
        except Missing as e:
            if _present(self.path(data_dir)):
                raise UserError(f"the course's {self.path(data_dir)} holds no labels, and the sample metrics need "
                                f"them from the dataset's own files: {e.template()}") from None
            e.pickle = self.path(data_dir)
            raise


def read_course_pickle(path: Path, channels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A course pickle: a dict of "train" and "test" uint8 arrays N x H x W x C, checked (one
    line naming the file otherwise); `channels` None takes C from the train array."""
    bundle = read_pickle(path, "the course's pickle")
    if not isinstance(bundle, dict) or not {"train", "test"} <= set(bundle):
        raise UserError(f"{path}: not the course's pickle (expected a dict with 'train' and 'test')")
    if channels is None:
        shape = getattr(bundle["train"], "shape", ())
        channels = shape[-1] if len(shape) == 4 and shape[-1] in (1, 3) else 3
    return _images(bundle["train"], path, "train", channels), _images(bundle["test"], path, "test", channels)
