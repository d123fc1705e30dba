"""`lvm report`: every run's metrics.json, side by side with the course's official numbers. The
labels and the official numbers come from each model's spec; nothing here names a model."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote

from lvm.engine import files
from lvm.engine.errors import UserError

START, END = "<!-- results:start -->", "<!-- results:end -->"


def collect(figures: Path, warn: Callable[[str], None] | None = None) -> list[dict]:
    """Every `FIGURES/MODEL/*/metrics.json` whose MODEL folder is named after a registered model
    (`lvm list`), each with the folder it came from; other folders of FIGURES (evaluations,
    benchmarks: `figures/eval/MODEL-DATASET`) hold no rows, whatever their shape. A
    metrics.json is input we do not trust (anyone may have edited it): one that is not what
    `lvm run` writes is skipped, with one line through `warn` naming it and why; strings are
    escaped for markdown."""
    from lvm import registry

    warn = warn or (lambda line: print(line, file=sys.stderr))
    figures = Path(figures)
    if not figures.is_dir():
        raise UserError(f"no folder {figures}: give --figures the folder that holds MODEL/DATASET/metrics.json")
    models = set(registry.names())
    runs = []
    for path in sorted(p for p in figures.glob("*/*/metrics.json") if p.parent.parent.name in models):
        try:
            m = _checked(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            warn(f"skipped {_one_line(str(path))}: {_reason(e)}")
            continue
        m["folder"] = quote(str(path.parent), safe="/-_.~")  # a link's target: no space or bracket ends it
        m["eval"] = _evaluation_numbers(path.parent, m.get("eval"), warn)
        runs.append(m)
    if not runs:
        raise UserError(f"no runs in {figures}: expected {figures}/MODEL/DATASET/metrics.json")
    return runs


def _reason(e: BaseException) -> str:
    reason = e.strerror if isinstance(e, OSError) else "nested too deeply" if isinstance(e, RecursionError) else e
    return _one_line(str(reason))


def _evaluation_numbers(folder: Path, measured: Any, warn: Callable[[str], None]) -> dict | None:
    """The run's evaluation: `lvm eval`'s eval.json where there is one (its larger default budgets
    win), else what `lvm run` measured at its end (metrics.json's "eval"). Untrusted like the
    rest: numbers must be finite; a bad one is left out with one line naming its file."""
    where, found = folder / "metrics.json", measured
    if (folder / "eval.json").is_file():
        where = folder / "eval.json"
        try:
            found = json.loads(where.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
            warn(f"no evaluation from {_one_line(str(where))}: {_reason(e)}")
            return None
    if found is None:
        return None
    try:
        if not isinstance(found, dict):
            raise ValueError("the evaluation is not a mapping")
        return {k: _md(v) if isinstance(v, str) else _number(v, k) for k, v in found.items()
                if k in EVAL_KEYS and v is not None}
    except ValueError as e:
        warn(f"no evaluation from {_one_line(str(where))}: {_one_line(str(e))}")
        return None


EVAL_KEYS = ("nll", "k", "elbo", "bits_per_dim", "likelihood", "fd", "precision", "recall", "samples",
             "classifier_accuracy")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _md(text: str) -> str:
    """`text` as literal text in a markdown table cell: one line, no cell break, no HTML (a
    `<!-- results:end -->` in a device name must not end the results block)."""
    return _one_line(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number")
    try:
        if not math.isfinite(value):
            raise ValueError(f"{what} is not a finite number")
    except OverflowError:
        raise ValueError(f"{what} is not a finite number") from None
    return float(value) if isinstance(value, float) else value


def _checked(m: Any) -> dict:
    """The fields the table reads, checked (a ValueError says what is wrong) and made safe."""
    if not isinstance(m, dict) or not {"model", "dataset", "test"} <= set(m):
        raise ValueError("not a metrics.json written by lvm run")
    for key in ("model", "dataset", "device", "precision"):
        if key in m and not isinstance(m[key], str):
            raise ValueError(f"{key} is not a string")
    if not isinstance(m["test"], dict) or not m["test"]:
        raise ValueError("test is not a set of numbers")
    test = {_md(str(k)): _number(v, f"test.{k}") for k, v in m["test"].items()}
    for key in ("seconds", "epochs"):
        if key in m:
            _number(m[key], key)
    config = m.get("config", {})
    if not isinstance(config, dict) or not isinstance(config.get("train", {}), dict):
        raise ValueError("config is not a mapping")
    if "train_size" in config and config["train_size"] is not None:
        _number(config["train_size"], "config.train_size")
    amp = config.get("train", {}).get("amp")
    safe = {k: _md(v) if isinstance(v, str) else v for k, v in m.items()}
    safe["config"] = {"train_size": config.get("train_size"), "train": {"amp": amp if isinstance(amp, str) else None}}
    safe["test"] = test
    return safe


def _fmt(x: float) -> str:
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"


def _numbers(test: dict[str, float], labels: dict[str, str]) -> str:
    return ", ".join(f"{labels.get(k, k.replace('_', ' '))} {_fmt(v)}" for k, v in test.items()
                     if isinstance(v, (int, float)))


def _precision(m: dict) -> str:
    """", bf16" where the run trained under bf16 autocast (recorded since the choice depends on the
    hardware; older runs: amp "on", or "auto" on a GPU)."""
    if "precision" in m:
        return ", bf16" if m["precision"] == "bf16" else ""
    amp = m.get("config", {}).get("train", {}).get("amp")
    return ", bf16" if amp == "on" or (amp == "auto" and str(m.get("device", "")).startswith("cuda")) else ""


def _evaluation(m: dict) -> str:
    """The nll, bits/dim and fd cells of a run: `lvm eval`'s numbers (eval.json) or those `lvm run`
    measured at its end; empty where neither measured them."""
    e = m.get("eval")
    if not isinstance(e, dict) or not {"nll", "bits_per_dim"} <= set(e):  # a partial eval.json: nothing to show
        return " | | "
    how = f"k={e['k']}" if e.get("k") else e.get("likelihood", "")
    nll = f"{_fmt(e['nll'])} ({how})" if how else _fmt(e["nll"])
    fd = ""
    if {"fd", "precision", "recall", "samples", "classifier_accuracy"} <= set(e):
        fd = (f"{e['fd']:.2f}, P {e['precision']:.2f}, R {e['recall']:.2f} "
              f"(N {e['samples']}, classifier {e['classifier_accuracy']:.0%})")
    return f" {nll} | {e['bits_per_dim']:.3f} | {fd} "


def _spec(model: str):
    from lvm import registry

    try:
        return registry.get(model)
    except UserError:  # a run of a model this checkout does not know: raw keys, no official numbers
        return None


def table(runs: list[dict]) -> str:
    from lvm import registry

    head = ("| model | dataset | our final test numbers (nats) | official solution | ours - official "
            "| nll (nats) | bits/dim | fd, precision, recall | epochs | train size | device | seconds |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    order = registry.names()
    rows = []
    for m in sorted(runs, key=lambda m: (order.index(m["model"]) if m["model"] in order else len(order), m["folder"])):
        spec = _spec(m["model"])
        labels = {t.name: t.label for t in spec.terms()} if spec else {}
        test, folder = m["test"], Path(m["folder"]).name
        official = spec.official.get(folder) if spec else None
        first = next(iter(official)) if official else None
        delta = f"{test[first] - official[first]:+.4f} ({labels.get(first, first)})" if official and first in test else "n/a"
        size = m.get("config", {}).get("train_size", "")
        rows.append(
            f"| {m['model']} | [{folder}]({m['folder']}/) | {_numbers(test, labels)} | "
            f"{_numbers(official, labels) if official else 'n/a (not in the course)'} | {delta} |{_evaluation(m)}| "
            f"{m.get('epochs', '')} | "
            f"{size} | {m.get('device', '')}{_precision(m)} | {m.get('seconds', 0):.0f} |"
        )
    return "\n".join([head, *rows])


def write_readme(readme: Path, tab: str) -> None:
    try:
        text = Path(readme).read_text()
    except OSError as e:
        raise UserError(f"cannot read {readme}: {e.strerror or e}") from None
    if START not in text or END not in text:
        raise UserError(f"{readme} has no results markers ({START} ... {END})")
    before, rest = text.split(START, 1)
    if END not in rest:
        raise UserError(f"{readme}: the results markers are out of order ({END} before {START})")
    after = rest.split(END, 1)[1]
    files.write_text(readme, f"{before}{START}\n{tab}\n{END}{after}", kept=f"{readme} is unchanged")
