"""The homework: the course's helper API (`lvm.homework`), the grader (`lvm grade`) and the
reference solutions.

The helpers must keep the course's names, signatures and contracts (so that a course notebook
runs after changing its import line); the grader must pass the reference solutions, accept what
the course's helper accepts, fail the blank starter notebooks with one readable line per
question, and give no verdict that a student's code could forge, stall or crash.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lvm.cli import cli
from lvm.engine.errors import UserError
from lvm.homework import helpers as hw
from lvm.homework import solutions
from lvm.homework.grade import (QUESTIONS, TRAIN_SIZES, Result, _curves, check_outputs, definitions, read_sources,
                                run_question)
from tests.helpers import invoke

ROOT = Path(__file__).resolve().parent.parent
HOMEWORK = ROOT / "homework"
COURSE_NAMES = [
    "q1_sample_data", "visualize_q1_data", "q1_save_results", "visualize_svhn", "visualize_cifar10",
    "visualize_colored_shapes", "q2_save_results", "q3_save_results", "q4_a_save_results", "q4_b_save_results",
    "plot_vae_training_plot", "save_training_plot", "show_samples", "load_pickled_data",
]


def needs(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


@pytest.fixture
def no_course_data(tmp_path, monkeypatch):
    """An empty data folder, no stand-in asked for, and results/ written under tmp_path."""
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("LVM_DATA_DIR", str(data))
    monkeypatch.delenv("LVM_STANDIN", raising=False)
    monkeypatch.setattr(hw, "_standins", None)
    monkeypatch.chdir(tmp_path)
    return data


# ----------------------------------------------------------------------------- the course's API


def course_q1(part: str, dset_id: int, count: int) -> np.ndarray:
    """The course's generator of Q1 data, written out as the course wrote it."""
    rand = np.random.RandomState(0)
    shift = [[1.0, 2.0]] if dset_id == 1 else [[-1.0, 2.0]]
    scale = [[5.0, 1.0]] if dset_id == 1 else [[1.0, 5.0]]
    x = rand.randn(count, 2) * scale
    if part == "a":
        x = x.dot([[np.sqrt(2) / 2, np.sqrt(2) / 2], [-np.sqrt(2) / 2, np.sqrt(2) / 2]])
    return (shift + x).astype("float32")


@pytest.mark.parametrize("part, dset_id", [("a", 1), ("a", 2), ("b", 1), ("b", 2)])
def test_q1_sample_data_is_the_course_data_bit_for_bit(part, dset_id):
    train, test = hw.q1_sample_data(part, dset_id)
    assert train.dtype == np.float32 and test.dtype == np.float32
    assert train.shape == (10_000, 2) and test.shape == (2_500, 2)
    assert train.tobytes() == course_q1(part, dset_id, 10_000).tobytes()
    assert test.tobytes() == course_q1(part, dset_id, 2_500).tobytes()


def test_the_star_import_is_the_course_namespace():
    namespace: dict = {}
    exec("from lvm.homework import *", namespace)  # noqa: S102 - what a student's notebook runs
    missing = [n for n in COURSE_NAMES if not callable(namespace.get(n))]
    assert not missing
    assert callable(namespace["use_standin"]) and callable(namespace["grading"])
    renamed = ["save_results_q1", "save_results_q2", "save_results_q3", "save_results_q4a", "save_results_q4b",
               "q1_data", "q2_data", "q3_data", "q4_data", "image_data"]
    assert not [n for n in renamed if n in namespace], "one API: the course's names only"


def test_missing_course_data_is_one_line_that_says_where_and_how(no_course_data):
    for call in (lambda: hw.q2_save_results("a", 1, None), lambda: hw.q3_save_results(2, None),
                 lambda: hw.q4_b_save_results(None), hw.visualize_svhn):
        with pytest.raises(UserError) as e:
            call()
        message = str(e.value)
        assert "\n" not in message and str(no_course_data) in message
        assert ".pkl not found" in message and "use_standin()" in message and "LVM_STANDIN=1" in message
    with pytest.raises(UserError, match="dset_id must be 1 .SVHN. or 2 .CIFAR-10."):
        hw.q2_save_results("a", 3, None)


