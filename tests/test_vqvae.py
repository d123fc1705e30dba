"""VQ-VAE: the quantizer's invariants, the course's shapes, learning on real data, and the full
two-stage run with a stand-in prior (a per-position categorical with the PixelCNN's contract,
so the test does not depend on, or wait for, a PixelCNN's 64 sequential sampling passes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lvm
import lvm.vqvae
from lvm import registry
from lvm.blocks.scaling import to_unit
from lvm.engine import data as datasets
from lvm.engine import pipeline as experiment
from lvm.engine.errors import UserError
from lvm.engine.train import TrainConfig, fit
from lvm.vqvae import VQVAE, VQVAEConfig, VectorQuantizer, codebook_usage, encode_all
from tests.helpers import fashion_mnist_on_disk

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(**kw) -> VQVAEConfig:
    return VQVAEConfig(**{"num_codes": 16, "code_dim": 8, "width": 8, **kw})


# ----------------------------------------------------------------------------- quantizer


def quantize(seed: int, num_codes: int, code_dim: int, shape: tuple[int, ...]):
    """A quantizer with a N(0, I) codebook, a N(0, I) batch `z` of `shape`, and vq(z)."""
    torch.manual_seed(seed)
    vq = VectorQuantizer(num_codes=num_codes, code_dim=code_dim).eval()
    vq.codebook.data.normal_()
    z = torch.randn(*shape)
    return vq, z, vq(z)


def test_lookup_of_indices_is_the_quantized_tensor():
    vq, z, (quantized, indices, loss) = quantize(0, 16, 5, (3, 5, 4, 6))
    assert quantized.shape == z.shape and indices.shape == (3, 4, 6) and indices.dtype == torch.int64
    torch.testing.assert_close(vq.lookup(indices), quantized, atol=1e-6, rtol=0)
    # and the loss is codebook + beta * commitment, both equal to the mean squared distance in value
    assert loss.item() == pytest.approx(2 * F.mse_loss(z, vq.lookup(indices)).item(), rel=1e-5)


def test_indices_are_the_nearest_codes():
    vq, z, (_, indices, _) = quantize(1, 32, 7, (4, 7, 5, 5))
    flat = z.permute(0, 2, 3, 1).reshape(-1, 7)
    expected = torch.cdist(flat, vq.codebook.data).argmin(1)
    assert torch.equal(indices.flatten(), expected)


def test_straight_through_gradient_reaches_encoder_unchanged():
    torch.manual_seed(2)
    model = VQVAE(tiny(channels=3)).train()
    seen = {}

    def keep_output(module, inputs, output):
        output.retain_grad()
        seen["z"] = output

    def keep_input(module, inputs):
        inputs[0].retain_grad()
        seen["q"] = inputs[0]

    model.encoder.register_forward_hook(keep_output)
    model.decoder.register_forward_pre_hook(keep_input)
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    x_hat, _, _ = model(x)
    # Only the reconstruction: the vq loss adds its own (commitment) gradient to z on purpose.
    F.mse_loss(x_hat, to_unit(x)).backward()
    assert seen["q"].grad.abs().sum() > 0
    torch.testing.assert_close(seen["z"].grad, seen["q"].grad, atol=0, rtol=0)


def _assignments(vq: VectorQuantizer, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = z.permute(0, 2, 3, 1).reshape(-1, vq.code_dim)
    return flat, vq.nearest(flat)


def test_ema_with_decay_zero_moves_codes_to_the_mean_of_their_vectors():
    torch.manual_seed(3)
    vq = VectorQuantizer(num_codes=8, code_dim=4, ema_decay=0.0)
    vq.codebook.data.normal_()
    before = vq.codebook.data.clone()
    z = torch.randn(2, 4, 6, 6)
    flat, idx = _assignments(vq, z)
    vq.train()(z)
    for k in range(8):
        if (idx == k).any():
            torch.testing.assert_close(vq.codebook.data[k], flat[idx == k].mean(0))
        else:
            assert torch.equal(vq.codebook.data[k], before[k])  # an unassigned code stays put
    assert not vq.codebook.requires_grad  # EMA codes get no gradient


def test_ema_with_decay_moves_codes_towards_the_mean():
    torch.manual_seed(4)
    vq = VectorQuantizer(num_codes=8, code_dim=4, ema_decay=0.9)
    vq.codebook.data.normal_()
    vq.ema_sum.copy_(vq.codebook.data)
    before = vq.codebook.data.clone()
    z = torch.randn(2, 4, 6, 6) + 3.0
    flat, idx = _assignments(vq, z)
    vq.train()(z)
    for k in idx.unique():
        mean = flat[idx == k].mean(0)
        assert (vq.codebook.data[k] - mean).norm() < (before[k] - mean).norm()


def test_dead_code_is_restarted_at_an_encoder_output():
    torch.manual_seed(5)
    vq = VectorQuantizer(num_codes=8, code_dim=3, restart_dead=True, restart_window=3).train()
    vq.codebook.data.normal_()
    vq.codebook.data[7] = 100.0  # far from every input: never picked
    z = torch.randn(2, 3, 4, 4)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    vq(z)
    vq(z)
    assert vq.codebook.data[7].eq(100.0).all()  # not yet: only 2 steps unused
    vq(z)
    code = vq.codebook.data[7]
    assert (flat - code).abs().sum(1).min() < 1e-6  # now it sits on one of the batch's vectors
    assert vq.steps_unused[7] == 0


def test_codebook_usage_on_hand_made_indices():
    assert codebook_usage(torch.tensor([0, 1, 2, 3]), 8) == {"perplexity": pytest.approx(4.0), "codes_used": 4}
    assert codebook_usage(torch.tensor([[5, 5], [5, 5]]), 8) == {"perplexity": pytest.approx(1.0), "codes_used": 1}
    usage = codebook_usage(torch.tensor([0, 0, 1, 2]), 8)  # p = (1/2, 1/4, 1/4): H = 1.5 ln 2
    assert usage["perplexity"] == pytest.approx(2**1.5) and usage["codes_used"] == 3


# ----------------------------------------------------------------------------- model


@pytest.mark.parametrize("channels,upsample", [(1, "transposed"), (3, "transposed"), (3, "resize")])
def test_encoder_gives_8x8_codes_and_decoder_images(channels, upsample):
    model = VQVAE(tiny(channels=channels, upsample=upsample)).eval()
    x = torch.randint(0, 256, (5, channels, 32, 32), dtype=torch.uint8)
    codes = model.encode(x)
    assert codes.shape == (5, 8, 8) and codes.dtype == torch.int64
    assert 0 <= codes.min() and codes.max() < 16
    images = model.decode(codes)
    assert images.shape == (5, channels, 32, 32) and images.abs().max() <= 1
    terms = model.loss(x)
    assert set(terms) == {"loss", "recon_loss", "vq_loss"}
    assert terms["loss"].item() == pytest.approx((terms["recon_loss"] + terms["vq_loss"]).item())


def test_resize_decoder_draws_no_stride_2_pattern_where_the_codes_are_constant():
    """One code everywhere: away from the border, where zero padding reaches, the resize decoder's
    image is flat, while the transposed convolutions' four kernel phases print a 2x2 pattern."""
    torch.manual_seed(0)
    spread = {}
    for kind in ("transposed", "resize"):
        model = VQVAE(tiny(channels=1, upsample=kind)).eval()
        with torch.no_grad():
            image = model.decode(torch.full((1, 8, 8), 3))[0, 0]
        spread[kind] = image[12:20, 12:20].std().item()
    assert spread["resize"] < 1e-6 < 1e-3 < spread["transposed"]


