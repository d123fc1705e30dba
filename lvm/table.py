"""`lvm table --dataset NAME`: every row of the results table for one dataset, in one command.

The rows come from the registry, in its order, and from each model's spec; nothing here names a
model:
- every model whose data kinds accept the dataset's kind, on the dataset itself; a model whose
  kind it is not trains on the dataset's variant of that kind when one exists
  (`fashion-mnist` -> `fashion-mnist-binary` for a model of binary images);
- every variant a spec declares gets a row of its own, in the folder `MODEL/DATASET-VARIANT`.
  Stages the variant does not change (those before the first stage that owns a changed field)
  are not trained again: the row takes them, finished, from the plain row's checkpoint.

Each row is `lvm.engine.pipeline.train_row`, what `lvm run` does, with the model's default budget
unless the caller overrides it (tiny budgets for tests). `--resume` resumes every row from its
own checkpoint: a finished row loads its weights, trains no further and only redraws its figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lvm import registry
from lvm.engine import config as configs
from lvm.engine import data as datasets
from lvm.engine import pipeline
from lvm.engine.errors import UserError
from lvm.engine.spec import ModelSpec


@dataclass(frozen=True)
class Row:
    """One row of the results table: `model` trained on `dataset` into FIGURES/model/folder."""

    model: str
    dataset: str
    folder: str
    variant: str | None = None
    changes: dict[str, Any] = field(default_factory=dict)
    shares: str | None = None  # folder of the row (same model) whose finished `stages` it takes
    stages: tuple[str, ...] = ()

    def label(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.changes.items())
        return f"{self.model} on {self.dataset}" + (f" ({extra})" if extra else "")


def _dataset_for(spec: ModelSpec, dataset: str) -> str | None:
    """The dataset itself if the model trains on its kind, else its variant of a kind the model
    trains on (`NAME-KIND`, e.g. `fashion-mnist-binary`), else None."""
    if datasets.source(dataset).kind in spec.kinds:
        return dataset
    for kind in spec.kinds:
        variant = datasets.DATASETS.get(f"{dataset}-{kind}")
        if variant is not None and variant.kind == kind:
            return f"{dataset}-{kind}"
    return None


def unchanged_stages(spec: ModelSpec, changes: dict[str, Any]) -> tuple[str, ...]:
    """The leading stages that own none of the changed fields (a stage owns the fields it lists;
    the first stage owns every field no later stage lists)."""
    owned_later = {f for s in spec.stages[1:] for f in s.fields}
    shared = []
    for i, stage in enumerate(spec.stages):
        owns = set(stage.fields) if i else {f.name for f in configs.fields(spec.config)} - owned_later
        if owns & set(changes):
            break
        shared.append(stage.name)
    return tuple(shared)


def plan(dataset: str) -> list[Row]:
    """The rows of the results table for `dataset`, in registry order (no training)."""
    datasets.source(dataset)  # an unknown name is a UserError listing the known ones
    rows = []
    for name in registry.names():
        spec = registry.get(name)
        on = _dataset_for(spec, dataset)
        if on is None:
            continue
        rows.append(Row(name, on, on))
        for variant, changes in spec.variants.items():
            stages = unchanged_stages(spec, changes)
            rows.append(Row(name, on, f"{on}-{variant}", variant, dict(changes), on if stages else None, stages))
    if not rows:
        raise UserError(f"no model trains on '{dataset}' (kind {datasets.source(dataset).kind})")
    return rows


def _overrides_for(spec: ModelSpec, pairs: tuple[str, ...]) -> dict[str, Any]:
    """The `-o FIELD=VALUE` pairs that name a field of this model's config, parsed."""
    names = {f.name for f in configs.fields(spec.config)}
    mine = [p for p in pairs if p.partition("=")[0].strip().replace("-", "_") in names]
    return configs.parse_overrides(spec.config, mine, fixed=tuple(spec.from_data))


def check_rows(rows: list[Row], specs: dict[str, ModelSpec], settings: dict[str, dict[str, Any]],
               data_dir: str | Path | None, download: bool, **budget: Any) -> None:
    """Every row's dataset, config and budget, checked before the first row trains: a missing
    dataset or a value out of range fails now, in one line naming the row, not after hours; a
    value out of range even before any data is read (a download, maybe)."""
    _check_configs(rows, specs, settings, {}, budget)
    infos = {name: datasets.load(name, data_dir, 1, 1, download=download).info
             for name in dict.fromkeys(r.dataset for r in rows)}
    _check_configs(rows, specs, settings, infos, budget)