def test_course_pickles_are_read_and_mnist_is_binarised_the_course_way(no_course_data):
    rng = np.random.default_rng(0)
    svhn = {"train": rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8),
            "test": rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)}
    mnist = {"train": rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8),
             "test": rng.integers(0, 256, (10, 28, 28, 1), dtype=np.uint8)}
    for name, bundle in (("svhn.pkl", svhn), ("mnist.pkl", mnist)):
        (no_course_data / name).write_bytes(pickle.dumps(bundle))
    train, test = hw.course_data("svhn")
    np.testing.assert_array_equal(train, svhn["train"])
    np.testing.assert_array_equal(test, svhn["test"])
    for train, test in (hw.course_data("mnist"), hw.load_pickled_data(no_course_data / "mnist.pkl")):
        assert train.shape == (30, 28, 28, 1) and train.dtype == np.uint8
        np.testing.assert_array_equal(train, (mnist["train"] > 127.5).astype(np.uint8))
        np.testing.assert_array_equal(test, (mnist["test"] > 127.5).astype(np.uint8))
    (no_course_data / "cifar10.pkl").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read .*cifar10.pkl"):  # broken: said, never replaced
        hw.use_standin()
        hw.course_data("cifar10")


def test_stand_ins_are_asked_for_by_environment_or_function(no_course_data, monkeypatch):
    monkeypatch.setenv("LVM_STANDIN", "shapes,shapes-binary")
    train, test = hw.course_data("cifar10", 20, 10)
    np.testing.assert_array_equal(train, hw.dataset_hwc("shapes", 20, 10)[0])
    train, test = hw.course_data("mnist", 20, 10)
    assert train.shape == (20, 28, 28, 1) and test.shape == (10, 28, 28, 1) and train.dtype == np.uint8
    assert set(np.unique(train)) == {0, 1}
    hw.use_standin(None, None)  # the call wins over the environment
    with pytest.raises(UserError, match="svhn.pkl not found"):
        hw.course_data("svhn", 20, 10)
    for bad in ({"colour": "svhn"}, {"colour": "shapes-binary"}, {"binary": "shapes"}):
        with pytest.raises(UserError, match="stand-in"):
            hw.use_standin(**bad)


def test_a_missing_stand_in_names_what_works_offline(no_course_data, monkeypatch):
    monkeypatch.setenv("LVM_STANDIN", "1")  # fashion-mnist-binary for MNIST: here made missing
    real = hw.dataset_hwc

    def without_fashion_mnist(name, *args):
        if name.startswith("fashion-mnist"):
            raise UserError(f"dataset '{name}' not found: no train-images-idx3-ubyte.gz in /nowhere")
        return real(name, *args)

    monkeypatch.setattr(hw, "dataset_hwc", without_fashion_mnist)
    with pytest.raises(UserError) as e:
        hw.course_data("mnist", 20, 10, quiet=True)
    assert "\n" not in str(e.value) and "stand-in 'fashion-mnist-binary' is not installed" in str(e.value)
    assert "LVM_STANDIN=shapes,shapes-binary" in str(e.value)
    monkeypatch.setenv("LVM_STANDIN", "shapes,shapes-binary")  # what the line says works
    assert hw.course_data("mnist", 20, 10, quiet=True)[0].shape == (20, 28, 28, 1)


def record(fn, seen: dict):
    """Wrap a question function, keeping the arguments it got and the values it returned."""
    def wrapped(*args):
        seen["args"], seen["out"] = args, fn(*args)
        return seen["out"]
    return wrapped


def tiny(name: str):
    def fn(*args):
        return getattr(solutions, name)(*args, budget="tiny")
    return fn


def assert_array(a, shape, dtype=np.float32, lo=None, hi=None, values=None):
    assert isinstance(a, np.ndarray) and a.shape == shape and a.dtype == dtype, (type(a), getattr(a, "shape", None))
    if lo is not None:
        assert lo <= a.min() and a.max() <= hi
    if values is not None:
        assert set(np.unique(a)) <= values