def test_course_architecture_at_full_width():
    model = VQVAE(VQVAEConfig(channels=3))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert (convs[0].in_channels, convs[0].out_channels, convs[0].kernel_size, convs[0].stride) == (3, 256, (4, 4), (2, 2))
    assert model.vq.codebook.shape == (128, 256)
    assert model.vq.codebook.abs().max() <= 1 / 128


@pytest.mark.slow
def test_training_lowers_test_reconstruction_loss():
    name = "fashion-mnist" if fashion_mnist_on_disk() else "shapes"  # shapes: always there
    data = datasets.load(name, train_limit=1024, test_limit=256, download=False)
    torch.manual_seed(0)
    model = VQVAE(tiny(channels=data.info.channels, num_codes=32, code_dim=16, width=16))
    history = fit(model, data.train, data.test, TrainConfig(epochs=6, batch_size=32, grad_clip=1.0))
    recon = history.test["recon_loss"]
    assert len(history.train["loss"]) == 6 * 32  # a few hundred steps
    # on the generated shapes (no Fashion-MNIST), seeds 0/1/2: 0.15/0.12/0.14 of the start, all 32
    # codes used: the bar holds with a margin of 3x at least
    assert recon[-1] < 0.5 * recon[0]
    assert codebook_usage(encode_all(model, data.test), 32)["codes_used"] > 1


