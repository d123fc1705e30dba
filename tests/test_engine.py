"""The engine knows no model: a model defined outside `lvm/` and registered with one line runs,
samples, reconstructs, makes its table rows and its report through the CLI; and the CLI, engine,
table and report modules name no model."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from lvm import registry
from tests.helpers import invoke

LVM = Path(__file__).resolve().parent.parent / "lvm"


@pytest.fixture
def only_betavae(monkeypatch):
    monkeypatch.setattr(registry, "MODELS", {})  # a table of the outside model alone keeps `lvm table` quick
    registry.register("betavae", "tests.betavae", "beta-VAE: the VAE with its KL weighted by beta")


def test_a_model_from_outside_lvm_works_through_the_cli(tmp_path, only_betavae):
    r = invoke("show", "betavae")
    assert r.exit_code == 0 and re.search(r"^  beta +float +4\.0 +weight of the KL term", r.output, re.M), r.output

    row = tmp_path / "run"
    r = invoke("run", "betavae", "--train-limit", 64, "--test-limit", 32, "--out", row, "-o", "beta=2")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("Final -beta-ELBO: ") and "KL Loss: " in r.output
    m = json.loads((row / "metrics.json").read_text())
    assert m["config"]["model"]["beta"] == 2.0 and set(m["test"]) == {"beta_elbo", "recon_loss", "kl_loss"}
    assert m["test"]["beta_elbo"] == pytest.approx(m["test"]["recon_loss"] + 2 * m["test"]["kl_loss"], rel=1e-4)
    for name in ("samples.png", "reconstructions.png", "interpolations.png", "train_plot.png", "checkpoint.pt"):
        assert (row / name).is_file(), name

    r = invoke("sample", "--checkpoint", row / "checkpoint.pt", "-n", 8, "--out", tmp_path / "s.png")
    assert r.exit_code == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG", r.output
    r = invoke("reconstruct", "--checkpoint", row / "checkpoint.pt", "-n", 4, "--out", tmp_path / "r.png")
    assert r.exit_code == 0 and (tmp_path / "r.png").is_file(), r.output  # the dataset comes from the checkpoint

    figures = tmp_path / "figures"
    r = invoke("table", "--dataset", "shapes", "--figures", figures, "--train-limit", 64, "--test-limit", 32)
    assert r.exit_code == 0, r.output
    assert (figures / "betavae/shapes/metrics.json").is_file()
    plain = json.loads((figures / "betavae/shapes-plain/metrics.json").read_text())
    assert plain["variant"] == "plain" and plain["config"]["model"]["beta"] == 1.0

    r = invoke("report", "--figures", figures)
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("| betavae |")]
    assert len(lines) == 2 and "beta-ELBO" in lines[0]
    assert "beta-ELBO 100" in lines[1]  # the spec's official number, beside the variant's row


# where no model may be named: the engine, the blocks, and the commands
NAMELESS = [*sorted((LVM / "engine").glob("*.py")), *sorted((LVM / "blocks").glob("*.py")),
            *(LVM / f for f in ("cli.py", "table.py", "report.py", "bench.py", "evaluation.py"))]


def code_words(tree: ast.AST):
    """(line, text) for every identifier and string literal of a module; docstrings (and any
    other bare string statement) and comments are prose, not code, and are left out."""
    prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in prose:
            yield n.lineno, n.value
        elif isinstance(n, ast.Name):
            yield n.lineno, n.id
        elif isinstance(n, ast.Attribute):
            yield n.lineno, n.attr
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield n.lineno, n.name
        elif isinstance(n, (ast.arg, ast.keyword)) and n.arg:
            yield n.lineno, n.arg
        elif isinstance(n, ast.alias):
            yield n.lineno, f"{n.name} {n.asname or ''}"
        elif isinstance(n, ast.ImportFrom):
            yield n.lineno, n.module or ""


def model_words(words: list[str]) -> re.Pattern:
    """Any of `words`, any case, as a word of its own: '_' and '-' separate words, so `vae_loss`
    and "VQ-VAE" name a model and `vaes` does not."""
    words = sorted(words, key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(" + "|".join(map(re.escape, words)) + r")(?![a-z0-9])", re.I)


def test_cli_engine_table_and_report_name_no_model():
    models = model_words(registry.names())
    variants = model_words([*registry.names(), "gated"])  # the blocks hold `GatedLayer`, a block
    named = [f"{f.relative_to(LVM.parent)}:{line}: {hit.group(0)!r} in {text[:60]!r}" for f in NAMELESS
             for line, text in code_words(ast.parse(f.read_text()))
             if (hit := (models if f.parent.name == "blocks" else variants).search(text))]
    assert not named, "\n".join(named)


def test_the_registry_is_one_explicit_table():
    text = (LVM / "registry.py").read_text()
    for name, (module, summary) in registry.MODELS.items():
        assert text.count(f'"{name}": ("{module}", ') == 1 and summary
        assert registry.get(name).name == name
