"""Reading dataset files without trusting them: IDX (MNIST's format, LeCun et al. 1998), Python
pickles (CIFAR-10's batches, Krizhevsky 2009; the course's bundles) and MATLAB 5 files (SVHN's
format 2, Netzer et al. 2011).

A file may be truncated, foreign or hostile. A pickle may name any function and so run any code:
`read_pickle` builds numpy arrays, dicts, lists, strings and numbers and refuses every other name.
A compressed file may inflate a thousandfold: `read_idx` reads no more than its header declares,
`mat_variables` inflates each variable in 1 MiB pieces that it counts and throws away, and no
file may declare more than `MAX_BYTES`. Every failure is an exception for the caller to turn into
one line naming the file.
"""

from __future__ import annotations

import codecs
import gzip
import math
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np

from lvm.engine.errors import UserError

MAX_BYTES = 1 << 30  # the most image data one file may declare: over 20 times MNIST's training set


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and message, newlines folded."""
    return " ".join(f"{type(e).__name__}: {e}".split())


def _idx_header(f) -> tuple[int, ...]:
    """The dimensions an unsigned-byte IDX file's header declares; ValueError for another file."""
    zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
    if zero != 0 or dtype != 0x08 or not 1 <= ndim <= 4:
        raise ValueError("not an unsigned-byte IDX file")
    return struct.unpack(f">{ndim}I", f.read(4 * ndim))


def read_idx(path: Path) -> np.ndarray:
    """An unsigned-byte IDX file (MNIST's format), plain or gzipped, as a numpy array. It reads no
    more than the header declares, and a header may declare at most `MAX_BYTES`: a gzip bomb
    posing as an IDX file costs no more memory than an honest one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            dims = _idx_header(f)
            size = math.prod(dims)
            if size > MAX_BYTES:
                raise ValueError(f"its header declares shape {dims}, {size:,} bytes; lvm reads at most {MAX_BYTES:,}")
            body = np.empty(size, np.uint8)
            view, filled = memoryview(body), 0
            while filled < size and (got := f.readinto(view[filled:])):
                filled += got
            if filled < size:
                raise ValueError(f"{filled} bytes of data for shape {dims}")
            if f.read(1):
                raise ValueError(f"more data than the {size:,} bytes its header declares for shape {dims}")
        return body.reshape(dims)
    except (OSError, EOFError, struct.error, ValueError, zlib.error) as e:
        raise UserError(f"cannot read {path}: truncated or corrupt IDX file ({e})") from None


def idx_shape(path: Path) -> tuple[int, ...]:
    """The shape an unsigned-byte IDX file (plain or gzipped) declares, from its header alone."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            return _idx_header(f)
    except (OSError, EOFError, struct.error, ValueError, zlib.error) as e:
        raise UserError(f"cannot read {path}: truncated or corrupt IDX file ({e})") from None


def _numpy_globals() -> dict[tuple[str, str], object]:
    """The functions a pickled numpy array names, under numpy 1's and numpy 2's module paths."""
    a = np.zeros(1)
    found = {"_reconstruct": a.__reduce__()[0], "_frombuffer": a.__reduce_ex__(5)[0],
             "scalar": np.float64(0).__reduce__()[0]}
    module = {"_reconstruct": "multiarray", "scalar": "multiarray", "_frombuffer": "numeric"}
    return {(f"numpy.{core}.{module[n]}", n): f for n, f in found.items() for core in ("core", "_core")}


class _ArraysOnly(pickle.Unpickler):
    """Unpickles what a dataset pickle holds (dicts, lists, strings, numbers, numpy arrays) and
    refuses every other class or function a pickle may name: unpickling one can run any code."""

    ALLOWED = {
        **_numpy_globals(),
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how protocol 2 spells bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise pickle.UnpicklingError(f"it names {module}.{name}; a dataset pickle holds arrays only, "
                                     "and lvm runs no code from one")


def read_pickle(path: Path, what: str, encoding: str = "ASCII") -> object:
    """A pickle of arrays, dicts, lists, strings and numbers; `what` says what it should be."""
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding=encoding).load()
    except Exception as e:  # a truncated or foreign pickle fails with many types
        raise UserError(f"cannot read {path}: not {what} ({one_line(e)})") from None


