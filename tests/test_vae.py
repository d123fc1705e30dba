"""Properties of the image VAE, the VLAE and the MADE block they use (course Q2)."""

from __future__ import annotations

import functools
import json
from dataclasses import asdict

import pytest
import torch

from lvm import registry
from lvm.engine import config as configs
from lvm.engine.data import load
from lvm.blocks.distributions import gaussian_kl, gaussian_log_prob, standard_normal_log_prob
from lvm.blocks.made import MADE
from lvm.engine.train import TrainConfig, fit
from lvm.vae import VAE, VAEConfig
from lvm.vlae import VLAE, AutoregressiveFlowPrior, VLAEConfig
from tests.helpers import fashion_mnist_on_disk

TINY = dict(latent_dim=4, enc_widths=(4, 8, 8, 8), dec_widths=(8, 8, 8, 4))


def tiny(model: str, channels: int = 3) -> VAE:
    if model == "vae":
        return VAE(VAEConfig(channels=channels, **TINY))
    return VLAE(VLAEConfig(channels=channels, made_hidden=(32, 32), **TINY))


def images(n: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, 32, 32), generator=g, dtype=torch.uint8)


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    mu, log_std = torch.randn(3, 5), 0.5 * torch.randn(3, 5)  # 3 posteriors over 5 dims
    z = mu + log_std.exp() * torch.randn(200_000, 3, 5)  # (S, 3, 5)
    log_ratio = (gaussian_log_prob(z, mu, log_std) - standard_normal_log_prob(z)).sum(-1)  # (S, 3)
    mc, stderr = log_ratio.mean(0), log_ratio.std(0) / len(z) ** 0.5
    exact = gaussian_kl(mu, log_std)  # (3,)
    assert torch.all((mc - exact).abs() < 4 * stderr + 1e-3), (mc, exact, stderr)


@pytest.mark.parametrize("hidden", [(32, 32), (7,), (64, 16, 64)])
def test_made_output_i_depends_only_on_inputs_before_i(hidden):
    torch.manual_seed(0)
    dim, n_out = 6, 2
    made = MADE(dim, hidden, n_out)
    x = torch.randn(16, dim, requires_grad=True)
    out = made(x)
    assert out.shape == (16, dim, n_out)
    for i in range(dim):
        for k in range(n_out):
            (grad,) = torch.autograd.grad(out[:, i, k].sum(), x, retain_graph=True)
            assert torch.all(grad[:, i:] == 0), f"output {i} sees inputs >= {i}"
            if i > 0 and len(hidden) < 3:  # with wide enough layers every output sees its past
                assert grad[:, :i].abs().sum() > 0, f"output {i} sees none of its inputs"
    assert made.net[0].mask.requires_grad is False
    assert "net.0.mask" in made.state_dict()  # masks are buffers: saved and moved, not trained


def random_flow(dim: int = 5) -> AutoregressiveFlowPrior:
    torch.manual_seed(0)
    flow = AutoregressiveFlowPrior(dim, (32, 32), max_log_scale=3.0).double()
    with torch.no_grad():  # larger weights than at init, so scales and shifts are far from 1 and 0
        for p in flow.parameters():
            p.mul_(3.0)
    return flow


def test_flow_log_det_equals_autograd_jacobian():
    flow = random_flow()
    for seed in range(4):
        z = torch.randn(5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None])[0][0], z)  # (D, D)
        assert torch.allclose(jac, jac.tril()), "eps_i must depend on z_<=i only"
        _, log_det = flow(z[None])
        sign, log_abs = torch.linalg.slogdet(jac)
        assert sign > 0
        assert torch.allclose(log_det[0], log_abs, atol=1e-9), (log_det, log_abs)


def test_prior_sampling_inverts_the_flow():
    flow = random_flow()
    eps = torch.randn(64, 5, dtype=torch.float64)
    z = flow.inverse(eps)
    back, _ = flow(z)
    assert torch.allclose(back, eps, atol=1e-9)
    assert not torch.allclose(z, eps)  # the flow is not the identity