def assert_losses(train, test, columns: tuple):
    assert train.ndim == test.ndim == 1 + len(columns) and train.shape[1:] == test.shape[1:] == columns
    epochs = len(test) - 1
    assert epochs >= 1 and len(train) % epochs == 0 and train.dtype == test.dtype == np.float32
    assert np.isfinite(train).all() and np.isfinite(test).all()


def test_q1_save_results_runs_the_reference_the_course_way(no_course_data, capsys):
    seen: dict = {}
    final = hw.q1_save_results("b", 1, record(tiny("q1"), seen))
    train_data, test_data, part, dset_id = seen["args"]
    assert_array(train_data, (10_000, 2))
    assert_array(test_data, (2_500, 2))
    assert (part, dset_id) == ("b", 1)
    train, test, noise, nonoise = seen["out"]
    assert_losses(train, test, (3,))
    assert_array(noise, (1000, 2))
    assert_array(nonoise, (1000, 2))
    line = capsys.readouterr().out
    assert line.startswith(f"Final -ELBO: {test[-1, 0]:.4f}, Recon Loss: {test[-1, 1]:.4f}, KL Loss: {test[-1, 2]:.4f}")
    assert abs(final["-ELBO"] - final["Recon Loss"] - final["KL Loss"]) < 1e-3
    assert {p.name for p in (no_course_data.parent / "results").iterdir()} == {
        "q1_b_dset1_train_plot.png", "q1_b_dset1_sample_with_noise.png", "q1_b_dset1_sample_without_noise.png"}


@needs("lvm.vae", "lvm.vlae", "lvm.vqvae", "lvm.pixelcnn")
def test_every_image_save_results_runs_the_reference_with_the_course_contract(no_course_data, capsys):
    hw.use_standin("shapes", "shapes-binary")
    limits = {"train_limit": 128, "test_limit": 100}
    for call, name, expect in (
        (lambda fn: hw.q2_save_results("a", 1, fn, **limits), "q2_a", "q2"),
        (lambda fn: hw.q2_save_results("b", 2, fn, **limits), "q2_b", "q2"),
        (lambda fn: hw.q3_save_results(1, fn, **limits), "q3", "vq"),
        (lambda fn: hw.q4_a_save_results(2, fn, **limits), "q4_a", "vq"),
    ):
        seen: dict = {}
        call(record(tiny(name), seen))
        train_data, test_data, dset_id = seen["args"]
        assert dset_id in (1, 2)
        assert_array(train_data, (128, 32, 32, 3), np.uint8, lo=0, hi=255)
        assert_array(test_data, (100, 32, 32, 3), np.uint8, lo=0, hi=255)
        printed = capsys.readouterr().out
        if expect == "q2":
            train, test, *images = seen["out"]
            assert_losses(train, test, (3,))
            assert printed.startswith(f"Final -ELBO: {test[-1, 0]:.4f}, Recon Loss: ")
        else:
            vq_train, vq_test, prior_train, prior_test, *images = seen["out"]
            assert_losses(vq_train, vq_test, ())
            assert_losses(prior_train, prior_test, ())
            assert f"VQ-VAE Final Test Loss: {vq_test[-1]:.4f}" in printed
            assert f"PixelCNN Prior Final Test Loss: {prior_test[-1]:.4f}" in printed
        for a in images:
            assert_array(a, (100, 32, 32, 3), lo=0.0, hi=255.0)
        np.testing.assert_array_equal(images[1][0::2], test_data[:50])  # (test image, reconstruction) pairs
    written = {p.name for p in (no_course_data.parent / "results").iterdir()}
    assert {"q2_a_dset1_interpolations.png", "q2_b_dset2_samples.png", "q3_dset1_pixelcnn_train_plot.png",
            "q4_a_dset2_reconstructions.png"} <= written


