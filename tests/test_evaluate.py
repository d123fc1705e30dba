"""The likelihood `lvm eval` reports: the IWAE estimate against the exact log p(x) of a 2-D-latent
VAE (by quadrature over z), and each model's likelihood contract (`lvm.engine.evaluate`)."""

from __future__ import annotations

import math

import pytest
import torch

from lvm.blocks.distributions import discretised_gaussian_log_prob
from lvm.engine.data import gaussians
from lvm.engine.evaluate import importance_sampled, likelihood
from lvm.engine.spec import Evaluation
from lvm.pixelcnn import PixelCNNConfig, build
from lvm.pixelvae import PixelVAE, PixelVAEConfig
from lvm.vae import VAE, VAEConfig
from lvm.vae2d.model import VAE2d, VAE2dConfig
from lvm.vlae import VLAE, VLAEConfig
from lvm.vqvae import VQVAE, VQVAEConfig, VQVAEWithPrior, make_prior

TINY_VAE = dict(latent_dim=4, enc_widths=(4, 8, 8, 8), dec_widths=(8, 8, 8, 4))


@pytest.fixture(scope="module")
def vae2d_and_points() -> tuple[VAE2d, torch.Tensor, torch.Tensor]:
    """A small vae2d trained 300 steps on the course's rotated Gaussians (its latent is used: KL
    ~1.6 nats), 200 test points, and their exact log p(x) by quadrature."""
    torch.manual_seed(0)
    x = torch.from_numpy(gaussians("a", 1, 2000))
    model = VAE2d(VAE2dConfig(hidden=(32, 32))).standardise_with(x)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        loss = model.loss(x[torch.randint(0, len(x), (128,))])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = torch.from_numpy(gaussians("a", 1, 2500))[-200:]
    return model, test, model.log_prob_by_quadrature(test, limit=5.0, steps=201)


def test_quadrature_is_converged(vae2d_and_points):
    model, test, exact = vae2d_and_points
    finer = model.log_prob_by_quadrature(test[:20], limit=7.0, steps=701)
    assert (finer - exact[:20]).abs().max() < 3e-4


def test_iwae_tightens_towards_the_exact_log_likelihood(vae2d_and_points):
    """The estimate at k = 1000 is within 0.003 nats of the exact mean log p(x); the gap shrinks
    as k goes 1, 10, 100, 1000; the -ELBO stays at or above the estimate. Each estimate is
    averaged over 20 independent repeats of the 200 points, so that what is compared is the
    bound's expectation, not one draw of it."""
    model, test, exact = vae2d_and_points
    repeats = 20
    gaps, neg_elbos = [], []
    for k in (1, 10, 100, 1000):
        torch.manual_seed(k)
        log_p, elbo = importance_sampled(model, test.repeat(repeats, 1), k, units=20_000)
        assert torch.all(elbo <= log_p + 1e-9)  # log-mean-exp >= mean of the same weights
        gaps.append((exact.repeat(repeats) - log_p).mean().item())
        neg_elbos.append(-elbo.mean().item())
    assert gaps[0] > 0.01  # k = 1 is the ELBO: well below log p(x) for this posterior
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert abs(gaps[-1]) < 0.003, gaps
    assert min(neg_elbos) >= -exact.mean().item()  # the -ELBO never beats the true NLL


def test_likelihood_reports_nats_and_bits_per_dim(vae2d_and_points):
    model, test, exact = vae2d_and_points
    out = likelihood(model, test, Evaluation(k=50))
    assert out["k"] == 50 and out["test_examples"] == 200
    assert out["elbo"] >= out["nll"]
    assert out["bits_per_dim"] == pytest.approx(out["nll"] / (2 * math.log(2)))
    assert out["nll"] == pytest.approx(-exact.mean().item(), abs=0.05)


