"""`lvm grade`: check a homework solution against the course's contracts.

    lvm grade homework/q1_vae2d.ipynb     # the question functions defined in a notebook
    lvm grade my_solutions.py             # ... or in a Python file
    lvm grade --reference                 # lvm.homework.solutions, with its tiny budget

From a notebook only imports, function and class definitions and plain assignments are run (the
cells that train, plot or call `*_save_results` are skipped), so grading does not redo the
student's long runs. Each question runs in a child process of its own (`lvm.homework.runner`),
inside a sandbox (`lvm.homework.sandbox`: bubblewrap, or a weaker fallback that says so): it
loads those definitions and calls the question function on a small slice of data, under a
wall-clock limit that covers loading too; its output is captured and capped. The child hands back
plain numeric arrays (`np.savez`), read here as untrusted data (headers checked before any
data, sizes capped, no pickles), and every check runs here, in the parent: the number of values,
shapes, value ranges, finite losses that fall, one test row per epoch plus one at initialisation
(one per epoch without it passes with a note, as the course's helper accepts it), images in
[0, 255] (0/1 for Q4b), reconstructions that pair real test images; and what the answers mean,
wherever a truth is known (-ELBO = recon + KL with KL >= 0, Q1's -ELBO not below the data's own
NLL, samples that are not training examples, Q1's noise spread along the data's axes, a latent
that is used; for Q3 and Q4a, reconstructions that resemble their images, samples that vary and
a prior that does not read the code it predicts, by its losses and, for a prior the function
calls on a grid of codes, by the child's causality probe, `lvm.homework.probe`). Each failure
names the likely mistake. The child's exit status and anything its code patches count for
nothing.

One PASS/FAIL (or NOTE) line per check; exit status 0 when every question passes, 1 otherwise.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
import numpy as np

from lvm.engine.errors import UserError

MAGIC_PREFIXES = ("%", "!")
OUTPUT_CAP = 8 * 1024  # bytes of a child's output kept (its tail); the rest is read and dropped
RESULT_CAP = 64 << 20  # bytes of the child's outputs.npz (compressed) read back
ARRAY_CAP = 4 << 20  # values in one returned array (the largest the course asks for: 307,200)
TOTAL_CAP = 8 << 20  # values in all returned arrays together: at most 64 MiB once they are float64
REPORT_CAP = 1 << 20  # bytes of the child's result.json


# ----------------------------------------------------------------------------- results


@dataclass
class Check:
    ok: bool
    message: str
    note: bool = False  # passes, but worth saying


@dataclass
class Result:
    question: str
    title: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0
    output: str = ""  # the tail of what the student's code printed

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, ok: bool, message: str) -> bool:
        self.checks.append(Check(bool(ok), message))
        return bool(ok)

    def fail(self, message: str) -> None:
        self.checks.append(Check(False, message))

    def note(self, message: str) -> None:
        self.checks.append(Check(True, message, note=True))


# ----------------------------------------------------------------------------- reading a solution (no code runs)


def read_sources(path: str | Path) -> list[tuple[str, str]]:
    """The code of a notebook (.ipynb, one entry per code cell) or Python file, as (where, source)
    pairs. Anything unreadable is a UserError: one line, exit 2."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if path.suffix not in (".ipynb", ".py"):
        raise UserError(f"{path}: expected a notebook (.ipynb) or a Python file (.py)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read it ({type(e).__name__}: {e})") from None
    if path.suffix == ".py":
        return [(str(path), text)]
    try:
        nb = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise UserError(f"{path}: not a readable notebook (invalid JSON: {e})") from None
    cells = nb.get("cells") if isinstance(nb, dict) else None
    if not isinstance(cells, list) or not all(isinstance(c, dict) for c in cells):
        raise UserError(f"{path}: not a readable notebook (no list of cells)")
    sources = []
    for i, cell in enumerate(cells):
        if cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list) and all(isinstance(s, str) for s in src):
            src = "".join(src)
        if not isinstance(src, str):
            raise UserError(f"{path}: not a readable notebook (cell {i + 1} has no source text)")
        sources.append((f"{path} cell {i + 1}", src))
    return sources


def _filtered(tree: ast.Module, skip_calls: set[str]) -> ast.Module:
    """Keep imports, definitions, and assignments that call none of `skip_calls` (those train),
    no `*save_results*`, `visualize_*` or `show*` (those plot) and no data loader."""

    def calls_skipped(node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                f = sub.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if (name in skip_calls or "save_results" in name or name.startswith(("visualize", "show"))
                        or name.endswith("_data")):
                    return True
        return False

    def definitional(node: ast.AST) -> bool:
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Pass)):
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            return node.value is not None and not calls_skipped(node.value)
        if isinstance(node, (ast.If, ast.Try)):  # `if torch.cuda.is_available(): device = ...`
            body = node.body + node.orelse + getattr(node, "finalbody", [])
            body += [s for h in getattr(node, "handlers", []) for s in h.body]
            return not calls_skipped(getattr(node, "test", ast.Pass())) and all(definitional(s) for s in body)
        return False

    return ast.Module(body=[node for node in tree.body if definitional(node)], type_ignores=[])


def definitions(sources: list[tuple[str, str]]) -> tuple[list[tuple[str, ast.Module]], list[str]]:
    """The definitional part of each source (what grading runs), and notes on what did not parse."""
    skip = {q.function for q in QUESTIONS.values()}
    modules, notes = [], []
    for where, src in sources:
        src = "\n".join("" if line.lstrip().startswith(MAGIC_PREFIXES) else line for line in src.splitlines())
        try:
            tree = ast.parse(src, filename=where)
        except SyntaxError as e:
            notes.append(f"{where}: syntax error on line {e.lineno}: {e.msg}; cell skipped")
            continue
        except (ValueError, RecursionError, MemoryError) as e:
            notes.append(f"{where}: cannot parse ({type(e).__name__}); cell skipped")
            continue
        modules.append((where, _filtered(tree, skip)))
    return modules, notes