def fake_pixelvae():
    """A q4_b that trains nothing: the PixelVAE contract's arrays (2 epochs of 4 minibatches), to
    test the helper and the checks."""
    def q4_b(train_data, test_data):
        assert train_data.shape[1:] == (28, 28, 1) and train_data.dtype == np.uint8
        neg_elbo = np.linspace(200, 100, 8)
        train = np.stack([neg_elbo, neg_elbo * 0.8, neg_elbo * 0.2], 1).astype(np.float32)
        test = train[[0, 3, 7]]  # before training, after each epoch
        samples = (np.random.default_rng(0).random((100, 28, 28, 1)) > 0.5).astype(np.float32)
        recon = np.stack([test_data[:50].astype(np.float32), samples[:50]], 1).reshape(100, 28, 28, 1)
        return train, test, samples, recon
    return q4_b


def test_q4b_save_results_hands_binarised_28x28_and_prints_the_course_line(no_course_data, capsys):
    hw.use_standin(binary="shapes-binary")
    seen: dict = {}
    hw.q4_b_save_results(record(fake_pixelvae(), seen), train_limit=64, test_limit=60)
    train_data, test_data = seen["args"]
    assert_array(train_data, (64, 28, 28, 1), np.uint8, values={0, 1})
    assert_array(test_data, (60, 28, 28, 1), np.uint8, values={0, 1})
    assert capsys.readouterr().out.startswith("Final -ELBO: 100.0000, Recon Loss: 80.0000, KL Loss: 20.0000")
    assert {p.name for p in (no_course_data.parent / "results").iterdir()} == {
        "q4_b_train_plot.png", "q4_b_samples.png", "q4_b_reconstructions.png"}


@needs("lvm.pixelvae")
def test_q4b_save_results_runs_the_reference_pixelvae_with_the_course_contract(no_course_data, capsys):
    hw.use_standin(binary="shapes-binary")
    seen: dict = {}
    hw.q4_b_save_results(record(tiny("q4_b"), seen), train_limit=128, test_limit=60)
    train_data, test_data = seen["args"]
    assert_array(train_data, (128, 28, 28, 1), np.uint8, values={0, 1})
    train, test, samples, recon = seen["out"]
    assert_losses(train, test, (3,))
    np.testing.assert_allclose(test[:, 0], test[:, 1] + test[:, 2], rtol=1e-5)  # -ELBO with the true KL
    assert_array(samples, (100, 28, 28, 1), values={0.0, 1.0})
    assert_array(recon, (100, 28, 28, 1), values={0.0, 1.0})
    np.testing.assert_array_equal(recon[0::2], test_data[:50])
    assert capsys.readouterr().out.startswith(f"Final -ELBO: {test[-1, 0]:.4f}, Recon Loss: {test[-1, 1]:.4f}, ")


# ----------------------------------------------------------------------------- the checks (in the parent)


def inputs_for(question: str, size: int = 100) -> dict:
    return QUESTIONS[question].inputs(size)


def test_q4b_checks_take_the_pixelvae_contract():
    inputs = inputs_for("q4b")
    assert inputs["train"].shape == (100, 28, 28, 1) and inputs["args"] == []
    good = fake_pixelvae()(inputs["train"], inputs["test"])
    r = check_outputs("q4b", good, inputs)
    assert r.passed, [c.message for c in r.checks if not c.ok]
    train, test, samples, recon = good
    wrong = [
        ((train, test, samples * 255, recon), "samples: values should be 0 or 1"),
        ((train, test, np.pad(samples, ((0, 0), (2, 2), (2, 2), (0, 0))), recon),
         "samples has shape (100, 32, 32, 1); expected (100, 28, 28, 1)"),
        ((train[:, 0], test, samples, recon), "train_losses has shape (8,); expected (N, 3)"),
        ((train, test, samples, recon[::-1]), "only 0 of the 50 even rows"),
    ]
    for returned, message in wrong:
        r = check_outputs("q4b", returned, inputs)
        assert any(message in c.message for c in r.checks if not c.ok), [c.message for c in r.checks]


