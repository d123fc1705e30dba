"""`lvm table --dataset NAME`: every row of the results table for one dataset, in one command.

The rows come from the registry, in its order, with nothing named per model:
- every model whose data kinds accept the dataset's kind, on the dataset itself; a model whose
  kind it is not trains on the dataset's variant of that kind when one exists
  (`fashion-mnist` -> `fashion-mnist-binary` for `pixelcnn`);
- every model that takes a `prior` option gets a second row with `prior="gated"`, in the folder
  `MODEL/DATASET-gated`. Its `shared_stages` (the VQ-VAE of `vqvae`) are not trained again: the
  plain row's finished stage checkpoints are copied in and the row runs with `resume=True`, and a
  finished stage trains no further; every other stage (the prior) trains from scratch.

Each row is `lvm.engine.pipeline.run`, what `lvm run` does, with the model's default budget unless
the caller overrides it (tiny budgets for tests). `--resume` resumes every row from its own
checkpoints: a finished row loads its weights, trains no further and only redraws its figures.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from lvm.engine import data as datasets
from lvm import registry
from lvm.engine import pipeline as experiment
from lvm.engine.errors import UserError
from lvm.engine.train import resolve_device

VARIANT = {"prior": "gated"}  # the option that makes the second row, and its folder suffix below
SUFFIX = "-gated"


@dataclass(frozen=True)
class Row:
    """One row of the results table: `model` trained on `dataset` into FIGURES/model/folder."""

    model: str
    dataset: str
    folder: str
    options: dict[str, Any] = field(default_factory=dict)
    shares: str | None = None  # folder of the row (same model) whose finished `stages` it reuses
    stages: tuple[str, ...] = ()

    def label(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.options.items())
        return f"{self.model} on {self.dataset}" + (f" ({extra})" if extra else "")


def _dataset_for(entry: registry.Entry, dataset: str) -> str | None:
    """The dataset itself if the model trains on its kind, else its variant of a kind the model
    trains on (`NAME-KIND`, e.g. `fashion-mnist-binary`), else None."""
    if datasets.source(dataset).kind in entry.kinds:
        return dataset
    for kind in entry.kinds:
        variant = datasets.DATASETS.get(f"{dataset}-{kind}")
        if variant is not None and variant.kind == kind:
            return f"{dataset}-{kind}"
    return None


def plan(dataset: str) -> list[Row]:
    """The rows of the results table for `dataset`, in registry order (no training)."""
    datasets.source(dataset)  # an unknown name is a UserError listing the known ones
    rows = []
    for name in registry.names():
        entry = registry.get(name)
        on = _dataset_for(entry, dataset)
        if on is None:
            continue
        rows.append(Row(name, on, on))
        if set(VARIANT) <= set(entry.options):
            shares = on if entry.shared_stages else None
            rows.append(Row(name, on, on + SUFFIX, dict(VARIANT), shares, entry.shared_stages))
    if not rows:
        raise UserError(f"no model trains on '{dataset}' (kind {datasets.source(dataset).kind})")
    return rows


def _take_stages(out: Path, source: Path, stages: tuple[str, ...], resume: bool) -> None:
    """Put the source row's finished stage checkpoints into `out`. Without `resume`, the row
    starts fresh: any other checkpoint a previous run left in `out` goes first, so that no stage
    but the shared ones is resumed."""
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        for old in out.glob("*checkpoint.pt"):
            old.unlink()
    for stage in stages:
        src, dst = source / f"{stage}_checkpoint.pt", out / f"{stage}_checkpoint.pt"
        if not src.exists():
            raise UserError(f"{src} is missing: the row that trains the {stage} stage did not finish")
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)  # atomic: an interrupted copy never leaves half a checkpoint


def run(
    dataset: str,
    *,
    figures: str | Path = "figures",
    data_dir: str | Path | None = None,
    download: bool = True,
    device: str | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    prior_epochs: int | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every row of `plan(dataset)` into FIGURES/MODEL/FOLDER, report each one through
    `echo`, and write FIGURES/table-DATASET.json (rows, seconds, device, total); returns it."""
    start = time.perf_counter()
    rows = plan(dataset)
    dev = resolve_device(device or "auto")  # bad input fails here, before anything is written
    for name in dict.fromkeys(r.dataset for r in rows):  # a missing dataset fails now, not after hours
        if not datasets.source(name).builtin and not datasets.on_disk(name, data_dir):
            datasets.load(name, data_dir, 1, 1, download=download)
    figures = Path(figures)

    done = []
    for i, row in enumerate(rows, 1):
        echo(f"[{i}/{len(rows)}] {row.label()} ...")
        out = figures / row.model / row.folder
        entry = registry.get(row.model)
        options = dict(row.options)
        if "prior_epochs" in entry.options:
            options["prior_epochs"] = prior_epochs
        t = time.perf_counter()
        if row.shares:
            _take_stages(out, figures / row.model / row.shares, row.stages, resume)
        metrics = experiment.run(
            row.model, row.dataset, out=out, data_dir=data_dir, train_limit=train_limit,
            test_limit=test_limit, resume=resume or bool(row.shares), download=download, options=options,
            epochs=epochs, seed=seed, device=device,
        )
        seconds = time.perf_counter() - t
        echo(f"{experiment.final_line(row.model, metrics['test'])}  ({seconds:.1f} s, {out}/)")
        done.append({
            "model": row.model, "dataset": row.dataset, "out": str(out), "options": row.options,
            "reused": {s: str(figures / row.model / row.shares) for s in row.stages} if row.shares else {},
            "seconds": round(seconds, 2), "test": metrics["test"],
        })

    total = time.perf_counter() - start
    summary = {
        "dataset": dataset,
        "device": experiment.describe_device(dev),
        "torch": torch.__version__,
        "budget": {"epochs": epochs, "prior_epochs": prior_epochs, "train_limit": train_limit,
                   "test_limit": test_limit, "seed": seed, "resumed": resume},  # None = the model's default
        "rows": done,
        "seconds": round(total, 2),
    }
    path = figures / f"table-{dataset}.json"
    experiment.write_json(path, summary)
    echo(f"total {total:.1f} s for {len(done)} rows on {summary['device']}; wrote {path}")
    return summary