# ----------------------------------------------------------------------------- the full run


class StandInPrior(nn.Module):
    """Independent categorical per code position, with the PixelCNN prior's contract."""

    def __init__(self, levels: int, size: tuple[int, int] = (8, 8)):
        super().__init__()
        self.levels = levels
        self.logits = nn.Parameter(torch.zeros(levels, *size))  # (K, H, W)

    def loss(self, codes: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.logits.expand(len(codes), *self.logits.shape)  # (B, K, H, W)
        return {"loss": F.cross_entropy(logits, codes)}

    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        logp = self.logits.log_softmax(0).expand(len(codes), *self.logits.shape)  # (B, K, H, W)
        return logp.gather(1, codes[:, None]).flatten(1).sum(1)  # (B,)

    @torch.no_grad()
    def sample(self, n: int, shape=None, temperature: float = 1.0) -> torch.Tensor:
        probs = (self.logits / temperature).softmax(0).permute(1, 2, 0).reshape(-1, self.levels)  # (H*W, K)
        return torch.multinomial(probs, n, replacement=True).t().reshape(n, *self.logits.shape[1:])  # (n, H, W)


@pytest.fixture
def stand_in_prior(monkeypatch):
    made = []

    def make(kind, levels):
        made.append(kind)
        return StandInPrior(levels)

    monkeypatch.setattr(lvm.vqvae, "make_prior", make)
    return made


@pytest.mark.slow
def test_full_run_writes_every_file_and_resumes(tmp_path: Path, stand_in_prior):
    kw = dict(out=tmp_path, train_limit=64, test_limit=60, download=False, epochs=1, batch_size=32)
    metrics = experiment.train_row(registry.get("vqvae"), "shapes", overrides={"prior_epochs": 2, "prior": "gated"}, **kw)
    for f in ("checkpoint.pt", "vqvae_history.json", "vqvae_train_plot.png", "prior_history.json",
              "prior_train_plot.png", "samples.png", "reconstructions.png", "codes.png", "metrics.json"):
        assert (tmp_path / f).is_file(), f
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["checkpoint.pt"]  # one file holds both stages
    assert stand_in_prior == ["gated"]
    test = metrics["test"]
    assert set(test) >= {"loss", "recon_loss", "vq_loss", "perplexity", "codes_used", "prior_nll"}
    assert 1 <= test["codes_used"] <= 128 and 1 <= test["perplexity"] <= test["codes_used"] + 1e-6
    assert test["prior_nll"] < math.log(128)  # beat uniform after training
    assert metrics["sample_seconds"] > 0
    assert metrics["config"]["model"]["prior"] == "gated" and metrics["variant"] == "gated"
    assert metrics["stage_epochs"] == {"vqvae": 1, "prior": 2}
    assert json.loads((tmp_path / "prior_history.json").read_text())["test"]["loss"][0] == pytest.approx(math.log(128))

    # The one checkpoint rebuilds both stages.
    model, meta = lvm.load_model(tmp_path / "checkpoint.pt")
    assert isinstance(model.vqvae, VQVAE) and isinstance(model.prior, StandInPrior) and meta["model"] == "vqvae"
    assert model.sample(3).shape == (3, 3, 32, 32)

    # Resuming finished stages trains nothing more and gives the same numbers.
    again = experiment.train_row(registry.get("vqvae"), "shapes", resume=True, overrides={"prior_epochs": 2, "prior": "gated"}, **kw)
    for k in ("loss", "recon_loss", "vq_loss", "prior_nll", "codes_used"):
        assert again["test"][k] == pytest.approx(test[k], rel=1e-5)
    history = json.loads((tmp_path / "prior_history.json").read_text())
    assert len(history["test"]["loss"]) == 3  # init + 2 epochs, not 5


def test_the_prior_trains_at_its_own_schedule_on_a_reused_vqvae(tmp_path: Path, stand_in_prior, monkeypatch):
    """`-o prior_lr_schedule=cosine -o prior_warmup=N` reaches the prior stage's trainer, and only
    it: the VQ-VAE keeps the run's constant rate, and a row that changes only the prior's schedule
    takes another run's finished VQ-VAE as it is and retrains just the prior."""
    seen: dict[str, list[TrainConfig]] = {}
    real_fit = experiment.fit

    def spy(model, train, test, cfg, **kw):
        seen.setdefault(kw["desc"], []).append(cfg)
        return real_fit(model, train, test, cfg, **kw)

    monkeypatch.setattr(experiment, "fit", spy)
    kw = dict(train_limit=64, test_limit=32, download=False, epochs=1, batch_size=32)
    small = {"code_dim": 8, "width": 8, "num_codes": 16, "prior_epochs": 2}
    plain = experiment.train_row(registry.get("vqvae"), "shapes", out=tmp_path / "plain", overrides=small, **kw)
    cosine = experiment.train_row(registry.get("vqvae"), "shapes", out=tmp_path / "cosine", reuse=tmp_path / "plain" / "checkpoint.pt",
                                  overrides={**small, "prior_lr_schedule": "cosine", "prior_warmup": 3}, **kw)
    vq, prior = seen["vqvae vqvae"], seen["vqvae prior"]
    assert [(c.lr_schedule, c.warmup, c.epochs) for c in vq] == [("constant", 0, 1)] * 2
    assert [(c.lr_schedule, c.warmup, c.epochs) for c in prior] == [("constant", 0, 2), ("cosine", 3, 2)]
    # the VQ-VAE was taken, not trained again: the same codes and numbers; the prior trained anew
    assert cosine["test"]["loss"] == plain["test"]["loss"] and cosine["test"]["codes_used"] == plain["test"]["codes_used"]
    assert cosine["config"]["model"]["prior_lr_schedule"] == "cosine" and cosine["test"]["prior_nll"] != plain["test"]["prior_nll"]
    # a resume cannot change the prior's schedule behind the checkpoint's back
    with pytest.raises(UserError, match="prior_lr_schedule"):
        experiment.train_row(registry.get("vqvae"), "shapes", out=tmp_path / "plain", resume=True, overrides={**small, "prior_lr_schedule": "cosine"}, **kw)


def test_ema_loss_is_the_course_number_without_codebook_gradient():
    """With EMA the codebook term is reported (so losses compare with the course's) but trains nothing."""
    torch.manual_seed(0)
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    ema = VectorQuantizer(num_codes=8, code_dim=4, ema_decay=0.99).eval()
    plain = VectorQuantizer(num_codes=8, code_dim=4).eval()
    plain.codebook.data.copy_(ema.codebook.data)
    _, _, loss_ema = ema(z)
    _, _, loss_plain = plain(z)
    assert loss_ema.item() == pytest.approx(loss_plain.item(), rel=1e-6)
    loss_ema.backward()
    assert ema.codebook.grad is None and z.grad.abs().sum() > 0


def test_final_line_names_the_prior_actually_used():
    test = {"loss": 0.5, "recon_loss": 0.4, "vq_loss": 0.1, "prior_nll": 1.25}
    line = experiment.final_line(lvm.vqvae.MODEL, test, {"prior": "pixelcnn"})
    assert line == "Final VQ-VAE Test Loss: 0.5000, PixelCNN Prior Test NLL: 1.2500"  # the course's words
    assert "Gated PixelCNN Prior Test NLL: 1.2500" in experiment.final_line(lvm.vqvae.MODEL, test, {"prior": "gated"})
    assert "Transformer Prior Test NLL: 1.2500" in experiment.final_line(lvm.vqvae.MODEL, test, {"prior": "transformer"})