def test_test_table_without_an_initial_row_passes_with_a_note():
    # the numbers: 10 epochs of 16 minibatches, one test row per epoch
    train = np.linspace(10, 5, 160)
    for test in (np.linspace(9.5, 5, 10), np.linspace(10, 5, 11)):
        r = Result("q1", "")
        _curves(r, train, test, "q1")
        assert r.passed, [c.message for c in r.checks]
        assert [c.note for c in r.checks].count(True) == (len(test) == 10)
    # both readings fit 48 rows and 3 test rows: row 0 is the loss after the first epoch here
    train = np.concatenate([np.linspace(20, 6, 16), np.linspace(6, 5, 32)])
    r = Result("q1", "")
    _curves(r, train, np.array([6.0, 5.5, 5.0]), "q1")
    assert r.passed and any(c.note for c in r.checks)
    r = Result("q1", "")
    _curves(r, train, np.array([20.0, 6.0, 5.0]), "q1")
    assert r.passed and not any(c.note for c in r.checks)
    r = Result("q1", "")
    _curves(r, np.linspace(10, 5, 16), np.linspace(10, 5, 6), "q1")
    assert [c.message for c in r.checks if not c.ok] == [
        "q1: 16 training rows are neither 5 epochs of minibatches (test losses at initialisation plus one per epoch) "
        "nor 6 (one test row per epoch)"]


def fake_image_solution(*, scale: float = 255.0, pairs: bool = True, test_rows_extra: int = 0):
    """A q2_a that trains nothing: arrays of the right or the wrong kind, to test the checks."""
    def q2_a(train_data, test_data, dset_id):
        rng = np.random.default_rng(0)
        epochs = 2
        train = np.stack([np.linspace(300, 200, 8 * epochs)] * 3, 1) * [1, 0.9, 0.1]
        test = np.stack([np.linspace(300, 200, epochs + 1 + test_rows_extra)] * 3, 1) * [1, 0.9, 0.1]
        images = rng.uniform(0, 1, (100, 32, 32, 3)) * scale
        originals = test_data[:50].astype(np.float64) if pairs else images[:50]
        recon = np.stack([originals, images[:50]], 1).reshape(100, 32, 32, 3)
        return train, test, images, recon, images
    return q2_a


@pytest.mark.parametrize("kwargs, message", [
    ({}, None),
    ({"scale": 1.0}, "samples: values should lie in [0, 255], found 6.87e-07..1 (looks like [0, 1] or [-1, 1]: multiply to 0..255)"),
    ({"pairs": False}, "reconstructions: only 0 of the 50 even rows (0, 2, 4, ...) are test images"),
    ({"test_rows_extra": 3}, "q2_a: 16 training rows are neither 5 epochs"),
])
def test_image_checks_name_what_is_wrong(kwargs, message):
    inputs = inputs_for("q2a")
    r = check_outputs("q2a", fake_image_solution(**kwargs)(inputs["train"], inputs["test"], 1), inputs)
    if message is None:
        assert r.passed, [c.message for c in r.checks if not c.ok]
    else:
        assert not r.passed
        assert any(message in c.message for c in r.checks if not c.ok), [c.message for c in r.checks]


def test_wrong_shapes_and_counts_are_named():
    inputs = inputs_for("q1")
    samples = np.zeros((1000, 2)) + inputs["train"].mean(0)
    r = check_outputs("q1", (np.linspace(5, 4, 20).reshape(10, 2), np.array([[5.0, 4.0, 1.0], [4.5, 3.6, 0.9]]),
                             samples, samples), inputs)
    messages = [("PASS " if c.ok else "FAIL ") + c.message for c in r.checks]
    assert "FAIL train_losses has shape (10, 2); expected (N, 3): one row per minibatch: -ELBO, reconstruction, KL" in messages
    assert "PASS test_losses has shape (2, 3)" in messages
    r = check_outputs("q1", [1, 2], inputs)
    assert [c.message for c in r.checks] == [
        "q1 returned 2 values; expected 4: train_losses, test_losses, samples_noise, samples_nonoise"]


# ----------------------------------------------------------------------------- grading in child processes


