"""`lvm report`: every run's metrics.json, side by side with the course's official numbers. The
labels and the official numbers come from each model's spec; nothing here names a model."""

from __future__ import annotations

import json
from pathlib import Path

from lvm.engine.errors import UserError

START, END = "<!-- results:start -->", "<!-- results:end -->"


def collect(figures: Path) -> list[dict]:
    """Every `FIGURES/*/*/metrics.json`, each with the folder it came from."""
    figures = Path(figures)
    if not figures.is_dir():
        raise UserError(f"no folder {figures}: give --figures the folder that holds MODEL/DATASET/metrics.json")
    runs = []
    for path in sorted(figures.glob("*/*/metrics.json")):
        try:
            m = json.loads(path.read_text())
            if not isinstance(m, dict) or not {"model", "dataset", "test"} <= set(m) or not isinstance(m["test"], dict):
                raise ValueError("not a metrics.json written by lvm run")
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        m["folder"] = str(path.parent)
        try:  # `lvm eval`'s numbers (its larger default budgets) win over those `lvm run` measured at its end
            m["eval"] = json.loads((path.parent / "eval.json").read_text())
        except (OSError, ValueError):
            pass
        runs.append(m)
    if not runs:
        raise UserError(f"no runs in {figures}: expected {figures}/MODEL/DATASET/metrics.json")
    return runs


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
    if not isinstance(e, dict) or "nll" not in e:
        return " | | "
    how = f"k={e['k']}" if e.get("k") else e.get("likelihood", "")
    nll = f"{_fmt(e['nll'])} ({how})" if how else _fmt(e["nll"])
    fd = ""
    if "fd" in e:
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
    after = rest.split(END, 1)[1]
    Path(readme).write_text(f"{before}{START}\n{tab}\n{END}{after}")
