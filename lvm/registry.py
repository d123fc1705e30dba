"""One registry of models. Each model package registers an `Entry` when imported; the CLI,
the experiment runner and checkpoint loading look models up here and nowhere else."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from lvm.engine.errors import UserError
from lvm.engine.train import TrainConfig

# Every subpackage of `lvm` is a model package that registers itself on import; a new model
# needs no line anywhere else. `lvm list` shows them in this order, then any others.
ORDER = ("vae2d", "vae", "vlae", "vqvae", "pixelcnn")


@dataclass(frozen=True)
class Entry:
    """How to train one model and what it reports.

    run(data, cfg, out, resume=False, **options) -> dict with at least "test" (final test
    metrics) and "config" (the model's hyperparameters); it trains with `lvm.engine.pipeline.fit`
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
    # Stages whose checkpoints (`STAGE_checkpoint.pt`) do not depend on `options`: a variant
    # (e.g. prior="gated") may start from the default run's finished stage instead of training
    # it again (`lvm table` copies it and resumes; a finished stage trains no further).
    shared_stages: tuple[str, ...] = ()


MODELS: dict[str, Entry] = {}


def register(entry: Entry) -> Entry:
    MODELS[entry.name] = entry
    return entry


def _load_all() -> None:
    import lvm

    for module in pkgutil.iter_modules(lvm.__path__):
        if module.ispkg:
            importlib.import_module(f"lvm.{module.name}")


def names() -> list[str]:
    _load_all()
    return sorted(MODELS, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def get(name: str) -> Entry:
    _load_all()
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(names())}")
    return MODELS[name]
