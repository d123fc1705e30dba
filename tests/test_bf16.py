"""The bf16 fast path keeps the numbers: under autocast the loss terms of every registered model
(each variant, each stage) come out in float32 and close to the float32 loss, the quantizer picks
exactly the float32 nearest codes, and test numbers are measured in float32. The checks run bf16 autocast on the CPU (`amp="on"`),
the same mechanism as on a GPU, where it is on by default."""

from __future__ import annotations

import pytest
import torch

from lvm.engine.train import TrainConfig, fit
from lvm.vqvae import VectorQuantizer
from tests.helpers import bf16_models, stage_cases
from tests.test_vae import images, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def bf16(fn, *args):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn(*args)


def test_nearest_codes_under_bf16_autocast_are_the_float32_ones():
    torch.manual_seed(0)
    vq = VectorQuantizer(num_codes=128, code_dim=256)
    # codes and vectors around one far-off centre: ||z||^2 and 2 z.e are large and nearly cancel,
    # as for a trained encoder whose outputs sit near their codes
    centre = torch.randn(256)
    vq.codebook.data = centre + 0.05 * torch.randn(128, 256)
    z = centre + 0.05 * torch.randn(512, 256)
    exact = vq.nearest(z)  # (N,) float32, no autocast
    direct = ((z[:, None] - vq.codebook[None]) ** 2).sum(-1).argmin(1)  # (N,) the (N, K, D) way
    assert (exact == direct).float().mean() > 0.98  # float32 rounding may flip a near-tie or two
    # the case is hard: the same three-term formula computed in bf16 gets most codes wrong
    zb, eb = z.bfloat16(), vq.codebook.detach().bfloat16()
    naive = (zb.pow(2).sum(1, keepdim=True) - 2 * zb @ eb.t() + eb.pow(2).sum(1)).argmin(1)
    assert (naive == exact).float().mean() < 0.5
    assert torch.equal(bf16(vq.nearest, z), exact)


def test_ema_codebook_update_under_autocast_equals_float32():
    torch.manual_seed(0)
    a = VectorQuantizer(num_codes=16, code_dim=8, ema_decay=0.9, restart_dead=True, restart_window=1)
    b = VectorQuantizer(num_codes=16, code_dim=8, ema_decay=0.9, restart_dead=True, restart_window=1)
    b.load_state_dict(a.state_dict())
    z = torch.randn(4, 8, 3, 3).bfloat16().float()  # values an encoder under bf16 could give
    torch.manual_seed(1)
    a(z)
    torch.manual_seed(1)
    bf16(b, z)  # the codebook's moving averages must not be summed in bf16
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert va.dtype == vb.dtype, k
        torch.testing.assert_close(va, vb, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name,variant", bf16_models())
def test_loss_terms_under_autocast_are_float32_and_close(name, variant):
    torch.manual_seed(0)
    for stage, model, x in stage_cases(name, variant, n=2):  # each at its default (the course's) widths
        model.eval()  # no codebook updates: both passes see the same weights
        torch.manual_seed(3)
        exact = model.loss(x)
        torch.manual_seed(3)  # the same reparameterisation noise
        rounded = bf16(model.loss, x)
        for k, v in rounded.items():
            assert v.dtype == torch.float32, (stage, k)
            # bf16 keeps ~3 significant digits in the network; the terms stay within a few percent
            torch.testing.assert_close(v, exact[k], rtol=0.05, atol=1e-3, msg=f"{stage} {k}")


def test_training_under_autocast_learns_and_evaluates_in_float32():
    torch.manual_seed(0)
    model = tiny("vae")
    x = images(96)
    h = fit(model, x[:64], x[64:], TrainConfig(epochs=3, batch_size=16, device="cpu", amp="on", log_every=2))
    assert h.train["loss"][-1] < h.train["loss"][0]
    # the test numbers are float32 measurements: the model's own float32 loss on the whole test
    # set gives them back (the KL is in closed form, so no noise enters)
    model.eval()
    with torch.no_grad():
        exact = model.loss(x[64:])["kl_loss"].item()
    assert h.test["kl_loss"][-1] == pytest.approx(exact, rel=1e-5)
