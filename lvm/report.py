"""`lvm report`: every run's metrics.json, side by side with the course's official numbers."""

from __future__ import annotations

import json
from pathlib import Path

from lvm.engine.errors import UserError

START, END = "<!-- results:start -->", "<!-- results:end -->"

# The official solution's final test numbers (../shared/ANCHORS.md), keyed by (model, dataset).
OFFICIAL: dict[tuple[str, str], dict[str, float]] = {
    ("vae2d", "gaussians-a1"): {"neg_elbo": 4.4388, "recon_loss": 2.7630, "kl_loss": 1.6758},
    ("vae2d", "gaussians-a2"): {"neg_elbo": 4.4488, "recon_loss": 2.8341, "kl_loss": 1.6147},
    ("vae2d", "gaussians-b1"): {"neg_elbo": 4.4213, "recon_loss": 4.4094, "kl_loss": 0.0119},
    ("vae2d", "gaussians-b2"): {"neg_elbo": 4.4196, "recon_loss": 4.4123, "kl_loss": 0.0073},
    ("vae", "svhn"): {"neg_elbo": 104.04, "recon_loss": 79.38, "kl_loss": 24.66},
    ("vae", "cifar10"): {"neg_elbo": 241.61, "recon_loss": 210.07, "kl_loss": 31.54},
    ("vlae", "svhn"): {"neg_elbo": 102.57, "recon_loss": 80.25, "kl_loss": 22.31},
    ("vlae", "cifar10"): {"neg_elbo": 238.92, "recon_loss": 210.33, "kl_loss": 28.59},
    ("vqvae", "svhn"): {"loss": 0.0286, "prior_nll": 1.9440},
    ("vqvae", "cifar10"): {"loss": 0.0474, "prior_nll": 2.7528},
}

# What each metric is called in the table, in the order shown.
LABELS = {
    "neg_elbo": "-ELBO", "recon_loss": "recon", "kl_loss": "KL",
    "loss": "loss", "vq_loss": "VQ", "perplexity": "perplexity", "codes_used": "codes used",
    "prior_nll": "prior NLL", "nll": "NLL/dim",
}


def collect(figures: Path) -> list[dict]:
    """Every `figures/*/*/metrics.json`, each with the folder it came from."""
    runs = []
    for path in sorted(Path(figures).glob("*/*/metrics.json")):
        try:
            m = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {path}: {e}") from None
        m["folder"] = str(path.parent)
        runs.append(m)
    return runs


def _fmt(x: float) -> str:
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.4f}" if abs(x) < 10 else f"{x:.2f}"


def _numbers(test: dict[str, float]) -> str:
    return ", ".join(f"{LABELS.get(k, k)} {_fmt(v)}" for k, v in test.items() if isinstance(v, (int, float)))


def _precision(m: dict) -> str:
    """", bf16" where the run trained under bf16 autocast (amp "on", or "auto" on a GPU)."""
    amp = m.get("config", {}).get("train", {}).get("amp")
    return ", bf16" if amp == "on" or (amp == "auto" and m["device"].startswith("cuda")) else ""


def table(runs: list[dict]) -> str:
    head = ("| model | dataset | our final test numbers (nats) | official solution | ours - official "
            "| epochs | train size | device | seconds |\n|---|---|---|---|---|---|---|---|---|")
    from lvm.registry import names

    order = names()
    rows = []
    for m in sorted(runs, key=lambda m: (order.index(m["model"]) if m["model"] in order else len(order), m["folder"])):
        test = m.get("test", {})
        official = OFFICIAL.get((m["model"], m["dataset"]))
        first = next(iter(official)) if official else None
        delta = f"{test[first] - official[first]:+.4f} ({LABELS[first]})" if official and first in test else "n/a"
        label = Path(m["folder"]).name
        size = m.get("config", {}).get("train_size", "")
        rows.append(
            f"| {m['model']} | [{label}]({m['folder']}/) | {_numbers(test)} | "
            f"{_numbers(official) if official else 'n/a (not in the course)'} | {delta} | {m['epochs']} | "
            f"{size} | {m['device']}{_precision(m)} | {m['seconds']:.0f} |"
        )
    return "\n".join([head, *rows])


def write_readme(readme: Path, tab: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise UserError(f"{readme} has no results markers ({START} ... {END})")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(f"{before}{START}\n{tab}\n{END}{after}")
