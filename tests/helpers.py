"""What many test files share: running the `lvm` command as a user does, checking the one line
a user gets for a bad input, and torch on one thread. Fixtures built on these are in conftest.py."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner, Result
from torch import nn

from lvm.cli import cli


def invoke(*args, env: dict | None = None) -> Result:
    """`lvm ARGS...` through click's CliRunner; arguments may be paths or numbers. An exception
    the command does not turn into a one-line error reaches the test, with its traceback; none
    may reach the user's screen."""
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    assert "Traceback" not in result.output, result.output
    return result


def one_line_error(result: Result, *expect: str) -> str:
    """The result of a command a user got wrong: exit 2, one line, no traceback, saying `expect`."""
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for text in expect:
        assert text in lines[0], lines[0]
    return lines[0]


@contextmanager
def single_thread():
    """Torch on one thread inside the block. Tiny models make many small sequential passes: on a
    shared CPU a second OpenMP thread only waits for the first (measured in test_pixelvae: 4 s on
    one thread, 200 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- data

def fashion_mnist_on_disk() -> bool:
    """Whether Fashion-MNIST is here (Debian's dataset-fashion-mnist, or the data dir): the one
    real dataset tests may use. Hide it to test as a newcomer: `bwrap --dev-bind / / --tmpfs
    /usr/share/datasets python -m pytest ...`."""
    from lvm.engine import data

    return data.on_disk("fashion-mnist")


# for a test that needs real (or binary) images; the rest run on the generated data, always there
needs_fashion_mnist = pytest.mark.skipif(not fashion_mnist_on_disk(), reason=(
    "Fashion-MNIST is not on disk (apt-get install dataset-fashion-mnist); the generated data has no binary images"))


# ----------------------------------------------------------------------------- every model

# one example of each kind of data a model can declare (`ModelSpec.kinds`)
SHAPES = {"points": (2,), "image": (3, 32, 32), "binary": (1, 32, 32)}


def every_model() -> list:
    """Every registered model and each of its variants, as pytest parameters `(name, variant)`
    (variant None: the model as registered): a model added to the registry is tested unasked."""
    from lvm import registry

    return [pytest.param(name, variant, id=f"{name}-{variant}" if variant else name)
            for name in registry.names() for variant in (None, *registry.get(name).variants)]


def bf16_models() -> list:
    """`every_model()`, less the models that train in float32 by default (`amp="off"` in their
    spec: vae2d, an MLP too small for bf16 to pay), each skipped with that reason."""
    from lvm import registry

    return [p if registry.get(p.values[0]).train.amp != "off" else
            pytest.param(*p.values, id=p.id, marks=pytest.mark.skip(reason="trains in float32 by default (amp='off')"))
            for p in every_model()]


def default_config(name: str, variant: str | None = None):
    """The model's config at its defaults (the course's widths), with the variant's changes, for
    data of the first kind it trains on; and that data's DataInfo."""
    from lvm import registry
    from lvm.engine.data import DataInfo

    spec = registry.get(name)
    info = DataInfo("random", spec.kinds[0], SHAPES[spec.kinds[0]])
    return replace(spec.default_config(info), **spec.variants.get(variant, {})), info


def stage_cases(name: str, variant: str | None, n: int = 4) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(stage name, network, a batch of n of its data) for every stage of a model at its default
    config (what `lvm bench` builds) on random data of the first kind it trains on; a later stage
    gets what the untrained stages before it make of that data (the VQ-VAE's prior: its codes)."""
    from lvm import registry
    from lvm.bench import random_batch
    from lvm.engine.data import Data

    config, info = default_config(name, variant)
    data, built, cases = Data(info, random_batch(info, n), random_batch(info, n)), [], []
    for stage in registry.get(name).stages:
        if stage.inputs is not None:
            data = stage.inputs(built, data)
        built.append(stage.build(config))
        cases.append((stage.name, built[-1], data.train[:n]))
    return cases
