"""`lvm grade`: check a homework solution against the course's contracts.

    lvm grade homework/q1_vae2d.ipynb     # the question functions defined in a notebook
    lvm grade my_solutions.py             # ... or in a Python file
    lvm grade --reference                 # lvm.homework.solutions, with its tiny budget

From a notebook only imports, function and class definitions and plain assignments are run (the
cells that train, plot or call `save_results_*` are skipped), so grading does not redo the
student's long runs. Each question function found is then called on a small slice of data and
its return values are checked: their number, shapes, dtypes and value ranges, finite losses that
fall, one test-loss row at initialisation plus one per epoch, images in [0, 255], reconstructions
that pair real test images. One PASS/FAIL line per check, with the reason; exit status 0 when every
question passes, 1 otherwise.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import io
import json
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from lvm.engine.errors import UserError

MAGIC_PREFIXES = ("%", "!")
_SOURCE = ""  # the file being graded: tracebacks are reported at its lines


# ----------------------------------------------------------------------------- results


@dataclass
class Check:
    ok: bool
    message: str


@dataclass
class Result:
    question: str
    title: str
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def check(self, ok: bool, message: str) -> bool:
        self.checks.append(Check(bool(ok), message))
        return bool(ok)

    def fail(self, message: str) -> None:
        self.checks.append(Check(False, message))


class GradingTimeout(Exception):
    pass


# ----------------------------------------------------------------------------- loading a solution


def _filtered(tree: ast.Module, skip_calls: set[str]) -> ast.Module:
    """Keep imports, definitions, and assignments that call none of `skip_calls` (those train),
    no `save_results_*`, `visualize_*` or `show` (those plot) and no `*_data` loader."""

    def calls_skipped(node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call):
                f = sub.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
                if name in skip_calls or name.startswith(("save_results", "visualize", "show")) or name.endswith("_data"):
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


def load_functions(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Run the definitions of a notebook (.ipynb) or Python file in a fresh namespace; returns the
    namespace and a list of notes (cells that did not parse or run)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    if path.suffix == ".ipynb":
        try:
            nb = json.loads(path.read_text())
            cells = [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
                     for c in nb["cells"] if c.get("cell_type") == "code"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path}: not a readable notebook ({type(e).__name__}: {e})") from None
        sources = [(f"{path} cell {i + 1}", src) for i, src in enumerate(cells)]
    elif path.suffix == ".py":
        sources = [(str(path), path.read_text())]
    else:
        raise UserError(f"{path}: expected a notebook (.ipynb) or a Python file (.py)")

    skip = {q.function for q in QUESTIONS.values()}
    namespace: dict[str, Any] = {"__name__": "homework_solution"}
    notes = []
    for where, src in sources:
        src = "\n".join("" if line.lstrip().startswith(MAGIC_PREFIXES) else line for line in src.splitlines())
        try:
            tree = ast.parse(src, filename=where)
        except SyntaxError as e:
            notes.append(f"{where}: syntax error on line {e.lineno}: {e.msg}; cell skipped")
            continue
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(_filtered(tree, skip), where, "exec"), namespace)  # noqa: S102 - the point
        except Exception as e:  # a failing import or definition: say so, keep going
            notes.append(f"{where}: {type(e).__name__}: {e}")
    return namespace, notes


# ----------------------------------------------------------------------------- checks


def _array(result: Result, value: Any, name: str) -> np.ndarray | None:
    try:
        if hasattr(value, "detach"):  # a torch tensor is accepted too
            value = value.detach().cpu().numpy()
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        result.fail(f"{name} is not an array of numbers ({type(value).__name__}: {e})")
        return None
    return a


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
    """The course's curves: one training row per minibatch, one test row at initialisation and
    one after every epoch, finite, and the test loss falls."""
    if not (_finite(result, train, f"{name} train losses") & _finite(result, test, f"{name} test losses")):
        return
    epochs = len(test) - 1
    if not result.check(epochs >= 1, f"{name} test losses: {len(test)} rows = initialisation + {epochs} epochs"
                        if epochs >= 1 else f"{name} test losses has {len(test)} row; expected one at "
                        "initialisation (epoch 0) plus one after every epoch"):
        return
    result.check(len(train) % epochs == 0,
                 f"{name}: {len(train)} training minibatches over {epochs} epochs" if len(train) % epochs == 0 else
                 f"{name}: {len(train)} training rows cannot be {epochs} epochs of minibatches (test losses "
                 f"needs exactly one row at initialisation plus one per epoch: {epochs} + 1 = {len(test)} rows)")
    first, last = test[0].ravel()[0], test[-1].ravel()[0]
    result.check(last < first, f"{name}: test loss falls, {first:.4f} -> {last:.4f}" if last < first else
                 f"{name}: test loss did not fall ({first:.4f} at initialisation, {last:.4f} at the end)")


def _elbo_terms(result: Result, losses: np.ndarray, name: str) -> None:
    neg_elbo, recon, kl = losses[:, 0], losses[:, 1], losses[:, 2]
    gap = np.abs(neg_elbo - (recon + kl)).max()
    result.check(gap <= 1e-3 * max(1.0, np.abs(neg_elbo).max()),
                 f"{name}: -ELBO = recon + KL in every row" if gap <= 1e-3 * max(1.0, np.abs(neg_elbo).max()) else
                 f"{name}: column 0 should be -ELBO = recon (column 1) + KL (column 2); off by up to {gap:.4g}")
    result.check(kl[-1] >= -1e-3, f"{name}: final KL {kl[-1]:.4f} >= 0" if kl[-1] >= -1e-3 else
                 f"{name}: final KL is {kl[-1]:.4f}, but a KL divergence is never negative")


def _images(result: Result, a: np.ndarray | None, name: str, channels: int, binary: bool = False) -> bool:
    meaning = f"100 images, 32 x 32, {channels} channel{'s' * (channels > 1)} last"
    if not _shape(result, a, name, (100, 32, 32, channels), meaning) or not _finite(result, a, name):
        return False
    lo, hi = float(a.min()), float(a.max())
    if binary:
        ok = bool(np.isin(a, (0.0, 1.0)).all())
        return result.check(ok, f"{name}: values are 0/1" if ok else f"{name}: values should be 0 or 1, found {lo:.3g}..{hi:.3g}")
    ok = lo >= -1e-3 and 1.0 < hi <= 255 + 1e-3  # 0..1 is in range, but it is not the course's scale
    if not result.check(ok, f"{name}: values in [0, 255]" if ok else f"{name}: values should lie in [0, 255], found "
                        f"{lo:.3g}..{hi:.3g}" + (" (looks like [0, 1] or [-1, 1]: multiply to 0..255)" if hi <= 1.0 else "")):
        return False
    spread = float(a.reshape(len(a), -1).std(1).mean())
    return result.check(spread > 0.5, f"{name}: images are not blank" if spread > 0.5 else
                        f"{name}: every image is a flat colour (mean per-image std {spread:.3g})")


def _pairs(result: Result, recon: np.ndarray, test_data: np.ndarray, name: str) -> None:
    """The course lays reconstructions out as 50 pairs: a test image, then its reconstruction."""
    known = {np.asarray(x, np.uint8).tobytes() for x in test_data}
    originals = np.clip(np.round(recon[0::2]), 0, 255).astype(np.uint8)
    found = sum(x.tobytes() in known for x in originals)
    result.check(found == 50, f"{name}: even rows are 50 test images, odd rows their reconstructions" if found == 50
                 else f"{name}: only {found} of the 50 even rows (0, 2, 4, ...) are test images; expected pairs "
                 "(test image, its reconstruction)")


# ----------------------------------------------------------------------------- the questions


@dataclass
class Question:
    name: str  # q1, q2a, ...
    function: str  # the function the student writes
    title: str
    returns: tuple[str, ...]
    run: Callable[[Callable, Result, int], None]  # (fn, result, train_size)


def _call(fn: Callable, result: Result, returns: tuple[str, ...], *args) -> tuple | None:
    """Call a student function; turn whatever goes wrong into one FAIL line."""
    from lvm.homework import helpers as homework

    name = getattr(fn, "__name__", "the function")
    homework._GRADING = True  # lvm.homework.grading() tells the solution it is being graded
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            out = fn(*args)
    except NotImplementedError:
        result.fail(f"not implemented (NotImplementedError in {name})")
        return None
    except GradingTimeout:
        raise
    except Exception as e:  # noqa: BLE001 - every failure of student code is reported, never raised
        frames = [f for f in traceback.extract_tb(e.__traceback__) if _SOURCE and f.filename.startswith(_SOURCE)]
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
        result.fail(f"{name} raised {type(e).__name__}: {e}{where}")
        return None
    finally:
        homework._GRADING = False
    if not isinstance(out, (tuple, list)) or len(out) != len(returns):
        got = f"{len(out)} values" if isinstance(out, (tuple, list)) else f"a {type(out).__name__}"
        result.fail(f"{name} returned {got}; expected {len(returns)}: {', '.join(returns)}")
        return None
    return tuple(out)


def _run_q1(fn: Callable, result: Result, train_size: int) -> None:
    from lvm.homework import q1_data

    train, test = q1_data("a", 1, n_train=train_size, n_test=max(100, train_size // 4))
    out = _call(fn, result, QUESTIONS["q1"].returns, train, test, "a", 1)
    if out is None:
        return
    tr, te, noise, nonoise = (_array(result, v, n) for v, n in zip(out, QUESTIONS["q1"].returns))
    ok = _shape(result, tr, "train_losses", (None, 3), "one row per minibatch: -ELBO, reconstruction, KL")
    ok &= _shape(result, te, "test_losses", (None, 3), "one row at initialisation and one per epoch: -ELBO, reconstruction, KL")
    if ok:
        _curves(result, tr, te, "q1")
        if np.isfinite(tr).all() and np.isfinite(te).all():
            _elbo_terms(result, te, "test_losses")
    for a, n in ((noise, "samples_noise"), (nonoise, "samples_nonoise")):
        if _shape(result, a, n, (1000, 2), "1000 points in 2-D") and _finite(result, a, n):
            dist = np.abs(a.mean(0) - train.mean(0)) / train.std(0)
            result.check(dist.max() < 2, f"{n}: centred on the data" if dist.max() < 2 else
                         f"{n}: mean {a.mean(0).round(2).tolist()} is far from the data's {train.mean(0).round(2).tolist()}")


def _run_q2(part: str) -> Callable:
    def run(fn: Callable, result: Result, train_size: int) -> None:
        from lvm.homework.helpers import image_data

        train, test = image_data("shapes", train_size, max(100, train_size // 4))
        q = QUESTIONS[f"q2{part}"]
        out = _call(fn, result, q.returns, train, test, 3)
        if out is None:
            return
        tr, te, samples, recon, interp = (_array(result, v, n) for v, n in zip(out, q.returns))
        ok = _shape(result, tr, "train_losses", (None, 3), "one row per minibatch: -ELBO, reconstruction, KL")
        ok &= _shape(result, te, "test_losses", (None, 3), "one row at initialisation and one per epoch")
        if ok:
            _curves(result, tr, te, f"q2_{part}")
            if np.isfinite(te).all():
                _elbo_terms(result, te, "test_losses")
        _images(result, samples, "samples", 3)
        if _images(result, recon, "reconstructions", 3):
            _pairs(result, recon, test, "reconstructions")
        _images(result, interp, "interpolations", 3)

    return run


def _run_vqvae(question: str) -> Callable:
    def run(fn: Callable, result: Result, train_size: int) -> None:
        from lvm.homework.helpers import image_data

        train, test = image_data("shapes", train_size, max(100, train_size // 4))
        q = QUESTIONS[question]
        out = _call(fn, result, q.returns, train, test, 3)
        if out is None:
            return
        arrays = [_array(result, v, n) for v, n in zip(out, q.returns)]
        vq_tr, vq_te, pr_tr, pr_te, samples, recon = [a.squeeze(-1) if a is not None and a.ndim == 2 and a.shape[-1] == 1
                                                      and i < 4 else a for i, a in enumerate(arrays)]
        for (tr, te), n in (((vq_tr, vq_te), "vqvae"), ((pr_tr, pr_te), "prior")):
            ok = _shape(result, tr, f"{n}_train_losses", (None,), "one loss per minibatch")
            ok &= _shape(result, te, f"{n}_test_losses", (None,), "one loss at initialisation and one per epoch")
            if ok:
                _curves(result, tr, te, n)
        _images(result, samples, "samples", 3)
        if _images(result, recon, "reconstructions", 3):
            _pairs(result, recon, test, "reconstructions")

    return run


def _run_q4b(fn: Callable, result: Result, train_size: int) -> None:
    from lvm.homework import q4_data

    train, test = q4_data("b", train_limit=train_size, test_limit=max(100, train_size // 4))
    q = QUESTIONS["q4b"]
    out = _call(fn, result, q.returns, train, test)
    if out is None:
        return
    tr, te, samples = (_array(result, v, n) for v, n in zip(out, q.returns))
    ok = _shape(result, tr, "train_losses", (None,), "one NLL per minibatch")
    ok &= _shape(result, te, "test_losses", (None,), "one NLL at initialisation and one per epoch")
    if ok:
        _curves(result, tr, te, "q4_b")
    _images(result, samples, "samples", 1, binary=True)


IMAGE_RETURNS = ("train_losses", "test_losses", "samples", "reconstructions", "interpolations")
VQ_RETURNS = ("vqvae_train_losses", "vqvae_test_losses", "prior_train_losses", "prior_test_losses",
              "samples", "reconstructions")
QUESTIONS: dict[str, Question] = {
    "q1": Question("q1", "q1", "VAE on 2-D points (part a, dataset 1)",
                   ("train_losses", "test_losses", "samples_noise", "samples_nonoise"), _run_q1),
    "q2a": Question("q2a", "q2_a", "image VAE (shapes)", IMAGE_RETURNS, _run_q2("a")),
    "q2b": Question("q2b", "q2_b", "VLAE, a VAE with an autoregressive-flow prior (shapes)", IMAGE_RETURNS, _run_q2("b")),
    "q3": Question("q3", "q3", "VQ-VAE with a PixelCNN prior (shapes)", VQ_RETURNS, _run_vqvae("q3")),
    "q4a": Question("q4a", "q4_a", "VQ-VAE with a Gated PixelCNN prior (shapes)", VQ_RETURNS, _run_vqvae("q4a")),
    "q4b": Question("q4b", "q4_b", "Gated PixelCNN on binary images", ("train_losses", "test_losses", "samples"), _run_q4b),
}
# Training-set sizes the grader uses: small, so that a course-budget solution finishes in minutes.
TRAIN_SIZES = {"q1": 2000, "q2a": 512, "q2b": 512, "q3": 512, "q4a": 512, "q4b": 256}


@contextlib.contextmanager
def _time_limit(seconds: int | None):
    """Raise GradingTimeout after `seconds` (main thread only; elsewhere there is no limit)."""
    if not seconds or threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise GradingTimeout

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def grade_functions(functions: dict[str, Callable], questions: list[str] | None = None,
                    train_sizes: dict[str, int] | None = None, timeout: int | None = 600) -> list[Result]:
    """Grade the question functions in `functions` (keyed by function name, e.g. "q2_a")."""
    sizes = {**TRAIN_SIZES, **(train_sizes or {})}
    chosen = questions or [q for q, spec in QUESTIONS.items() if spec.function in functions]
    results = []
    for name in chosen:
        spec = QUESTIONS[name]
        result = Result(name, spec.title)
        fn = functions.get(spec.function)
        start = time.perf_counter()
        if not callable(fn):
            result.fail(f"no function {spec.function}(...) defined")
        else:
            try:
                with _time_limit(timeout):
                    spec.run(fn, result, sizes[name])
            except GradingTimeout:
                result.fail(f"{spec.function} took longer than {timeout} s on {sizes[name]} training examples; "
                            "grading stopped (is the budget far above the course's?)")
        result.seconds = time.perf_counter() - start
        results.append(result)
    return results


def reference_functions(budget: str = "tiny") -> dict[str, Callable]:
    from lvm.homework import solutions

    out = {}
    for spec in QUESTIONS.values():
        fn = functools.partial(getattr(solutions, spec.function), budget=budget)
        fn.__name__ = spec.function  # type: ignore[attr-defined]
        out[spec.function] = fn
    return out


def format_results(results: list[Result]) -> str:
    lines = []
    for r in results:
        lines.append(f"{r.question}: {r.title}")
        lines += [f"  {'PASS' if c.ok else 'FAIL'}  {c.message}" for c in r.checks]
        lines.append(f"  => {r.question} {'PASS' if r.passed else 'FAIL'} ({r.seconds:.1f} s)")
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} of {len(results)} questions pass")
    return "\n".join(lines)


@click.command()
@click.argument("path", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--reference", is_flag=True, help="Grade the reference solutions (lvm.homework.solutions, tiny budget).")
@click.option("-q", "--question", "questions", multiple=True, type=click.Choice(list(QUESTIONS)),
              help="Grade only this question (repeatable) [default: every question function found].")
@click.option("--train-size", type=int, default=None, help="Training examples per question [default: 2000 for q1, 512 (256 for q4b) otherwise].")
@click.option("--timeout", type=int, default=600, show_default=True, help="Seconds allowed per question.")
def grade(path, reference, questions, train_size, timeout):
    """Check the question functions of a homework notebook or .py file against the course's contracts."""
    if reference == (path is not None):
        raise click.UsageError("give a notebook or .py file to grade, or --reference (not both)")
    if train_size is not None and train_size < 100:
        raise click.BadParameter(f"must be at least 100, got {train_size}", param_hint="'--train-size'")
    if reference:
        functions, notes, what = reference_functions("tiny"), [], "the reference solutions (lvm.homework.solutions, tiny budget)"
    else:
        global _SOURCE
        namespace, notes = load_functions(path)
        _SOURCE = str(path)
        functions = {k: v for k, v in namespace.items() if callable(v)}
        what = str(path)
    found = [q for q, spec in QUESTIONS.items() if spec.function in functions]
    chosen = list(questions) or found
    click.echo(f"grading {what}")
    for note in notes:
        click.echo(f"  note: {note}")
    if not chosen:
        click.echo(f"FAIL  no question function found; expected one of: "
                   f"{', '.join(s.function for s in QUESTIONS.values())}")
        sys.exit(1)
    sizes = {q: train_size for q in chosen} if train_size else None
    results = grade_functions(functions, chosen, sizes, timeout)
    click.echo(format_results(results))
    sys.exit(0 if all(r.passed for r in results) else 1)