def defined_names(modules: list[tuple[str, ast.Module]]) -> set[str]:
    """Names the definitions would bind at top level, read from the syntax tree alone."""
    names: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names.update((a.asname or a.name).split(".")[0] for a in node.names)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names.update(t.id for t in targets if isinstance(t, ast.Name))
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", [])
                      + [s for h in getattr(node, "handlers", []) for s in h.body])

    for _, module in modules:
        visit(module.body)
    return names


# ----------------------------------------------------------------------------- checks (on the child's arrays)


def _shape(result: Result, a: np.ndarray | None, name: str, expected: tuple, meaning: str) -> bool:
    """expected: ints, or None for any positive size."""
    if a is None:
        return False
    want = "(" + ", ".join("N" if e is None else str(e) for e in expected) + ")"
    ok = a.ndim == len(expected) and all(e is None and s > 0 or s == e for s, e in zip(a.shape, expected))
    return result.check(ok, f"{name} has shape {tuple(a.shape)}" + ("" if ok else f"; expected {want}: {meaning}"))


def _finite(result: Result, a: np.ndarray, name: str) -> bool:
    bad = int((~np.isfinite(a)).sum())
    return result.check(bad == 0, f"{name}: all finite" if not bad else f"{name} has {bad} NaN or infinite values")


def _curves(result: Result, train: np.ndarray, test: np.ndarray, name: str) -> None:
    """The course's curves: one training row per minibatch and one test row after every epoch,
    plus one at initialisation (the course asks for it; its helper accepts a table without it,
    so that passes with a note), all finite, and the test loss falls."""
    if not (_finite(result, train, f"{name} train losses") & _finite(result, test, f"{name} test losses")):
        return
    n_train, n_test = len(train), len(test)
    with_initial = n_test >= 2 and n_train % (n_test - 1) == 0
    per_epoch = n_train % n_test == 0
    if with_initial and per_epoch:
        # Both readings fit the counts: is test row 0 the loss before training (near the first
        # minibatch's) or after the first epoch (near that epoch's last minibatches')?
        per = n_train // n_test  # minibatches per epoch, if there is no row at initialisation
        end_of_first = train.reshape(n_train, -1)[max(0, per - 3): per, 0]
        row0, first = test[0].ravel()[0], train[0].ravel()[0]
        with_initial = abs(row0 - first) <= abs(row0 - float(np.mean(end_of_first)))
    if with_initial:
        initial = True
        result.check(True, f"{name}: {n_train} training minibatches over {n_test - 1} epochs, test losses at "
                     f"initialisation and after each")
    elif per_epoch:
        initial = False
        result.note(f"{name}: {n_test} test rows for {n_train} training minibatches read as one per epoch, with "
                    "none at initialisation; the course's helper accepts that, but asks for a row before training too")
    else:
        result.fail(f"{name}: {n_train} training rows are neither {n_test - 1} epochs of minibatches (test losses at "
                    f"initialisation plus one per epoch) nor {n_test} (one test row per epoch)")
        return
    first = test[0].ravel()[0] if initial else train[0].ravel()[0]
    last = test[-1].ravel()[0]
    start = "at initialisation" if initial else "on the first training minibatch"
    result.check(last < first, f"{name}: test loss falls, {first:.4f} -> {last:.4f}" if last < first else
                 f"{name}: test loss did not fall ({first:.4f} {start}, {last:.4f} at the end)")


def _elbo_terms(result: Result, train: np.ndarray, test: np.ndarray) -> None:
    """In every finite row of both tables: -ELBO = recon + KL, and the KL is >= 0 (and not 0
    everywhere, which means it was never computed)."""
    rows = np.concatenate([train, test])
    rows = rows[np.isfinite(rows).all(1)]
    if not len(rows):
        return
    neg_elbo, recon, kl = rows[:, 0], rows[:, 1], rows[:, 2]
    # float32 losses summed in another order differ by ~1e-6 relative; 1e-3 leaves room for that
    off = np.abs(neg_elbo - (recon + kl)) > 1e-3 * np.maximum(1.0, np.abs(neg_elbo))
    result.check(not off.any(), "-ELBO = recon + KL in every row" if not off.any() else
                 f"column 0 is not recon (column 1) + KL (column 2) in {int(off.sum())} of {len(rows)} rows: is the KL "
                 "left out of the -ELBO, or scaled (halved, a beta) in one column and not the other?")
    negative = kl < -1e-3 * np.maximum(1.0, np.abs(neg_elbo))
    if negative.any():
        result.fail(f"the KL is negative in {int(negative.sum())} of {len(rows)} rows (down to {kl.min():.4g}), "
                    "and a KL divergence never is: is its sign flipped? For a diagonal Gaussian against N(0, I) "
                    "it is 0.5 * sum(mu^2 + sigma^2 - 1 - log sigma^2)")
    elif not kl.any():
        result.fail("the KL is exactly 0 in every row, at initialisation too: is the KL term left out of the loss "
                    "(and of the -ELBO)?")
    else:
        result.check(True, "KL >= 0 in every row")


def _elbo_curves(result: Result, tr: np.ndarray | None, te: np.ndarray | None, name: str) -> bool:
    ok = _shape(result, tr, "train_losses", (None, 3), "one row per minibatch: -ELBO, reconstruction, KL")
    ok &= _shape(result, te, "test_losses", (None, 3), "one row after every epoch (and one at initialisation): "
                 "-ELBO, reconstruction, KL")
    if ok:
        _elbo_terms(result, tr, te)
        _curves(result, tr, te, name)
    return ok