@pytest.mark.parametrize("model", ["vae", "vlae"])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes(model, channels):
    torch.manual_seed(0)
    m = tiny(model, channels)
    x = images(6, channels)  # uint8, as stored: every data-taking method takes it so
    terms = m.loss(images(6, channels))
    assert set(terms) == {"loss", "recon_loss", "kl_loss"}
    assert all(t.shape == () and torch.isfinite(t) for t in terms.values())
    assert torch.allclose(terms["loss"], terms["recon_loss"] + terms["kl_loss"])
    m.eval()  # BatchNorm: figures come from the running statistics, not from the batch
    samples = m.sample(7)
    assert samples.shape == (7, channels, 32, 32) and samples.abs().max() <= 1
    assert m.reconstruct(x).shape == (6, channels, 32, 32)
    rows = m.interpolate(x[:3], x[3:], steps=5)
    assert rows.shape == (3, 5, channels, 32, 32)
    # the ends of each row decode the two latent means themselves
    assert torch.allclose(rows[:, 0], m.reconstruct(x[:3]), atol=1e-5)
    assert torch.allclose(rows[:, -1], m.reconstruct(x[3:]), atol=1e-5)


def test_norm_none_is_the_course_network_and_batch_adds_only_batchnorm():
    course, ours = VAE(VAEConfig(norm="none")), VAE(VAEConfig())
    # the course's Q2a network (../shared/ANCHORS.md), counted layer by layer
    convs = [(3, 32, 3), (32, 64, 3), (64, 128, 3), (128, 256, 3), (128, 128, 4), (128, 64, 4), (64, 32, 4), (32, 3, 3)]
    linears = [(4 * 4 * 256, 2 * 16), (16, 4 * 4 * 128)]
    expected = sum(i * o * k * k + o for i, o, k in convs) + sum(i * o + o for i, o in linears)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(course) == expected
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in course.modules())
    # ours: a BatchNorm (a scale and a shift per channel) before each of the 7 hidden convs' ReLUs
    norms = [m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [n.num_features for n in norms] == [32, 64, 128, 256, 128, 64, 32]
    assert count(ours) == expected + 2 * sum(n.num_features for n in norms)
    for net in (ours.encoder.net, ours.decoder.net):  # each norm sits between a conv and its ReLU
        layers = list(net)
        for i, layer in enumerate(layers):
            if isinstance(layer, torch.nn.BatchNorm2d):
                assert isinstance(layers[i - 1], (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
                assert isinstance(layers[i + 1], torch.nn.ReLU)


@pytest.mark.parametrize("model", ["vae", "vlae"])
def test_a_checkpoint_from_before_norm_rebuilds_the_course_network(model):
    spec = registry.get(model)
    old = spec.config(**TINY, norm="none")
    saved = json.loads(json.dumps(asdict(old)))
    del saved["norm"]  # what a checkpoint written before the field existed holds
    rebuilt = spec.stages[0].build(configs.from_dict(spec.config, saved))
    rebuilt.load_state_dict(spec.stages[0].build(old).state_dict())  # strict: same layers
    assert rebuilt.cfg.norm == "none"
    assert configs.from_dict(spec.config, asdict(spec.config(**TINY))).norm == "batch"  # new ones keep theirs


def test_batchnorm_in_eval_mode_makes_each_image_independent_of_its_batch():
    torch.manual_seed(0)
    m = tiny("vae")
    x = images(16)
    m.loss(x)["loss"].backward()  # one training pass moves the running statistics off their start
    m.eval()
    assert torch.allclose(m.reconstruct(x)[:4], m.reconstruct(x[:4]), atol=1e-5)
    m.train()
    assert not torch.allclose(m.reconstruct(x)[:4], m.reconstruct(x[:4]), atol=1e-5)  # batch statistics


@functools.lru_cache(maxsize=1)
def real_slice():
    name = "fashion-mnist" if fashion_mnist_on_disk() else "shapes"  # shapes: always there
    return load(name, train_limit=2000, test_limit=500, download=False)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vae", "vlae"])
def test_training_lowers_test_neg_elbo(model):
    data = real_slice()
    torch.manual_seed(0)
    m = tiny(model, data.info.channels)
    history = fit(m, data.train, data.test, TrainConfig(epochs=3, batch_size=32, device="cpu"))
    loss = history.test["loss"]
    assert len(history.train["loss"]) == 3 * 63  # ~200 steps
    # on the generated shapes (no Fashion-MNIST), seeds 0/1/2: vae 0.26/0.32/0.38, vlae 0.25/0.32/0.37 of
    # the start, every epoch lower, KL 8.8-11.3: the bar holds with a margin of 1.6x at least
    assert loss[-1] < 0.6 * loss[0], loss
    assert all(a > b for a, b in zip(loss, loss[1:])), loss  # and every epoch helps
    assert history.test["kl_loss"][-1] > 0  # the latent is in use
