"""What a model package declares about itself, in one place: `MODEL = ModelSpec(...)` in its
`__init__.py`. The engine reads nothing else about a model: the pipeline trains its stages, the CLI
sets its config's fields, `lvm table` makes its rows and variants, `lvm report` labels its numbers.

A model with one stage (most) is one module trained on the data. A model with several stages
trains each on what the ones before it produced: the VQ-VAE's prior trains on the VQ-VAE's codes.

The model contract: what every model's methods take and give (the trained model a spec's stages
assemble into), so that the engine, the figures and the course's helpers need no model's name.
"As stored" is what the data loader yields (`lvm.engine.data`): uint8 images 0..255, 0/1 uint8
binary images, float32 points; "as output" is what `sample`, `reconstruct`, `interpolate` and
`decode` return: floats on the [-1, 1] scale for 0..255 images (the decoder's mean; `sample` and
`reconstruct` clamp it), 0/1 floats for binary images, raw float points. `lvm.blocks.scaling.picture`
draws either.

    loss(x)              x as stored -> {"loss": ..., and the named terms}, each a scalar
    sample(n)            n examples as output, drawn
    encode(x)            x as stored -> the latent: (mu, log_std) of q(z|x), each (B, L), for a
                         Gaussian latent; code indices (B, h, w) int64 for the VQ-VAE
    decode(z)            a latent (B, L), or code indices -> (B, *example shape) as output, never
                         drawn: the mean of p(x|z), or its most likely value (binary images; the
                         PixelVAE, whose p(x|z) is autoregressive, sets each pixel in raster order
                         to its more likely value; drawing from p(x|z) is its `draw(z)`)
    reconstruct(x)       x as stored -> as output, through the latent
    interpolate(x1, x2)  x as stored -> (B, steps, ...) as output, along the line between latents

`encode`, `decode`, `reconstruct` and `interpolate` exist where the model has a latent (not the
PixelCNN); the test of this contract is `tests/test_contract.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from lvm.engine.data import Data, DataInfo
from lvm.engine.train import TrainConfig


@dataclass(frozen=True)
class Term:
    """One loss term a stage's `loss(x)` returns, and how the results name it."""

    key: str  # its key in the dict `loss(x)` returns
    label: str  # on the training plot and in the results table
    unit: str = "nats"
    metric: str = ""  # its key in metrics.json's "test" [default: key]
    # its name in the course's "Final ..." line, or a function of the run's model config (a dict,
    # as metrics.json holds it) that gives the name; "" = not printed there
    course: str | Callable[[dict[str, Any]], str] = ""

    @property
    def name(self) -> str:
        return self.metric or self.key

    def course_label(self, config: dict[str, Any]) -> str:
        """Its name in the course's "Final ..." line for a run of this model config."""
        return self.course(config) if callable(self.course) else self.course


@dataclass(frozen=True)
class Stage:
    """One network trained by the one trainer. Later stages train on data the stages before them
    produced (`inputs`), and own the config fields that only they read (`fields`): changing one
    of those retrains this stage and the ones after it, never the ones before."""

    name: str  # names its checkpoint section and, in a model of several stages, its files
    build: Callable[[Any], nn.Module]  # the model's config -> this stage's network
    terms: tuple[Term, ...]  # what its loss returns, "loss" first
    inputs: Callable[[list[nn.Module], Data], Data] | None = None  # trained earlier stages, data -> its data
    fields: tuple[str, ...] = ()  # config fields only this stage reads
    epochs: str = ""  # the config field holding its epochs; "" = the run's --epochs
    # the model's config -> the TrainConfig fields this stage sets itself (its own lr schedule);
    # None = the run's. The config fields it reads belong in `fields`
    train: Callable[[Any], dict[str, Any]] | None = None
    setup: Callable[[nn.Module, Data], None] | None = None  # data-dependent initialisation, before training
    note: str = ""  # printed under its training plot: what a reader of the curves should know


@dataclass(frozen=True)
class Evaluation:
    """How `lvm eval` scores a trained model by default (`lvm.engine.evaluate`): what its
    likelihood is, and the budgets that keep an evaluation to a few CPU minutes."""

    # "iwae": the model's `log_weights(x, k)` give the importance-sampled estimate (a bound that
    # tightens with k); "exact": its `log_prob(x)` is log p(x); "bound": `log_prob(x)` is a
    # lower bound that no k tightens
    likelihood: str = "iwae"
    k: int = 100  # importance samples per test example
    test_limit: int | None = 1000  # test examples scored [None: all]
    samples: int = 1000  # samples drawn for fd, precision and recall
    # what `lvm run` measures at its end, cheap enough to add at most ~10% to a run's time
    run_k: int = 10
    run_test_limit: int = 500
    run_samples: int = 200
    note: str = ""  # how the model's decoder is a likelihood over the data's levels, for --help and eval.json


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine knows about one model."""

    name: str  # the name the model is registered under
    config: type  # the config dataclass; every field can be set with `-o FIELD=VALUE`
    stages: tuple[Stage, ...]
    kinds: tuple[str, ...]  # the data kinds it trains on: "points", "image", "binary"
    default_dataset: str
    train: TrainConfig  # the default budget: the course's hyperparameters
    # config fields the data decides (image channels, grid shape), each from the DataInfo; they
    # cannot be set by hand
    from_data: dict[str, Callable[[DataInfo], Any]] = field(default_factory=dict)
    # trained stages -> the one model `lvm sample` and `lvm reconstruct` use [default: the last]
    assemble: Callable[[Any, list[nn.Module]], nn.Module] | None = None
    # the figures: (model, data, folder, title) -> numbers worth recording (e.g. seconds to sample)
    figures: Callable[[nn.Module, Data, Path, str], dict[str, float]] | None = None
    # extra test numbers of the trained model beyond each term's last test value (e.g. code usage)
    summarise: Callable[[nn.Module, Data], dict[str, float]] | None = None
    # named changes of the config that make a row of their own in `lvm table` (folder DATASET-NAME)
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the course's official final test numbers, by folder name: "DATASET" or "DATASET-VARIANT"
    official: dict[str, dict[str, float]] = field(default_factory=dict)
    # `lvm eval`'s defaults and what its nll means for this model
    evaluation: Evaluation = Evaluation()

    def terms(self) -> list[Term]:
        return [t for s in self.stages for t in s.terms]

    def default_config(self, info: DataInfo) -> Any:
        """The model's config for data like `info`, with every other field at its default."""
        return self.config(**{name: get(info) for name, get in self.from_data.items()})


# The terms every VAE here reports, as the course names them: -ELBO = reconstruction + KL.
ELBO_TERMS = (
    Term("loss", "-ELBO", metric="neg_elbo", course="-ELBO"),
    Term("recon_loss", "recon", course="Recon Loss"),
    Term("kl_loss", "KL", course="KL Loss"),
)
