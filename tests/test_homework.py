"""The homework: its data helpers, the grader (`lvm grade`) and the reference solutions.

The grader must pass the reference solutions, fail the blank starter notebooks with one readable
line per question (never a traceback), and name what is wrong in a wrong solution.
"""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lvm.engine import data as datasets
from lvm.homework import helpers as hw
from lvm.cli import cli
from lvm.homework.grade import grade_functions, load_functions, reference_functions

ROOT = Path(__file__).resolve().parent.parent
HOMEWORK = ROOT / "homework"


def needs(*modules: str):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)}")


def invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


# ----------------------------------------------------------------------------- helpers


def test_q1_data_is_the_course_data():
    train, test = hw.q1_data("a", 2)
    assert train.shape == (10_000, 2) and test.shape == (2_500, 2)
    assert train.dtype == np.float32 and test.dtype == np.float32
    np.testing.assert_array_equal(train, datasets.gaussians("a", 2, 10_000))
    np.testing.assert_array_equal(test, train[:2_500])  # both drawn from RandomState(0)


def test_image_data_is_channels_last_uint8():
    train, test = hw.image_data("shapes", train_limit=40, test_limit=10)
    assert train.shape == (40, 32, 32, 3) and test.shape == (10, 32, 32, 3)
    assert train.dtype == np.uint8
    stored = datasets.load("shapes", train_limit=40).train  # (40, 3, 32, 32)
    np.testing.assert_array_equal(train, stored.permute(0, 2, 3, 1).numpy())


def test_binary_data_is_zero_one_with_one_channel():
    train, test = hw.binary_data("shapes-binary", train_limit=40, test_limit=10)
    assert train.shape == (40, 32, 32, 1) and train.dtype == np.uint8
    assert set(np.unique(train)) <= {0, 1} and train.any() and not train.all()


@pytest.mark.skipif(not datasets.on_disk("fashion-mnist"), reason="Fashion-MNIST not on disk")
def test_one_channel_images_are_repeated_to_three():
    train, _ = hw.image_data("fashion-mnist", train_limit=20, test_limit=5)
    assert train.shape == (20, 32, 32, 3)
    assert (train[..., 0] == train[..., 1]).all() and (train[..., 0] == train[..., 2]).all()


def test_save_results_q1_prints_the_course_line(tmp_path, capsys):
    final = hw.save_results_q1("b", 1, reference_functions("tiny")["q1"], out=tmp_path)
    line = capsys.readouterr().out
    assert line.startswith("Final -ELBO: ") and "Recon Loss: " in line and "KL Loss: " in line
    assert abs(final["-ELBO"] - final["Recon Loss"] - final["KL Loss"]) < 1e-3
    assert {p.name for p in tmp_path.iterdir()} == {
        "q1_b_dset1_train_plot.png", "q1_b_dset1_sample_with_noise.png", "q1_b_dset1_sample_without_noise.png"}


# ----------------------------------------------------------------------------- the reference passes


def test_grader_passes_reference_q1():
    result = invoke("grade", "--reference", "-q", "q1")
    assert result.exit_code == 0, result.output
    assert "=> q1 PASS" in result.output and "FAIL" not in result.output


@needs("lvm.vae")
def test_grader_passes_reference_image_vae():
    [r] = grade_functions(reference_functions("tiny"), ["q2a"], {"q2a": 128})
    assert r.passed, [c.message for c in r.checks if not c.ok]


@needs("lvm.vqvae", "lvm.pixelcnn")
def test_grader_passes_reference_vqvae():
    [r] = grade_functions(reference_functions("tiny"), ["q3"], {"q3": 128})
    assert r.passed, [c.message for c in r.checks if not c.ok]


# ----------------------------------------------------------------------------- the blank starter fails


@pytest.mark.parametrize("notebook, functions", [
    ("q1_vae2d.ipynb", ["q1"]),
    ("q2_vae_vlae.ipynb", ["q2_a", "q2_b"]),
    ("q3_vqvae.ipynb", ["q3"]),
    ("q4_pixelcnn.ipynb", ["q4_a", "q4_b"]),
])
def test_blank_starter_fails_every_question_readably(notebook, functions):
    result = invoke("grade", str(HOMEWORK / notebook))
    assert result.exit_code == 1, result.output
    for fn in functions:
        assert f"FAIL  not implemented (NotImplementedError in {fn})" in result.output
    assert f"0 of {len(functions)} questions pass" in result.output
    assert "note:" not in result.output  # every cell of the starter parses and its definitions run