def _images(result: Result, a: np.ndarray | None, name: str, size: int, channels: int, binary: bool = False) -> bool:
    meaning = f"100 images, {size} x {size}, {channels} channel{'s' * (channels > 1)} last"
    if not _shape(result, a, name, (100, size, size, channels), meaning) or not _finite(result, a, name):
        return False
    lo, hi = float(a.min()), float(a.max())
    if binary:
        ok = bool(np.isin(a, (0.0, 1.0)).all())
        return result.check(ok, f"{name}: values are 0/1" if ok else f"{name}: values should be 0 or 1, found {lo:.3g}..{hi:.3g} (probabilities? draw 0/1 "
                            "from them, or threshold them)")
    ok = lo >= -1e-3 and 1.0 < hi <= 255 + 1e-3  # 0..1 is in range, but it is not the course's scale
    if not result.check(ok, f"{name}: values in [0, 255]" if ok else f"{name}: values should lie in [0, 255], found "
                        f"{lo:.3g}..{hi:.3g}" + (" (looks like [0, 1] or [-1, 1]: multiply to 0..255)" if hi <= 1.0 else "")):
        return False
    spread = float(a.reshape(len(a), -1).std(1).mean())
    return result.check(spread > 0.5, f"{name}: images are not blank" if spread > 0.5 else
                        f"{name}: every image is a flat colour (mean per-image std {spread:.3g})")


def _pairs(result: Result, recon: np.ndarray, test_data: np.ndarray, name: str) -> bool:
    """The course lays reconstructions out as 50 pairs: a test image, then its reconstruction."""
    known = {np.asarray(x, np.uint8).tobytes() for x in test_data}
    originals = np.clip(np.round(recon[0::2]), 0, 255).astype(np.uint8)
    found = sum(x.tobytes() in known for x in originals)
    return result.check(found == 50, f"{name}: even rows are 50 test images, odd rows their reconstructions" if found == 50
                 else f"{name}: only {found} of the 50 even rows (0, 2, 4, ...) are test images; expected pairs "
                 "(test image, its reconstruction)")


# ----------------------------------------------------------------------------- what the answers mean


def copied(samples: np.ndarray, train: np.ndarray) -> int:
    """How many samples are exact copies of a training example (images compared as uint8)."""
    if samples.ndim > 2:  # images in [0, 255] (0/1 for Q4b): compare as the data is stored
        as_data = lambda a: np.clip(np.round(a), 0, 255).astype(np.uint8).reshape(len(a), -1)  # noqa: E731
        known = {row.tobytes() for row in as_data(train)}
        return sum(row.tobytes() in known for row in as_data(samples))
    known = {row.tobytes() for row in np.asarray(train, np.float32)}
    return sum(row.tobytes() in known for row in np.asarray(samples, np.float32))


def _not_copies(result: Result, samples: np.ndarray, train: np.ndarray, name: str, limit: float) -> None:
    n = copied(samples, train)
    ok = n <= limit * len(samples)
    result.check(ok, f"{name}: not copies of training examples ({n} of {len(samples)} are)" if ok else
                 f"{name}: {n} of {len(samples)} are copies of training examples: samples must be drawn from the "
                 "model (z from the prior, then the decoder), not taken from the data")


# The latent of Q2 and Q4b is used when the KL at the end is above this (nats per image). Measured:
# the seeded reference at its tiny grading budget ends at 0.13 (Q2a, 8 steps), 0.27 (Q2b) and 0.66
# (Q4b); a latent that carries nothing (no reparameterisation: the encoder gets no gradient from
# the reconstruction; or posterior collapse) drives the KL to its floor, 0.
LATENT_KL = 0.02


def _latent_used(result: Result, test_losses: np.ndarray | None) -> None:
    if test_losses is None or test_losses.ndim != 2 or test_losses.shape[1] != 3 or not np.isfinite(test_losses[-1]).all():
        return
    kl = float(test_losses[-1, 2])
    ok = kl >= LATENT_KL
    result.check(ok, f"the latent is used (final test KL {kl:.3g} nats)" if ok else
                 f"the latent carries nothing (final test KL {kl:.3g} < {LATENT_KL} nats): is z sampled without the "
                 "reparameterisation (mu + sigma * eps), so the encoder learns nothing from the reconstruction? "
                 "Or has the posterior collapsed (free bits)?")


# ----------------------------------------------------------------------------- the questions


@dataclass
class Question:
    name: str  # q1, q2a, ...
    function: str  # the function the student writes
    title: str
    returns: tuple[str, ...]
    inputs: Callable[[int], dict]  # train size -> {"train", "test", "args"}
    check: Callable[[Result, list, dict], None]  # (result, returned arrays, inputs)


