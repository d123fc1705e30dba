"""The model contract of `lvm.engine.spec`, for every registered model: `encode` takes the batch
as stored, `decode` gives the data's shape in the output format and never draws, `reconstruct`
gives the same format as `decode`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lvm import registry
from lvm.engine.data import DataInfo

# tiny widths, so that every model builds and decodes in a fraction of a second
TINY = {
    "vae2d": {"hidden": (8,)},
    "vae": {"enc_widths": (4, 4, 4, 4), "dec_widths": (4, 4, 4, 4)},
    "vlae": {"enc_widths": (4, 4, 4, 4), "dec_widths": (4, 4, 4, 4), "made_hidden": (8,)},
    "vqvae": {"num_codes": 8, "code_dim": 4, "width": 4},
    "pixelcnn": {"channels": 4, "layers": 1, "embed_dim": 4, "head_channels": 4},
    "pixelvae": {"latent_dim": 2, "enc_widths": (4, 4, 4), "map_widths": (4, 4, 4), "channels": 4, "n_layers": 2},
}
SHAPES = {"points": (2,), "image": (3, 32, 32), "binary": (1, 8, 8)}


def stored(kind: str, n: int) -> torch.Tensor:
    """A batch as the data loader yields it."""
    if kind == "points":
        return torch.randn(n, 2)
    if kind == "binary":
        return torch.randint(0, 2, (n, *SHAPES[kind]), dtype=torch.uint8)
    return torch.randint(0, 256, (n, *SHAPES[kind]), dtype=torch.uint8)


def tiny(name: str) -> tuple[torch.nn.Module, str]:
    """The model a run of `name` assembles, at tiny widths, in evaluation mode; and its data kind."""
    spec = registry.get(name)
    kind = spec.kinds[0]
    cfg = dataclasses.replace(spec.default_config(DataInfo("test", kind, SHAPES[kind])), **TINY[name])
    stages = [stage.build(cfg) for stage in spec.stages]
    model = spec.assemble(cfg, stages) if spec.assemble else stages[-1]
    return model.eval(), kind


@pytest.mark.parametrize("name", registry.names())
def test_encode_takes_stored_data_and_decode_never_draws(name):
    torch.manual_seed(0)
    model, kind = tiny(name)
    if not hasattr(model, "encode"):
        assert not hasattr(model, "decode")  # no latent (the PixelCNN): neither
        return
    x = stored(kind, 3)
    with torch.no_grad():
        latent = model.encode(x)
        z = latent[0] if isinstance(latent, tuple) else latent  # the posterior mean, or the codes
        if isinstance(latent, tuple):  # a Gaussian q(z|x): (mu, log_std)
            assert latent[0].shape == latent[1].shape and latent[0].shape[0] == 3
        else:  # the VQ-VAE's code indices
            assert latent.dtype == torch.int64 and latent.shape[0] == 3
        torch.manual_seed(1)
        first = model.decode(z)
        torch.manual_seed(2)
        again = model.decode(z)
    assert torch.equal(first, again)  # no draw: a different seed gives the same image
    assert first.shape == x.shape and first.dtype.is_floating_point
    if kind == "binary":
        assert set(first.unique().tolist()) <= {0.0, 1.0}
    if hasattr(model, "reconstruct"):
        with torch.no_grad():
            x_hat = model.reconstruct(x)
        assert x_hat.shape == x.shape and x_hat.dtype == first.dtype
        if kind == "image":
            assert x_hat.min() >= -1 and x_hat.max() <= 1