def test_starter_notebooks_are_blank_and_not_collected_by_nbval():
    for path in HOMEWORK.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), path
    conftest = (HOMEWORK / "conftest.py").read_text()
    assert '"*.ipynb"' in conftest and "collect_ignore_glob" in conftest


# ----------------------------------------------------------------------------- wrong solutions fail with reasons


def write_solution(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "solution.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_wrong_shape_names_the_shape(tmp_path):
    path = write_solution(tmp_path, """
        import numpy as np

        def q1(train_data, test_data, part, dset_id):
            train = np.linspace(5, 4, 20).reshape(10, 2)  # two columns, not three
            test = np.array([[5.0, 4.0, 1.0], [4.5, 3.6, 0.9]])
            samples = np.zeros((1000, 2)) + train_data.mean(0)
            return train, test, samples, samples
    """)
    result = invoke("grade", str(path))
    assert result.exit_code == 1
    assert "FAIL  train_losses has shape (10, 2); expected (N, 3)" in result.output
    assert "PASS  test_losses has shape (2, 3)" in result.output


def test_grading_flag_is_set_only_while_grading():
    seen = []

    def q1(train_data, test_data, part, dset_id):
        seen.append(hw.grading())
        raise NotImplementedError

    [r] = grade_functions({"q1": q1}, ["q1"])
    assert seen == [True] and not hw.grading()
    assert [c.message for c in r.checks] == ["not implemented (NotImplementedError in q1)"]


def test_exceptions_and_wrong_return_counts_are_one_line(tmp_path):
    path = write_solution(tmp_path, """
        def q1(train_data, test_data, part, dset_id):
            return [1, 2]

        def q2_a(train_data, test_data, dset_id):
            x = train_data.shape[7]
    """)
    result = invoke("grade", str(path))
    assert result.exit_code == 1
    assert "FAIL  q1 returned 2 values; expected 4: train_losses, test_losses, samples_noise, samples_nonoise" in result.output
    assert f"FAIL  q2_a raised IndexError: tuple index out of range ({path}, line 6)" in result.output


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


def test_fake_image_solution_of_the_right_kind_passes():
    [r] = grade_functions({"q2_a": fake_image_solution()}, ["q2a"], {"q2a": 100})
    assert r.passed, [c.message for c in r.checks if not c.ok]


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": 1.0}, "samples: values should lie in [0, 255], found 6.87e-07..1 (looks like [0, 1] or [-1, 1]: multiply to 0..255)"),
    ({"pairs": False}, "reconstructions: only 0 of the 50 even rows (0, 2, 4, ...) are test images"),
    ({"test_rows_extra": 1}, "q2_a: 16 training rows cannot be 3 epochs of minibatches"),
])
def test_wrong_image_solutions_fail_with_the_reason(kwargs, message):
    [r] = grade_functions({"q2_a": fake_image_solution(**kwargs)}, ["q2a"], {"q2a": 100})
    assert not r.passed
    assert any(message in c.message for c in r.checks if not c.ok), [c.message for c in r.checks]


# ----------------------------------------------------------------------------- loading notebooks


def test_notebook_loader_runs_definitions_and_skips_training(tmp_path):
    cells = [
        "import numpy as np\n%matplotlib inline\nEPOCHS = 3\nif EPOCHS > 1:\n    SCALE = 2\nelse:\n    SCALE = 1",
        "def q1(train_data, test_data, part, dset_id):\n    return EPOCHS * SCALE",
        "for part in 'ab':\n    save_results_q1(part, 1, q1)  # a loop that trains: skipped",
        "save_results_q1('a', 1, q1)  # would train: skipped",
        "results = save_results_q1('a', 1, q1)  # also skipped",
        "def broken(:\n    pass",
        "train_data, test_data = q1_data('a', 1)  # a loader: skipped",
    ]
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "source": c} for c in cells],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "student.ipynb"
    path.write_text(json.dumps(nb))
    namespace, notes = load_functions(path)
    assert namespace["q1"](None, None, "a", 1) == 6
    assert "results" not in namespace and "train_data" not in namespace
    assert notes == [f"{path} cell 6: syntax error on line 1: invalid syntax; cell skipped"]


def test_grade_needs_a_file_or_reference():
    result = CliRunner().invoke(cli, ["grade"])
    assert result.exit_code == 2
    assert "give a notebook or .py file to grade, or --reference" in result.output
    result = CliRunner().invoke(cli, ["grade", "no/such/file.ipynb"])
    assert result.exit_code == 2 and "no such file" in result.output