@pytest.mark.parametrize("sigma", [0.01, 0.7071, 3.0])
@pytest.mark.parametrize("mean", [-1.5, -0.3, 0.1, 0.99])
def test_discretised_gaussian_is_a_distribution_over_256_levels(mean, sigma):
    levels = torch.arange(256, dtype=torch.uint8)
    p = discretised_gaussian_log_prob(levels, torch.full((256,), mean), math.log(sigma)).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-9)
    # among the inner levels (the two ends also hold the tails), the most probable is the one
    # whose bin holds the mean
    if -1 < mean < 1:
        assert p[1:255].argmax().item() + 1 == min(254, max(1, round((mean + 1) * 127.5)))


def images(n: int, channels: int, size: int = 32, levels: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, levels, (n, channels, size, size), generator=g).to(torch.uint8)


@pytest.mark.parametrize("model", [
    VAE(VAEConfig(channels=3, **TINY_VAE)),
    VLAE(VLAEConfig(channels=3, made_hidden=(16, 16), **TINY_VAE)),
])
def test_image_vae_weights_are_a_likelihood_of_8_bit_images(model):
    """log p(x, z) - log q(z|x) with a discretised decoder: log P(x|z) <= 0, so a weight is at most
    log p(z) - log q(z|x); the estimate lies below 8 bits/dim plus a few of the KL's."""
    model.eval()
    x = images(3, 3)
    w = model.log_weights(x, 5)
    assert w.shape == (5, 3) and torch.isfinite(w).all()
    out = likelihood(model, x, Evaluation(k=5))
    assert out["elbo"] >= out["nll"] > 0
    assert 0 < out["bits_per_dim"] < 20


def test_pixelvae_weights_and_bound():
    model = PixelVAE(PixelVAEConfig(shape=(1, 8, 8), latent_dim=4, n_layers=2, enc_widths=(4, 8, 8),
                                    map_widths=(8, 8, 4), channels=8)).eval()
    x = images(4, 1, size=8, levels=2)
    out = likelihood(model, x, Evaluation(k=8))
    assert out["elbo"] >= out["nll"] > 0
    # the ELBO of the weights is the model's own -ELBO, estimated
    torch.manual_seed(0)
    neg_elbo = torch.stack([model.loss(x)["neg_elbo"] for _ in range(200)]).mean().item()
    assert out["elbo"] == pytest.approx(neg_elbo, rel=0.02)


def test_pixelcnn_log_prob_is_its_loss_summed_over_pixels():
    model = build(PixelCNNConfig(levels=2, shape=(8, 8), embed_dim=4, channels=8, head_channels=8, layers=2)).eval()
    x = images(5, 1, size=8, levels=2)
    out = likelihood(model, x, Evaluation(likelihood="exact"))
    assert out["k"] is None and out["nll"] == out["elbo"]
    with torch.no_grad():
        assert out["nll"] == pytest.approx(64 * model.loss(x)["loss"].item(), rel=1e-5)
    assert out["bits_per_dim"] == pytest.approx(out["nll"] / (64 * math.log(2)))


@pytest.mark.parametrize("prior", ["pixelcnn", "transformer"])
def test_vqvae_bound_is_recon_plus_prior_over_the_codes(prior):
    vq = VQVAE(VQVAEConfig(channels=1, num_codes=8, code_dim=8, width=8)).eval()
    model = VQVAEWithPrior(vq, make_prior(prior, 8)).eval()
    x = images(3, 1)
    parts = model.log_prob_parts(x)
    with torch.no_grad():
        codes = vq.encode(x)
        prior_nll = model.prior.loss(codes)["loss"].item() * 64  # per-code mean -> per grid
    assert -parts["prior"].mean().item() == pytest.approx(prior_nll, rel=1e-4)
    assert (parts["recon"] <= 0).all()
    out = likelihood(model, x, Evaluation(likelihood="bound"))
    assert out["nll"] == pytest.approx(-(parts["recon"] + parts["prior"]).mean().item())