def _check_configs(rows: list[Row], specs: dict[str, ModelSpec], settings: dict[str, dict[str, Any]],
                   infos: dict[str, datasets.DataInfo], budget: dict[str, Any]) -> None:
    """Each row's config and budget, with its data's fields where `infos` has them (at their
    defaults before the data is read: `pipeline.make_config`)."""
    from dataclasses import replace

    for row in rows:
        spec = specs[row.model]
        try:
            config = pipeline.make_config(spec, infos.get(row.dataset), {**settings[row.model], **row.changes})
            pipeline.check_budget(spec, config, replace(spec.train, **{k: v for k, v in budget.items() if v is not None}))
        except UserError as e:
            raise UserError(f"{row.label()}: {e.template()}") from None


def train_rows(
    dataset: str,
    *,
    figures: str | Path = "figures",
    data_dir: str | Path | None = None,
    download: bool = True,
    device: str | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    overrides: tuple[str, ...] = (),
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train every row of `plan(dataset)` into FIGURES/MODEL/FOLDER, report each one through
    `echo`, and write FIGURES/table-DATASET.json (rows, seconds, device, total); returns it."""
    import torch

    from lvm.engine.train import resolve_device

    start = time.perf_counter()
    rows = plan(dataset)
    dev = resolve_device(device or "auto")  # bad input fails here, before anything is written
    specs = {r.model: registry.get(r.model) for r in rows}
    settings = {name: _overrides_for(spec, overrides) for name, spec in specs.items()}
    unused = [p for p in overrides if not any(p.partition("=")[0].strip().replace("-", "_") in s for s in settings.values())]
    if unused:
        raise UserError(f"-o {unused[0]}: no model of this table has that field")
    check_rows(rows, specs, settings, data_dir, download, epochs=epochs, seed=seed, device=device)
    figures = Path(figures)
    done = []
    for i, row in enumerate(rows, 1):
        echo(f"[{i}/{len(rows)}] {row.label()} ...")
        done.append(_train(row, specs[row.model], figures, echo, data_dir=data_dir, train_limit=train_limit,
                           test_limit=test_limit, resume=resume, overwrite=overwrite, download=download,
                           overrides={**settings[row.model], **row.changes}, epochs=epochs, seed=seed, device=device))
    total = time.perf_counter() - start
    summary = {
        "dataset": dataset,
        "device": pipeline.describe_device(dev),
        "torch": torch.__version__,
        "budget": {"epochs": epochs, "overrides": list(overrides), "train_limit": train_limit,
                   "test_limit": test_limit, "seed": seed, "resumed": resume},  # None = the model's default
        "rows": done,
        "seconds": round(total, 2),
    }
    path = figures / f"table-{dataset}.json"
    pipeline.write_json(path, summary)
    echo(f"total {total:.1f} s for {len(done)} rows on {summary['device']}; wrote {path}")
    return summary


def _train(row: Row, spec: ModelSpec, figures: Path, echo: Callable[[str], None], *, resume: bool,
           **settings: Any) -> dict[str, Any]:
    """Train one row into FIGURES/MODEL/FOLDER (`lvm.engine.pipeline.train_row` with `settings`),
    say its final numbers, and return its entry of the table's JSON."""
    out = figures / row.model / row.folder
    t = time.perf_counter()
    reuse = figures / row.model / row.shares / "checkpoint.pt" if row.shares else None
    metrics = pipeline.train_row(spec, row.dataset, out=out, resume=resume and (out / "checkpoint.pt").exists(),
                                 reuse=reuse, **settings)
    seconds = time.perf_counter() - t
    echo(f"{pipeline.final_line(spec, metrics['test'], metrics['config']['model'])}  ({seconds:.1f} s, {out}/)")
    return {
        "model": row.model, "dataset": row.dataset, "out": str(out), "variant": row.variant,
        "reused": {s: str(figures / row.model / row.shares) for s in row.stages} if row.shares else {},
        "seconds": round(seconds, 2), "test": metrics["test"], "eval": metrics.get("eval", {}),
    }