def _q1_inputs(size: int) -> dict:
    from lvm.homework.helpers import q1_sample_data

    train, test = q1_sample_data("a", 1)
    return {"train": train[:size], "test": test[: max(100, size // 4)], "args": ["a", 1]}


def _image_inputs(size: int) -> dict:
    from lvm.homework.helpers import dataset_hwc

    # the generated shapes: grading needs no files and never the course's full datasets
    train, test = dataset_hwc("shapes", size, max(100, size // 4))
    return {"train": train, "test": test, "args": [1]}


def _binary_inputs(size: int) -> dict:
    """Binarised MNIST 28 x 28 from the course's mnist.pkl when it is there, else a stand-in."""
    from lvm.homework.helpers import dataset_hwc

    for name in ("mnist-binary", "fashion-mnist-binary", "shapes-binary"):
        try:
            train, test = dataset_hwc(name, size, max(100, size // 4))
            return {"train": train, "test": test, "args": []}
        except UserError:
            continue
    raise AssertionError("shapes-binary is generated and cannot be missing")


def q1_density(part: str, dset_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the Gaussian that Q1's data is drawn from (lvm.engine.data.gaussians:
    shift + (N(0, I) * scale) @ R, R the 45-degree rotation in part a)."""
    shift, scale = (np.array([1.0, 2.0]), np.array([5.0, 1.0])) if dset_id == 1 else \
        (np.array([-1.0, 2.0]), np.array([1.0, 5.0]))
    s = np.sqrt(2) / 2
    rotation = np.array([[s, s], [-s, s]]) if part == "a" else np.eye(2)
    return shift, rotation.T @ np.diag(scale ** 2) @ rotation


def q1_nll(x: np.ndarray, part: str, dset_id: int) -> float:
    """The data's own mean negative log-likelihood of the points `x` (nats per point)."""
    mean, cov = q1_density(part, dset_id)
    d = np.asarray(x, np.float64) - mean
    return float(np.mean(0.5 * np.log(np.linalg.det(2 * np.pi * cov)) + 0.5 * np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)))


# How far below the data's NLL a test -ELBO may go. Measured on the graded slice (q1 a 1, 2,000
# training points, 500 test points that are also training points; true NLL 4.424): the reference
# at the course's budget dipped to 0.008 below it (4.416, epoch 17 of 20: a one-sample Monte-Carlo
# -ELBO is noisy), a Gaussian refitted to the 2,000 points scores 0.002 below, and a plain student
# VAE after 80 epochs stays 0.033 above. The mistakes land far below: the KL reading the log-std
# as a log-variance at 1.54 below (80 epochs), the KL left out at 3.04 below (20 epochs).
Q1_BOUND_TOLERANCE = 0.1
# samples_noise's variance along each axis, as a share of the data's: honest answers measured from
# 0.70 (3 epochs, latent unused) to 1.04; half or twice is wrong (no noise, or a scale read wrongly).
Q1_VARIANCE_RANGE = (0.5, 2.0)
# Noise only adds spread (Var[mu(z) + sigma(z) eps] = Var[mu(z)] + E[sigma^2]); 1,000-point
# variances err by ~6 % each, so 0.8 leaves room: the reference at the course's budget has 1.11.
Q1_NOISE_SPREAD = 0.8
# ... and noise spreads them along every direction: samples_noise's variance along each principal
# axis of the data, as a share of the data's, is at least this. Measured on the four Q1 datasets
# (a student VAE, 3 to 80 epochs): honest samples with noise 0.46 at the least (a1, 5 epochs:
# an undertrained decoder spreads evenly), those without noise 0.03 at the most along the data's
# minor axis, once the latent carries the major one (a-datasets, 20 epochs on: then the total
# spread of the two differs by only 5 to 10 %, and only this check tells a swap).
Q1_AXIS_FLOOR = 0.2


def _check_q1(result: Result, out: list, inputs: dict) -> None:
    tr, te, noise, nonoise = out
    part, dset_id = inputs["args"]
    if _elbo_curves(result, tr, te, "q1"):
        finite = te[np.isfinite(te).all(1)]
        nll = q1_nll(inputs["test"], part, dset_id)
        if len(finite):
            low = float(finite[:, 0].min())
            ok = low >= nll - Q1_BOUND_TOLERANCE
            result.check(ok, f"q1: test -ELBO stays above the data's own NLL ({low:.3f} >= {nll:.3f} - "
                         f"{Q1_BOUND_TOLERANCE})" if ok else
                         f"q1: your -ELBO is below the data's own NLL ({low:.3f} < {nll:.3f} on the graded test "
                         "points), which no bound can be: check the KL term (a log-std used as a log-variance?) and "
                         "that the -ELBO includes it")
            last = float(finite[-1, 0])
            if last > 3 * nll:
                result.fail(f"q1: final test -ELBO {last:.3f} is over 3 times the data's NLL {nll:.3f}: losses summed "
                            "over a batch instead of averaged per point, or barely trained?")
    _q1_samples(result, noise, nonoise, inputs["train"])


def _q1_samples(result: Result, noise: np.ndarray | None, nonoise: np.ndarray | None, train: np.ndarray) -> None:
    """Q1's samples: centred on the data, not copies of it; with noise at least as spread as
    without, along every principal axis of the data too, and about as widely as the data."""
    good = {}
    for a, n in ((noise, "samples_noise"), (nonoise, "samples_nonoise")):
        if _shape(result, a, n, (1000, 2), "1000 points in 2-D") and _finite(result, a, n):
            dist = np.abs(a.mean(0) - train.mean(0)) / train.std(0)
            result.check(dist.max() < 2, f"{n}: centred on the data" if dist.max() < 2 else
                         f"{n}: mean {a.mean(0).round(2).tolist()} is far from the data's {train.mean(0).round(2).tolist()}")
            _not_copies(result, a, train, n, 0.05)
            good[n] = a
    if len(good) == 2:
        wide, narrow = np.trace(np.cov(noise.T)), np.trace(np.cov(nonoise.T))
        ok = wide >= Q1_NOISE_SPREAD * narrow
        result.check(ok, f"samples_noise spread at least as widely as samples_nonoise (variance {wide:.3g} vs "
                     f"{narrow:.3g})" if ok else f"samples_noise spread less than samples_nonoise (variance {wide:.3g} "
                     f"vs {narrow:.3g}): are the two swapped? With noise, mu(z) + sigma(z) * eps spreads at least as "
                     "widely as mu(z)")
    if "samples_noise" not in good:
        return
    scale, axes = np.linalg.eigh(np.cov(np.asarray(train, np.float64).T))  # the data's principal axes
    along = (noise @ axes).var(0) / scale
    ok = bool((along >= Q1_AXIS_FLOOR).all())
    result.check(ok, f"samples_noise: variance along the data's principal axes {along.round(2).tolist()} of the "
                 "data's" if ok else f"samples_noise: variance along the data's principal axes "
                 f"{along.round(3).tolist()} of the data's, below {Q1_AXIS_FLOOR} along one: points on a curve, as "
                 "mu(z) without noise lies; are samples_noise and samples_nonoise swapped, or the decoder's noise "
                 "left out?")
    ratio = noise.var(0) / train.var(0)
    lo, hi = Q1_VARIANCE_RANGE
    ok = bool(((ratio >= lo) & (ratio <= hi)).all())
    result.check(ok, f"samples_noise: variance per axis {ratio.round(2).tolist()} of the data's" if ok else
                 f"samples_noise: variance per axis {ratio.round(2).tolist()} of the data's, outside {lo}..{hi}: "
                 "is the decoder's noise left out, or its log-std read as a variance (or the other way)?")


def _check_q2(part: str) -> Callable:
    def check(result: Result, out: list, inputs: dict) -> None:
        tr, te, samples, recon, interp = out
        if _elbo_curves(result, tr, te, f"q2_{part}"):
            _latent_used(result, te)
        if _images(result, samples, "samples", 32, 3):
            _not_copies(result, samples, inputs["train"], "samples", 0.5)
        if _images(result, recon, "reconstructions", 32, 3):
            _pairs(result, recon, inputs["test"], "reconstructions")
        _images(result, interp, "interpolations", 32, 3)

    return check


# Q3 and Q4a. Reconstructions explain at least this share of their test images' variation, R^2 =
# 1 - sum (x - x_hat)^2 / sum (x - mean x)^2 over the 50 pairs. Measured on the grader's 512
# shapes: the reference at its tiny budget 0.56 and 0.54 (two
# seeds); without the straight-through gradient
# (z_q = codebook[idx] used directly: the encoder gets nothing from the reconstruction, only the
# commitment term) -0.77 and -0.48, every reconstruction nearly the same image.
VQ_RECON_R2 = 0.2
# The prior's final test NLL is at least this share of its first (at initialisation: about log K
# for a uniform start). Measured on the grader's 512 shapes (K = 32): the reference's PixelCNN 72 %
# after 2 epochs, 39 % after 10, 32 % after 30; with a first mask that sees the code it predicts
# (type B in place of A) 4 % after 10 epochs and 0.2 % after 30 (0.008 nats per code): it copies
# its input. Only claimed when the reconstructions show that the codes carry the images.
PRIOR_FLOOR = 0.1
# The samples vary (per pixel, across the 100) at least this share of what the reconstructions
# do. Measured: the reference 0.78 to 1.04 (PixelCNN and Gated, 2 to 30 prior epochs, seeds 0, 1);
# a Gated prior that sees the current code 0.39 (10 epochs); codes drawn by argmax 0 (every
# sample the same image).
VQ_SAMPLE_SPREAD = 0.25


def _check_vqvae(result: Result, out: list, inputs: dict) -> None:
    *losses, samples, recon = out
    # (N, 1) columns are accepted as (N,): the course's helper only indexes [-1]
    vq_tr, vq_te, pr_tr, pr_te = (a.squeeze(-1) if a is not None and a.ndim == 2 and a.shape[-1] == 1 else a
                                  for a in losses)
    curves = {}
    for (tr, te), n in (((vq_tr, vq_te), "vqvae"), ((pr_tr, pr_te), "prior")):
        ok = _shape(result, tr, f"{n}_train_losses", (None,), "one loss per minibatch")
        ok &= _shape(result, te, f"{n}_test_losses", (None,), "one loss after every epoch (and one at initialisation)")
        if ok:
            _curves(result, tr, te, n)
            curves[n] = (tr, te)
    sampled = _images(result, samples, "samples", 32, 3)
    if sampled:
        _not_copies(result, samples, inputs["train"], "samples", 0.5)
    if _images(result, recon, "reconstructions", 32, 3) and _pairs(result, recon, inputs["test"], "reconstructions"):
        if _vq_reconstructions(result, recon):
            if sampled:
                _samples_vary(result, samples, recon[1::2])
            if "prior" in curves:
                _prior_not_peeking(result, *curves["prior"])


def _vq_reconstructions(result: Result, recon: np.ndarray) -> bool:
    """The reconstructions (odd rows) resemble their test images (even rows)."""
    x, x_hat = recon[0::2].astype(np.float64), recon[1::2].astype(np.float64)
    spread = float(((x - x.mean(0)) ** 2).sum())
    r2 = 1 - float(((x - x_hat) ** 2).sum()) / max(spread, 1e-9)
    return result.check(r2 >= VQ_RECON_R2, f"reconstructions: explain {r2:.2f} of the test images' variation (R^2)"
                        if r2 >= VQ_RECON_R2 else f"reconstructions: explain only {r2:.2f} of the test images' "
                        f"variation (R^2 < {VQ_RECON_R2}), as if the codes said little about the image: does the "
                        "encoder learn from the reconstruction? The VQ-VAE needs the straight-through gradient, "
                        "z_e + (z_q - z_e).detach(); with z_q = codebook[idx] alone the encoder never learns")


def _samples_vary(result: Result, samples: np.ndarray, recon: np.ndarray) -> None:
    """The prior's samples vary from one to the next about as much as the reconstructions do."""
    spread = lambda a: float(np.asarray(a, np.float64).std(0).mean())  # noqa: E731 - per pixel, over the images
    share = spread(samples) / max(spread(recon), 1e-9)
    result.check(share >= VQ_SAMPLE_SPREAD, f"samples: vary {share:.2f} times as much as the reconstructions"
                 if share >= VQ_SAMPLE_SPREAD else f"samples: nearly alike (they vary {share:.2f} times as much as "
                 "the reconstructions, per pixel): are the prior's codes taken by argmax instead of drawn from its "
                 "distribution, or does its first mask see the code it predicts, so that every sample copies the "
                 "same blank start?")


def _prior_not_peeking(result: Result, train: np.ndarray, test: np.ndarray) -> None:
    """The prior's test NLL stays above PRIOR_FLOOR of its first: a prior that gets lower on codes
    that carry the images reads the code it predicts."""
    if not (np.isfinite(train).all() and np.isfinite(test).all()) or len(test) < 2:
        return
    first, last = max(float(test[0]), float(train[0])), float(test[-1])
    if first <= 0:
        return
    share = last / first
    result.check(share >= PRIOR_FLOOR, f"prior: final test NLL {share:.0%} of its first" if share >= PRIOR_FLOOR
                 else f"prior: final test NLL {last:.4g} is {share:.1%} of its first ({first:.4g}), lower than a "
                 "prior can go on codes that carry the images: does the first masked convolution see the code it "
                 "predicts? Its mask must be type A (the centre excluded; B only in later layers), so that the "
                 "output at a position never changes with that position's input")


def _check_q4b(result: Result, out: list, inputs: dict) -> None:
    tr, te, samples, recon = out
    if _elbo_curves(result, tr, te, "q4_b"):
        _latent_used(result, te)
    if _images(result, samples, "samples", 28, 1, binary=True):
        _not_copies(result, samples, inputs["train"], "samples", 0.5)
    if _images(result, recon, "reconstructions", 28, 1, binary=True):
        _pairs(result, recon, inputs["test"], "reconstructions")


IMAGE_RETURNS = ("train_losses", "test_losses", "samples", "reconstructions", "interpolations")
VQ_RETURNS = ("vqvae_train_losses", "vqvae_test_losses", "prior_train_losses", "prior_test_losses",
              "samples", "reconstructions")
QUESTIONS: dict[str, Question] = {
    "q1": Question("q1", "q1", "VAE on 2-D points (part a, dataset 1)",
                   ("train_losses", "test_losses", "samples_noise", "samples_nonoise"), _q1_inputs, _check_q1),
    "q2a": Question("q2a", "q2_a", "image VAE (shapes)", IMAGE_RETURNS, _image_inputs, _check_q2("a")),
    "q2b": Question("q2b", "q2_b", "VLAE, a VAE with an autoregressive-flow prior (shapes)", IMAGE_RETURNS,
                    _image_inputs, _check_q2("b")),
    "q3": Question("q3", "q3", "VQ-VAE with a PixelCNN prior (shapes)", VQ_RETURNS, _image_inputs, _check_vqvae),
    "q4a": Question("q4a", "q4_a", "VQ-VAE with a Gated PixelCNN prior (shapes)", VQ_RETURNS, _image_inputs,
                    _check_vqvae),
    "q4b": Question("q4b", "q4_b", "PixelVAE on binarised MNIST (28 x 28)",
                    ("train_losses", "test_losses", "samples", "reconstructions"), _binary_inputs, _check_q4b),
}
# Training-set sizes the grader uses: small, so that a course-budget solution finishes in minutes.
TRAIN_SIZES = {"q1": 2000, "q2a": 512, "q2b": 512, "q3": 512, "q4a": 512, "q4b": 256}


def check_outputs(question: str, returned: list | tuple | None, inputs: dict, bad: dict | None = None,
                  result: Result | None = None) -> Result:
    """Every check of `question` on the values a question function returned (numeric arrays or
    anything array-like) for `inputs`; `bad` names values the child could not turn into arrays."""
    spec = QUESTIONS[question]
    result = result or Result(question, spec.title)
    if not isinstance(returned, (list, tuple)) or len(returned) != len(spec.returns):
        got = f"{len(returned)} values" if isinstance(returned, (list, tuple)) else f"a {type(returned).__name__}"
        result.fail(f"{spec.function} returned {got}; expected {len(spec.returns)}: {', '.join(spec.returns)}")
        return result
    arrays = []
    for i, (value, name) in enumerate(zip(returned, spec.returns)):
        why = (bad or {}).get(str(i))
        if why is None and value is not None:
            try:
                value = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError) as e:
                why = f"{type(value).__name__}: {e}"
        if why is not None or value is None:
            result.fail(f"{name} is not an array of numbers ({why or 'None'})")
            value = None
        arrays.append(value)
    spec.check(result, arrays, inputs)
    return result


# ----------------------------------------------------------------------------- running a question in a child


class _Tail(threading.Thread):
    """Drain a pipe to its end, keeping only the last OUTPUT_CAP bytes."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.kept, self.total = stream, b"", 0

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read(4096), b""):
            self.total += len(chunk)
            self.kept = (self.kept + chunk)[-OUTPUT_CAP:]

    def text(self) -> str:
        dropped = self.total - len(self.kept)
        head = f"[{dropped} earlier bytes dropped]\n" if dropped else ""
        return head + self.kept.decode("utf-8", "replace")


def run_question(source: str, question: str, train_size: int, timeout: float) -> Result:
    """Grade one question: `source` is a file's path or "reference". The child runs in a sandbox
    (`lvm.homework.sandbox`); every check runs here, on what it left in its output folder."""
    import lvm
    from lvm.homework import sandbox

    spec = QUESTIONS[question]
    result = Result(question, spec.title)
    start = time.perf_counter()
    inputs = spec.inputs(train_size)
    student = None if source == "reference" else Path(source).resolve()
    box = sandbox.Box(prefix=f"lvm-grade-{question}-")
    try:
        np.savez(box.inputs / "inputs.npz", train=inputs["train"], test=inputs["test"])
        job = {"source": source, "function": spec.function, "args": inputs["args"]}
        if student is not None:  # a copy the child can read (as nobody, in a box), named as the student named it
            copy = box.inputs / ("solution" + student.suffix)
            shutil.copyfile(student, copy)
            job.update(source=box.inside(copy), shown=str(student))
        (box.inputs / "job.json").write_text(json.dumps(job))
        lvm_root = str(Path(lvm.__file__).resolve().parent.parent)  # the child imports this very lvm
        proc = box.start([sys.executable, "-m", "lvm.homework.runner", box.inside(box.inputs), box.inside(box.outputs)],
                         timeout, lvm_root)
        tail = _Tail(proc.stdout)
        tail.start()
        try:
            code = proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out, code = True, None
        box.stop()  # on time out, and any process the student's code left behind
        tail.join(timeout=5)
        result.output = tail.text()
        result.seconds = time.perf_counter() - start
        if timed_out:
            result.fail(f"{spec.function} did not finish within {timeout:g} s (loading the file and training on "
                        f"{train_size} examples) and was stopped: an endless loop, or a budget far above the course's?")
            return result
        _read_child(result, box.outputs, spec, inputs, code)
    finally:
        box.stop()  # again, should the grader itself be interrupted (Ctrl-C) while the child runs
        box.close()
    return result


def _open_plain(path: Path, cap: int):
    """`path` opened for reading if it is a regular file (not a link, a FIFO or a device the child
    put there) of at most `cap` bytes; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size > cap:
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


class ResultError(ValueError):
    """The child's arrays are not what they claim, or too large to read."""


def read_arrays(path: Path, count: int, cap_elements: int = ARRAY_CAP, cap_total: int = TOTAL_CAP) -> list:
    """out0 ... out{count-1} from the child's .npz, read as untrusted data: each array's header
    (dtype, shape) is checked before any of its data is read; numbers only (no pickles, no
    objects), at most `cap_elements` values each and `cap_total` in all, so that a small file
    that declares huge arrays (a zip bomb) costs nothing. Missing arrays are None."""
    import zipfile

    from numpy.lib import format as npy

    f = _open_plain(path, RESULT_CAP)
    if f is None:
        raise ResultError(f"missing, not a plain file, or over {RESULT_CAP >> 20} MiB")
    out, total = [], 0
    with f, zipfile.ZipFile(f) as z:
        names = set(z.namelist())
        for i in range(count):
            if f"out{i}.npy" not in names:
                out.append(None)
                continue
            with z.open(f"out{i}.npy") as member:
                version = npy.read_magic(member)
                if version not in ((1, 0), (2, 0)):
                    raise ResultError(f"out{i}: .npy version {version}")
                header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                shape, fortran, dtype = header(member)
                if dtype.hasobject or dtype.kind not in "biuf" or dtype.itemsize > 8:
                    raise ResultError(f"out{i}: dtype {dtype}")
                size = int(np.prod(shape, dtype=np.int64)) if shape else 1
                total += size
                if size > cap_elements or total > cap_total:
                    raise ResultError(f"out{i}: {size} values declared; at most {cap_elements} per array and "
                                      f"{cap_total} in all are read")
                data = member.read(size * dtype.itemsize)
                if len(data) != size * dtype.itemsize:
                    raise ResultError(f"out{i}: shorter than its header says")
                out.append(np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C"))
    return out


def _child_report(path: Path) -> dict | None:
    """result.json as written by the runner, or None when it is missing or not of that form
    (the student's code runs in that process and could have written anything there)."""
    f = _open_plain(path, REPORT_CAP)
    if f is None:
        return None
    try:
        with f:
            report = json.loads(f.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(report, dict) or report.get("status") not in ("returned", "failed"):
        return None
    notes, count, bad = report.get("notes") or [], report.get("count"), report.get("bad") or {}
    if not (isinstance(notes, list) and all(isinstance(n, str) for n in notes) and isinstance(bad, dict)
            and (count is None or isinstance(count, int) and 0 <= count <= 100)):
        return None
    return {"status": report["status"], "notes": notes, "count": count, "bad": {str(k): str(v) for k, v in bad.items()},
            "message": str(report.get("message", "failed")), "type": str(report.get("type")),
            "probes": _probes(report.get("probes"))}


def _probes(found) -> list[dict]:
    """The causality probes of the child's report (`lvm.homework.probe`) that are of their form."""
    keys = ("positions", "self", "earlier")
    if not isinstance(found, list):
        return []
    return [{"module": str(p.get("module"))[:60], **{k: p[k] for k in keys}} for p in found[:8]
            if isinstance(p, dict) and all(isinstance(p.get(k), int) and 0 <= p[k] <= 4096 for k in keys)
            and p["positions"] > 0]


def _causal(result: Result, probes: list[dict]) -> None:
    """Each prior the question function built: its output at a position never changes with the
    code at that position or after it."""
    for p in probes:
        name, n = p["module"], p["positions"]
        if p["self"]:
            result.fail(f"prior ({name}): its output at a position changes with that position's own code ({p['self']} "
                        f"of {n} positions probed): the first masked convolution sees the code it predicts. Its mask "
                        "must be type A (the centre excluded; B only in later layers)")
        elif p["earlier"]:
            result.fail(f"prior ({name}): its output at a position changes with a later code ({p['earlier']} of {n} "
                        "positions probed): a mask lets it see the future (a mask off by one, or a row or column "
                        "the wrong way round?)")
        else:
            result.check(True, f"prior ({name}): the output at each of {n} positions depends on earlier codes only")


def _read_child(result: Result, job: Path, spec: Question, inputs: dict, code: int) -> None:
    """Turn the child's two files into checks; a missing or forged file is a failure, never a pass."""
    report = _child_report(job / "result.json")
    if report is None:
        how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
        last = [line for line in result.output.strip().splitlines() if line.strip()][-1:]
        result.fail(f"the process running {spec.function} {how} before returning anything (os._exit? out of memory?)"
                    + (f"; its last line: {last[0][:200]}" if last else ""))
        return
    for note in report["notes"]:
        result.note(f"while loading: {note[:300]}")
    if report["status"] != "returned":
        result.fail(report["message"][:500])
        return
    if report["count"] is None:
        result.fail(f"{spec.function} returned a {report['type'][:50]}; expected {len(spec.returns)} values: "
                    f"{', '.join(spec.returns)}")
        return
    try:
        returned = read_arrays(job / "outputs.npz", report["count"])
    except ResultError as e:
        result.fail(f"{spec.function}'s return values could not be read back ({e})")
        return
    except Exception as e:  # noqa: BLE001 - a file the student's process could have written: data, never trusted
        result.fail(f"{spec.function}'s return values could not be read back ({type(e).__name__})")
        return
    try:
        check_outputs(spec.name, returned, inputs, report["bad"], result)
        _causal(result, report["probes"])
    except Exception as e:  # noqa: BLE001 - values no check foresaw: one line, never a traceback
        result.fail(f"the grader could not check {spec.function}'s values ({type(e).__name__}: {e})")


def grade_source(source: str, questions: list[str], train_sizes: dict[str, int] | None = None,
                 timeout: float = 600, echo: Callable[[Result], None] | None = None,
                 announce: Callable[[str], None] | None = None) -> list[Result]:
    """Grade `questions` of a file (its path) or of the reference solutions ("reference"), one
    child process each; `announce` is called with each question's name as it starts (a question
    may train for minutes), `echo` with each result as it comes."""
    sizes = {**TRAIN_SIZES, **(train_sizes or {})}
    results = []
    for name in questions:
        if announce:
            announce(name)
        results.append(run_question(source, name, sizes[name], timeout))
        if echo:
            echo(results[-1])
    return results


def format_result(r: Result, show_output: bool = False) -> str:
    lines = [f"{r.question}: {r.title}"]
    lines += [f"  {'NOTE' if c.note else 'PASS' if c.ok else 'FAIL'}  {c.message}" for c in r.checks]
    if show_output and r.output.strip():
        lines += ["  output:"] + [f"    | {line}" for line in r.output.rstrip().splitlines()]
    lines.append(f"  => {r.question} {'PASS' if r.passed else 'FAIL'} ({r.seconds:.1f} s)")
    return "\n".join(lines)


class _GradeCommand(click.Command):
    """`lvm grade --help` ends with the isolation in force on this machine (found when asked)."""

    def get_help(self, ctx: click.Context) -> str:
        from lvm.homework import sandbox

        self.help = f"{GRADE_HELP}\n\n{sandbox.describe()}."
        return super().get_help(ctx)


GRADE_HELP = """Check the question functions of a homework notebook or .py file against the course's contracts
and what the answers mean.

Each question runs in a sandbox of its own (a child process, with a time limit): the student's
code cannot touch the grader, its verdict or (with bubblewrap) any file outside its box."""


@click.command(cls=_GradeCommand, help=GRADE_HELP)
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reference", is_flag=True, help="Grade the reference solutions (lvm.homework.solutions, tiny budget).")
@click.option("-q", "--question", "questions", multiple=True, type=click.Choice(list(QUESTIONS)),
              help="Grade only this question (repeatable) [default: every question function found].")
@click.option("--train-size", type=int, default=None,
              help="Training examples per question [default: 2000 for q1, 512 (256 for q4b) otherwise].")
@click.option("--timeout", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Seconds allowed per question, loading the file included.")
@click.option("--output", "show_output", is_flag=True,
              help=f"Show what each question's code printed (its last {OUTPUT_CAP // 1024} KiB).")
def grade(path, reference, questions, train_size, timeout, show_output):
    from lvm.homework import sandbox

    if reference == (path is not None):
        raise click.UsageError("give a notebook or .py file to grade, or --reference (not both)")
    if train_size is not None and train_size < 100:
        raise click.BadParameter(f"must be at least 100, got {train_size}", param_hint="'--train-size'")
    if reference:
        source, found = "reference", list(QUESTIONS)
        what = "the reference solutions (lvm.homework.solutions, tiny budget)"
        notes: list[str] = []
    else:
        modules, notes = definitions(read_sources(path))
        names = defined_names(modules)
        source, what = str(path), str(path)
        found = [q for q, spec in QUESTIONS.items() if spec.function in names]
    chosen = list(questions) or found
    click.echo(f"grading {what}")
    if chosen and sandbox.kind() != "bwrap":
        click.echo(f"warning: {sandbox.describe()}")
    for note in notes:
        click.echo(f"  note: {note}")
    if not chosen:
        click.echo(f"FAIL  no question function found; expected one of: "
                   f"{', '.join(s.function for s in QUESTIONS.values())}")
        sys.exit(1)
    sizes = {q: train_size for q in chosen} if train_size else None
    started = time.perf_counter()
    results = grade_source(source, chosen, sizes, timeout, echo=lambda r: click.echo(format_result(r, show_output)),
                           announce=lambda name: click.echo(f"... running {name} (limit {timeout:.0f} s; "
                                                            f"{time.perf_counter() - started:.0f} s so far)"))
    click.echo(f"{sum(r.passed for r in results)} of {len(results)} questions pass")
    sys.exit(0 if all(r.passed for r in results) else 1)