def write_solution(tmp_path: Path, body: str, name: str = "solution.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def blocks(output: str) -> dict[str, list[str]]:
    """The lines of each question's block in `lvm grade`'s output."""
    out: dict[str, list[str]] = {}
    current = None
    for line in output.splitlines():
        if not line.startswith(" ") and ":" in line and line.split(":")[0] in QUESTIONS:
            current = line.split(":")[0]
            out[current] = []
        elif current and line.startswith(" "):
            out[current].append(line.strip())
        else:
            current = None
    return out


def test_grader_passes_reference_q1():
    result = invoke("grade", "--reference", "-q", "q1")
    assert result.exit_code == 0, result.output
    assert "=> q1 PASS" in result.output and "FAIL" not in result.output and "NOTE" not in result.output


@pytest.mark.parametrize("question", [
    pytest.param("q2a", marks=needs("lvm.vae")),
    pytest.param("q3", marks=needs("lvm.vqvae", "lvm.pixelcnn")),
    pytest.param("q4b", marks=needs("lvm.pixelvae")),
])
def test_grader_passes_reference_image_questions(question):
    """At the training-set sizes `lvm grade` uses: some checks (the VQ-VAE's reconstructions
    explain its images) hold only once the budget lets an honest model learn, and the grader
    never runs below these sizes (at 128 shapes the reference's R^2 is -1.07; at 512, 0.56)."""
    r = run_question("reference", question, TRAIN_SIZES[question], timeout=600)
    assert r.passed, [c.message for c in r.checks if not c.ok] or r.output


@pytest.mark.parametrize("question, function", [
    ("q1", "q1"),
    pytest.param("q2a", "q2_a", marks=needs("lvm.vae")),
    pytest.param("q4b", "q4_b", marks=[needs("lvm.pixelvae"), pytest.mark.slow]),
])
def test_reference_solutions_are_bit_identical_run_to_run(question, function):
    """The reference passes its grader every time: it is seeded before its models are built, so
    two runs on the grader's inputs return the same bytes, and that output passes every check."""
    inputs = QUESTIONS[question].inputs({"q1": 2000, "q4b": 256}.get(question, 512))
    runs = [getattr(solutions, function)(inputs["train"], inputs["test"], *inputs["args"], budget="tiny")
            for _ in range(2)]
    for a, b in zip(*runs):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    r = check_outputs(question, runs[0], inputs)
    assert r.passed, [c.message for c in r.checks if not c.ok]


@needs("lvm.pixelvae")
def test_q4b_reference_trains_with_the_courses_free_bits_floor(monkeypatch):
    """lvm's PixelVAE defaults to no floor (the plain ELBO); the course's Q4b, and so its
    reference solution, keeps the course's 10 nats."""
    import lvm.pixelvae.model as pixelvae

    built = []

    class Built(Exception):
        pass

    def capture(cfg):
        built.append(cfg)
        raise Built

    monkeypatch.setattr(pixelvae, "PixelVAE", capture)
    inputs = QUESTIONS["q4b"].inputs(256)
    for budget in ("course", "tiny"):
        with pytest.raises(Built):
            solutions.q4_b(inputs["train"], inputs["test"], budget=budget)
    assert [cfg.free_bits for cfg in built] == [10.0, 10.0] and pixelvae.PixelVAEConfig().free_bits == 0.0


def test_course_style_q1_passes_with_a_note(tmp_path):
    path = write_solution(tmp_path, """
        import numpy as np

        def q1(train_data, test_data, part, dset_id):
            # the course's own solution's layout: 10 epochs of 16 minibatches, a test row after each epoch
            neg_elbo = np.linspace(9.0, 4.5, 160)
            train_losses = np.stack([neg_elbo, neg_elbo - 1.0, np.ones(160)], 1)
            test_losses = train_losses[15::16] + [0.01, 0.0, 0.01]
            rng = np.random.RandomState(1)
            samples = train_data.mean(0) + rng.randn(1000, 2) * train_data.std(0)
            return train_losses, test_losses, samples, samples * 0 + train_data.mean(0)
    """)
    result = invoke("grade", str(path))
    assert result.exit_code == 0, result.output
    assert "NOTE  q1: 10 test rows for 160 training minibatches read as one per epoch, with none at initialisation" \
        in result.output
    assert "=> q1 PASS" in result.output


def test_student_code_that_exits_patches_or_swallows_the_limit_fails_each_question(tmp_path):
    path = write_solution(tmp_path, """
        import os
        import sys
        import time

        import lvm.homework.grade as grader

        grader.Result.passed = property(lambda self: True)  # patched in the child only
        grader.check_outputs = lambda *args, **kwargs: None

        def q1(train_data, test_data, part, dset_id):
            while True:  # trains forever, and swallows whatever is raised to stop it
                try:
                    print("still training " * 50)
                    time.sleep(0.01)
                except BaseException:
                    pass

        def q2_a(train_data, test_data, dset_id):
            sys.exit(0)

        def q2_b(train_data, test_data, dset_id):
            # forge the runner's files: a report of success and a pickle in place of arrays
            import json
            import numpy as np
            job = sys.argv[2]  # the folder the runner writes its results to
            with open(os.path.join(job, "outputs.npz"), "wb") as f:  # a pickle where a zip of arrays belongs
                np.save(f, np.array([print], dtype=object), allow_pickle=True)
            with open(os.path.join(job, "result.json"), "w") as f:
                json.dump({"status": "returned", "count": 5, "bad": {}}, f)
            os._exit(0)

        def q3(train_data, test_data, dset_id):
            grader.Result.passed = property(lambda self: True)
            return "pass"

        def q4_a(train_data, test_data, dset_id):
            os._exit(0)
    """)
    result = invoke("grade", str(path), "--timeout", "25")
    assert result.exit_code == 1, result.output
    found = blocks(result.output)
    assert list(found) == ["q1", "q2a", "q2b", "q3", "q4a"]
    for question, lines in found.items():
        assert [line for line in lines if line.startswith("FAIL")] == [lines[0]] and len(lines) == 2, lines
        assert lines[-1].startswith(f"=> {question} FAIL")
    assert found["q1"][0].startswith("FAIL  q1 did not finish within 25 s")
    assert found["q2a"][0] == "FAIL  q2_a called sys.exit(0)"
    assert found["q2b"][0] == "FAIL  q2_b's return values could not be read back (BadZipFile)"
    assert found["q3"][0].startswith("FAIL  q3 returned a str; expected 6 values")
    assert found["q4a"][0].startswith("FAIL  the process running q4_a exited with status 0 before returning anything")
    assert "0 of 5 questions pass" in result.output
    assert "still training" not in result.output  # the child's output is captured


def test_a_loop_or_exit_while_loading_fails_the_question(tmp_path):
    looping = write_solution(tmp_path, """
        def forever():
            while True:
                pass

        STARTED = forever()

        def q1(train_data, test_data, part, dset_id):
            return None
    """, "looping.py")
    result = invoke("grade", str(looping), "--timeout", "20")
    assert result.exit_code == 1
    assert blocks(result.output)["q1"][0].startswith("FAIL  q1 did not finish within 20 s (loading the file")
    exiting = write_solution(tmp_path, """
        import sys

        def q1(train_data, test_data, part, dset_id):
            return None

        STATUS = sys.exit(0)
    """, "exiting.py")
    result = invoke("grade", str(exiting))
    assert result.exit_code == 1
    assert blocks(result.output)["q1"][0] == "FAIL  the file called sys.exit(0) while it was loaded"


def test_exceptions_name_the_line_and_grading_is_flagged(tmp_path):
    path = write_solution(tmp_path, """
        from lvm.homework import grading

        def q1(train_data, test_data, part, dset_id):
            raise ValueError(f"grading() is {grading()}")

        def q2_a(train_data, test_data, dset_id):
            x = train_data.shape[7]
    """)
    result = invoke("grade", str(path))
    assert result.exit_code == 1
    assert "FAIL  q1 raised ValueError: grading() is True" in result.output
    assert f"FAIL  q2_a raised IndexError: tuple index out of range ({path}, line 8)" in result.output
    assert not hw.grading()


def test_notebook_notes_are_said_once(tmp_path):
    cells = ["import numpy as np", "def broken(:\n    pass", "import no_such_module_xyz",
             "def q1(train_data, test_data, part, dset_id):\n    raise NotImplementedError"]
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "source": c} for c in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "student.ipynb"
    path.write_text(json.dumps(nb))
    result = invoke("grade", str(path))
    assert result.exit_code == 1
    assert result.output.count("syntax error") == 1
    assert f"  note: {path} cell 2: syntax error on line 1: invalid syntax; cell skipped" in result.output
    assert blocks(result.output)["q1"][:2] == [
        f"NOTE  while loading: {path} cell 3: ModuleNotFoundError: No module named 'no_such_module_xyz'",
        "FAIL  not implemented (NotImplementedError in q1)"]


