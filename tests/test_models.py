"""What every registered model must do, checked for each one (and each variant) at its default
config on random data of its kind: a model added to the registry is tested here unasked. What a
model does beyond the shared contract is tested in its own file."""

from __future__ import annotations

import io
import json
from dataclasses import asdict

import pytest
import torch

from lvm import registry
from lvm.engine import config as configs
from tests.helpers import default_config, every_model, stage_cases

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name,variant", every_model())
def test_every_stage_gives_finite_terms_and_gradients_to_every_weight(name, variant):
    torch.manual_seed(0)
    for stage, model, x in stage_cases(name, variant, n=2):
        terms = model.loss(x)
        assert "loss" in terms and all(t.shape == () and torch.isfinite(t) for t in terms.values()), stage
        terms["loss"].backward()
        for key, p in model.named_parameters():
            if p.requires_grad:  # a codebook kept by moving averages takes no gradient
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{stage}: {key}"


@pytest.mark.parametrize("name,variant", every_model())
def test_checkpoint_round_trips(name, variant):
    """The config as a checkpoint stores it (JSON) gives the config back, and each stage rebuilt
    from it with the saved weights gives the same loss terms to the last digit."""
    spec = registry.get(name)
    config, _ = default_config(name, variant)
    stored = configs.from_dict(spec.config, json.loads(json.dumps(asdict(config))))
    assert stored == config
    torch.manual_seed(0)
    for (stage, model, x), s in zip(stage_cases(name, variant, n=2), spec.stages):
        with torch.no_grad():  # move away from the initialisation a fresh build would also give
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        rebuilt = s.build(stored)
        rebuilt.load_state_dict(torch.load(buffer, weights_only=True))  # strict: the same weights
        model.eval(), rebuilt.eval()
        torch.manual_seed(1)
        a = model.loss(x)
        torch.manual_seed(1)
        b = rebuilt.loss(x)
        assert type(rebuilt) is type(model) and all(torch.equal(a[k], b[k]) for k in a), stage


# slow: an autoregressive model at the course's widths draws its 32 x 32 pixels one pass each
# (measured on a loaded 2-core CPU: pixelvae 156 s, pixelcnn 108 s, gated 90 s; the rest < 6 s);
# each model's own file samples at tiny widths in the quick subset
@pytest.mark.slow
@pytest.mark.parametrize("name,variant", every_model())
def test_samples_have_the_data_shape(name, variant):
    """What `lvm sample` draws from the stages, assembled: one example of the data's shape per
    sample (a point's two coordinates; an image's channels, height and width, where a one-channel
    grid of levels may leave out the channel, as `lvm.engine.quality.as_stored` reads it)."""
    spec = registry.get(name)
    config, info = default_config(name, variant)
    torch.manual_seed(0)
    built = [model.eval() for _, model, _ in stage_cases(name, variant, n=2)]
    model = spec.assemble(config, built) if spec.assemble else built[-1]
    samples = model.sample(2)
    shapes = {(2, *info.shape)} | ({(2, *info.shape[1:])} if info.shape[0] == 1 else set())
    assert samples.shape in shapes and torch.isfinite(samples.float()).all(), samples.shape
