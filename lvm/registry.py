"""The models, one line each: name -> the module whose `MODEL` (an `lvm.engine.spec.ModelSpec`)
says everything the engine needs, and a one-line summary. A module is imported only when its
model is asked for, so `lvm --help` and `lvm list` answer without importing torch.

A model outside this package registers itself with one line, `lvm.registry.register(name,
"package.module", "summary")`, or, for the `lvm` command, with an entry point in its own
pyproject.toml: `[project.entry-points."lvm.models"] NAME = "package.module"`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from lvm.engine.errors import UserError

if TYPE_CHECKING:
    from lvm.engine.spec import ModelSpec

MODELS: dict[str, tuple[str, str]] = {
    "vae2d": ("lvm.vae2d", "VAE on 2-D points, Gaussian decoder with learned variance (course Q1)"),
    "vae": ("lvm.vae", "convolutional VAE, 16-d latent, N(0, I) prior (course Q2a)"),
    "vlae": ("lvm.vlae", "convolutional VAE with a MADE autoregressive-flow prior (course Q2b)"),
    "vqvae": ("lvm.vqvae", "VQ-VAE with a PixelCNN, Gated PixelCNN or transformer prior over its 8x8 codes (course Q3, Q4a)"),
    "pixelcnn": ("lvm.pixelcnn", "PixelCNN or Gated PixelCNN on binarised images; also the VQ-VAE's prior"),
    "pixelvae": ("lvm.pixelvae", "VAE with a Gated PixelCNN decoder conditioned on z, free bits (course Q4b)"),
}


def register(name: str, module: str, summary: str = "") -> None:
    """Add a model: `module` must define `MODEL`, a ModelSpec named `name`."""
    MODELS[name] = (module, summary)


def _plugins() -> None:
    for ep in entry_points(group="lvm.models"):
        MODELS.setdefault(ep.name, (ep.value, ""))


def summary(name: str) -> str:
    return MODELS[name][1]


def names() -> list[str]:
    _plugins()
    return list(MODELS)


def get(name: str) -> "ModelSpec":
    if name not in MODELS:
        _plugins()
    if name not in MODELS:
        raise UserError(f"unknown model '{name}'; choose one of: {', '.join(names())}")
    module = MODELS[name][0]
    spec = importlib.import_module(module).MODEL
    if spec.name != name:
        raise UserError(f"{module}.MODEL is named '{spec.name}', registered as '{name}'")
    return spec