_MAT_CLASSES = {4: ("char", 2), 6: ("double", 8), 7: ("single", 4), 8: ("int8", 1), 9: ("uint8", 1),
                10: ("int16", 2), 11: ("uint16", 2), 12: ("int32", 4), 13: ("uint32", 4), 14: ("int64", 8),
                15: ("uint64", 8)}


def mat_variables(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each variable of a MATLAB 5 file: its declared shape and class, read from the headers
    alone. A compressed variable is inflated 1 MiB at a time, counted and thrown away, and
    refused when it inflates past what it declares: scipy would read as much as the data's own
    tag says, so a small file could claim gigabytes. Refused too: a variable over MAX_BYTES.
    Raises ValueError (or struct.error) for what it cannot read."""
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    with open(path, "rb") as f:
        endian = {b"IM": "<", b"MI": ">"}.get(f.read(128)[126:128])
        if endian is None:
            raise ValueError("not a MATLAB 5 file")
        while len(tag := f.read(8)) == 8:
            kind, nbytes = struct.unpack(f"{endian}II", tag)
            if kind == 14:  # miMATRIX, stored as it is: what it holds cannot exceed the file
                name, shape, cls, _ = _mat_matrix_header(f.read(min(nbytes, 512)), endian)
                f.seek(nbytes - min(nbytes, 512) + (-nbytes % 8), os.SEEK_CUR)
            elif kind == 15:  # miCOMPRESSED: a zlib stream holding one miMATRIX
                inflate, left, head, inflated, limit = zlib.decompressobj(), nbytes, b"", 0, None
                while left and (chunk := f.read(min(left, 1 << 16))):
                    left -= len(chunk)
                    while chunk and not inflate.eof:
                        out = inflate.decompress(chunk, 1 << 20)
                        chunk, inflated = inflate.unconsumed_tail, inflated + len(out)
                        if limit is None and len(head) < 520:
                            head += out[:520 - len(head)]
                            if len(head) >= 520 or inflate.eof:
                                name, shape, cls, size = _mat_matrix_header(head[8:], endian)
                                limit = size + 4096  # the matrix's own headers and padding
                        if limit is not None and inflated > limit:
                            raise ValueError(f"variable {name} inflates past the {size:,} bytes it declares")
                f.seek(left, os.SEEK_CUR)
                if limit is None:
                    raise ValueError("a compressed variable too short to hold its header")
            else:
                f.seek(nbytes + (-nbytes % 8), os.SEEK_CUR)
                continue
            found[name] = (shape, cls)
    return found


def _mat_matrix_header(body: bytes, endian: str) -> tuple[str, tuple[int, ...], str, int]:
    """name, shape, class and declared data bytes of a miMATRIX from the start of its body:
    array flags, dimensions, name, each a tagged element (small ones packed into 8 bytes)."""
    parts, at = [], 0
    for _ in range(3):
        kind, nbytes = struct.unpack(f"{endian}II", body[at:at + 8])
        if kind >> 16:  # small element: the size in the upper half, the data in the next 4 bytes
            kind, nbytes = kind & 0xFFFF, kind >> 16
            parts.append(body[at + 4:at + 4 + nbytes])
            at += 8
        else:
            parts.append(body[at + 8:at + 8 + nbytes])
            at += 8 + nbytes + (-nbytes % 8)
    flags, dims, name = parts
    code = struct.unpack(f"{endian}I", flags[:4])[0] & 0xFF
    shape = struct.unpack(f"{endian}{len(dims) // 4}i", dims)
    if code not in _MAT_CLASSES:  # a cell, struct or sparse matrix: no size to read off; the cap holds
        return name.decode("latin1"), tuple(shape), f"class {code}", MAX_BYTES
    cls, itemsize = _MAT_CLASSES[code]
    size = math.prod(shape) * itemsize * (2 if struct.unpack(f"{endian}I", flags[:4])[0] & 0x800 else 1)  # complex: 2
    if size > MAX_BYTES:
        raise ValueError(f"variable {name.decode('latin1')} declares {size:,} bytes; lvm reads at most {MAX_BYTES:,}")
    return name.decode("latin1"), tuple(shape), cls, size