@pytest.mark.parametrize("notebook, functions", [
    ("q1_vae2d.ipynb", ["q1"]),
    ("q2_vae_vlae.ipynb", ["q2_a", "q2_b"]),
    ("q3_vqvae.ipynb", ["q3"]),
    ("q4_pixelcnn_pixelvae.ipynb", ["q4_a", "q4_b"]),
])
def test_blank_starter_fails_every_question_readably(notebook, functions):
    result = invoke("grade", str(HOMEWORK / notebook))
    assert result.exit_code == 1, result.output
    for fn in functions:
        assert f"FAIL  not implemented (NotImplementedError in {fn})" in result.output
    assert f"0 of {len(functions)} questions pass" in result.output
    assert "note:" not in result.output and "NOTE" not in result.output  # every cell parses and its definitions run


def test_starter_notebooks_are_blank_and_not_collected_by_nbval():
    for path in HOMEWORK.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path
    conftest = (HOMEWORK / "conftest.py").read_text()
    assert '"*.ipynb"' in conftest and "collect_ignore_glob" in conftest


# ----------------------------------------------------------------------------- reading files (no code runs)


def test_notebook_reader_keeps_definitions_and_skips_training(tmp_path):
    cells = [
        "import numpy as np\n%matplotlib inline\nEPOCHS = 3\nif EPOCHS > 1:\n    SCALE = 2\nelse:\n    SCALE = 1",
        "def q1(train_data, test_data, part, dset_id):\n    return EPOCHS * SCALE",
        "for part in 'ab':\n    q1_save_results(part, 1, q1)  # a loop that trains: skipped",
        "q1_save_results('a', 1, q1)  # would train: skipped",
        "results = q2_save_results('a', 1, q2_a)  # also skipped",
        "def broken(:\n    pass",
        "train_data, test_data = q1_sample_data('a', 1)  # a loader: skipped",
    ]
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "source": c} for c in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "student.ipynb"
    path.write_text(json.dumps(nb))
    modules, notes = definitions(read_sources(path))
    namespace: dict = {}
    for where, module in modules:
        exec(compile(module, where, "exec"), namespace)  # noqa: S102 - the test's own cells
    assert namespace["q1"](None, None, "a", 1) == 6
    assert "results" not in namespace and "train_data" not in namespace
    assert notes == [f"{path} cell 6: syntax error on line 1: invalid syntax; cell skipped"]


@pytest.mark.parametrize("text", [
    "{not json", "[1, 2]", '{"cells": 5}', '{"cells": [5]}', '{"cells": [{"cell_type": "code", "source": 5}]}',
    "[" * 100_000,
])
def test_malformed_notebook_is_one_line_and_exit_2(tmp_path, text):
    path = tmp_path / "broken.ipynb"
    path.write_text(text)
    result = invoke("grade", str(path))
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"Error: {path}: not a readable notebook")


def test_grade_needs_a_file_or_reference():
    result = CliRunner().invoke(cli, ["grade"])
    assert result.exit_code == 2
    assert "give a notebook or .py file to grade, or --reference" in result.output
    result = CliRunner().invoke(cli, ["grade", "no/such/file.ipynb"])
    assert result.exit_code == 2 and "no such file" in result.output
