"""One registry of models. Each model package registers an `Entry` when imported; the CLI,
the experiment runner and checkpoint loading look models up here and nowhere else."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from lvm.errors import UserError
from lvm.train import TrainConfig

# The model packages, in the order `lvm list` shows them. A new model adds its name here.
PACKAGES = ("vae2d", "vae", "vlae", "vqvae", "pixelcnn")


@dataclass(frozen=True)
class Entry:
    """How to train one model and what it reports.

    run(data, cfg, out, resume=False, **options) -> dict with at least "test" (final test
    metrics) and "config" (the model's hyperparameters); it trains with `lvm.experiment.fit`
    and writes the model's figures into `out`.
    build(model_config: dict, info: DataInfo, stage: str = "") -> nn.Module rebuilds the model of
    a checkpoint (`stage` names which one, for models trained in stages).
    """

    name: str
    summary: str
    kinds: tuple[str, ...]  # data kinds it trains on: "points", "image", "binary"
    default_dataset: str
    train: TrainConfig  # the default budget: the course's hyperparameters
    run: Callable[..., dict[str, Any]]
    build: Callable[..., nn.Module]
    terms: dict[str, str] = field(default_factory=dict)  # metric key -> the course's label
    options: tuple[str, ...] = ()  # extra keyword options `run` accepts (e.g. "prior")


MODELS: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    MODELS[entry.name] = entry
    return entry


def _load_all() -> None:
    for name in PACKAGES:
        importlib.import_module(f"lvm.{name}")


def names() -> list[str]:
    _load_all()
    return list(MODELS)


def get(name: str) -> Entry:
    _load_all()
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    return MODELS[name]
