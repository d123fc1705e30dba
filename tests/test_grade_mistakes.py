"""The grader checks what an answer means (issue 22): typical student mistakes, each graded with
the grader's own checks, fail with the line that names the mistake; correct answers pass.

Q1's mistakes are real: a small student VAE (written below as a student would) trained on the
grader's slice with the mistake in it. So are Q3's and Q4a's (the reference solution trained with
the mistake patched in: a first mask that sees the current code, no straight-through gradient).
The others change what a correct answer returns in the way the mistake does. homework/README.md has the table of these mistakes and the grader's words."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from lvm.homework.grade import QUESTIONS, check_outputs, copied, q1_density, q1_nll
from lvm.homework.helpers import q1_sample_data

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- a student's Q1


def mlp(n_in: int, n_out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, n_out))


class StudentVAE(nn.Module):
    """Encoder and decoder output a mean and a log-std each; `mistake` puts one typical error in."""

    def __init__(self, mistake: str | None):
        super().__init__()
        self.enc, self.dec, self.mistake = mlp(2, 4), mlp(2, 4), mistake

    def terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_std = self.enc(x).chunk(2, 1)  # (B, 2) each
        z = mu + log_std.exp() * torch.randn_like(mu)
        mean_x, log_std_x = self.dec(z).chunk(2, 1)
        recon = (0.5 * np.log(2 * np.pi) + log_std_x + 0.5 * ((x - mean_x) / log_std_x.exp()) ** 2).sum(1).mean()
        if self.mistake == "log-std as log-variance":
            kl = 0.5 * (mu ** 2 + log_std.exp() - 1 - log_std).sum(1).mean()
        elif self.mistake == "KL sign":
            kl = 0.5 * (1 + 2 * log_std - mu ** 2 - (2 * log_std).exp()).sum(1).mean()
        elif self.mistake == "no KL":
            kl = torch.zeros(())
        else:
            kl = 0.5 * (mu ** 2 + (2 * log_std).exp() - 1 - 2 * log_std).sum(1).mean()
            if self.mistake == "KL halved":
                kl = kl / 2
        return recon + kl, recon, kl

    @torch.no_grad()
    def sample(self, n: int, noise: bool) -> np.ndarray:
        mean_x, log_std_x = self.dec(torch.randn(n, 2)).chunk(2, 1)
        return (mean_x + log_std_x.exp() * torch.randn_like(mean_x) if noise else mean_x).numpy()


def student_q1(train_data, test_data, part, dset_id, mistake=None, epochs=20):
    torch.manual_seed(0)
    model = StudentVAE(mistake)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train, test = torch.as_tensor(train_data), torch.as_tensor(test_data)

    def evaluate():
        with torch.no_grad():
            return [float(v) for v in model.terms(test)]

    train_losses, test_losses = [], [evaluate()]
    for _ in range(epochs):
        for batch in train[torch.randperm(len(train))].split(128):
            loss, recon, kl = model.terms(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
            train_losses.append([float(loss.detach()), float(recon.detach()), float(kl.detach())])
        test_losses.append(evaluate())
    return (np.array(train_losses), np.array(test_losses), model.sample(1000, noise=True),
            model.sample(1000, noise=False))


@pytest.fixture(scope="module")
def q1_inputs():
    return QUESTIONS["q1"].inputs(2000)


@pytest.fixture(scope="module")
def q1_correct(q1_inputs):
    return student_q1(q1_inputs["train"], q1_inputs["test"], "a", 1)


def failures(question: str, returned, inputs: dict) -> list[str]:
    r = check_outputs(question, returned, inputs)
    return [c.message for c in r.checks if not c.ok]


def test_the_known_density_is_the_generators(q1_inputs):
    from lvm.engine.data import gaussians

    for part in "ab":
        for dset_id in (1, 2):
            x = gaussians(part, dset_id, 10_000).astype(np.float64)
            mean, cov = q1_density(part, dset_id)
            assert np.abs(x.mean(0) - mean).max() < 0.15 and np.abs(np.cov(x.T) - cov).max() < 0.1 * np.abs(cov).max()
    # the NLL of the true density: its entropy, log(2 pi e) + log(5) = 4.447, on a large sample
    assert abs(q1_nll(gaussians("a", 1, 10_000), "a", 1) - (np.log(2 * np.pi * np.e) + np.log(5))) < 0.03


def test_a_correct_student_answer_passes(q1_inputs, q1_correct):
    assert failures("q1", q1_correct, q1_inputs) == []


@pytest.mark.parametrize("mistake, words", [
    ("KL sign", "is its sign flipped?"),
    ("log-std as log-variance", "your -ELBO is below the data's own NLL"),
    ("KL halved", "check the KL term (a log-std used as a log-variance?) and that the -ELBO includes it"),
    ("no KL", "the KL is exactly 0 in every row, at initialisation too: is the KL term left out of the loss"),
])
def test_q1_kl_mistakes_are_named(q1_inputs, mistake, words):
    found = failures("q1", student_q1(q1_inputs["train"], q1_inputs["test"], "a", 1, mistake), q1_inputs)
    assert any(words in m for m in found), found


def test_q1_kl_left_out_of_the_elbo_column_is_named(q1_inputs, q1_correct):
    train, test, noise, nonoise = q1_correct
    drop = lambda t: np.stack([t[:, 1], t[:, 1], t[:, 2]], 1)  # noqa: E731 - "-ELBO" = recon only
    found = failures("q1", (drop(train), drop(test), noise, nonoise), q1_inputs)
    assert any("is the KL left out of the -ELBO" in m for m in found), found


@pytest.mark.parametrize("part, dset_id, epochs", [("a", 1, 5), ("a", 1, 20), ("a", 2, 20), ("b", 1, 20), ("b", 2, 20)])
def test_q1_noise_swapped_is_named(part, dset_id, epochs):
    """On every Q1 dataset, early (the latent little used: the noise carries the spread) and later
    (on the a-datasets the latent then carries the major axis, and the two sets' total spreads
    differ by 5 to 10 %: only the spread along the data's minor axis tells them apart)."""
    train_data, test_data = q1_sample_data(part, dset_id)
    inputs = {"train": train_data[:2000], "test": test_data[:500], "args": [part, dset_id]}
    train, test, noise, nonoise = student_q1(inputs["train"], inputs["test"], part, dset_id, epochs=epochs)
    assert failures("q1", (train, test, noise, nonoise), inputs) == []
    found = failures("q1", (train, test, nonoise, noise), inputs)
    assert any("swapped" in m for m in found), found


def test_q1_losses_summed_over_the_batch_are_named(q1_inputs, q1_correct):
    train, test, noise, nonoise = q1_correct
    found = failures("q1", (train * 128, test * 128, noise, nonoise), q1_inputs)
    assert any("summed over a batch instead of averaged" in m for m in found), found


def test_memorised_samples_are_named(q1_inputs, q1_correct):
    train, test, noise, nonoise = q1_correct
    memorised = q1_inputs["train"][:1000]
    found = failures("q1", (train, test, memorised, nonoise), q1_inputs)
    assert any("samples_noise: 1000 of 1000 are copies of training examples" in m for m in found), found
    assert copied(noise, q1_inputs["train"]) == 0  # a model's samples are not


# ----------------------------------------------------------------------------- the image questions


def correct_images(question: str, inputs: dict, epochs: int = 2):
    """What a correct answer returns, shaped by hand (its meaning checks need no training)."""
    rng = np.random.default_rng(0)
    size, channels = (28, 1) if question == "q4b" else (32, 3)
    steps = 4 * epochs
    neg_elbo = np.linspace(300, 200, steps)
    kl = np.linspace(5, 20, steps)
    train = np.stack([neg_elbo, neg_elbo - kl, kl], 1)
    test = train[[0, *range(3, steps, 4)]]  # at initialisation, then after each epoch
    if question == "q4b":
        samples = (rng.random((100, size, size, channels)) > 0.5).astype(np.float32)
    else:
        samples = rng.uniform(0, 255, (100, size, size, channels))
    x = inputs["test"][:50].astype(np.float64)
    if question == "q4b":  # a reconstruction is its image with a few pixels wrong
        x_hat = np.where(rng.random(x.shape) < 0.05, 1 - x, x)
    else:
        x_hat = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)
    recon = np.stack([x, x_hat], 1).reshape(100, size, size, channels)
    if question in ("q3", "q4a"):
        return train[:, 0] / 100, test[:, 0] / 100, train[:, 0] / 300, test[:, 0] / 300, samples, recon
    if question == "q4b":
        return train, test, samples, recon
    return train, test, samples, recon, samples


@pytest.mark.parametrize("question", ["q2a", "q3", "q4b"])
def test_correct_image_answers_pass(question):
    inputs = QUESTIONS[question].inputs(100)
    assert failures(question, correct_images(question, inputs), inputs) == []


def test_q2_no_reparameterisation_is_named():
    inputs = QUESTIONS["q2a"].inputs(100)
    train, test, samples, recon, interp = correct_images("q2a", inputs)
    # without z = mu + sigma * eps the encoder learns only from the KL, which drives it to 0
    kl_to_zero = lambda t: np.stack([t[:, 1] + t[:, 2] * 1e-4, t[:, 1], t[:, 2] * 1e-4], 1)  # noqa: E731
    found = failures("q2a", (kl_to_zero(train), kl_to_zero(test), samples, recon, interp), inputs)
    assert any("the latent carries nothing" in m and "reparameterisation" in m for m in found), found


def test_q2_images_in_the_wrong_range_and_memorised_samples_are_named():
    inputs = QUESTIONS["q2a"].inputs(100)
    train, test, samples, recon, interp = correct_images("q2a", inputs)
    found = failures("q2a", (train, test, samples / 255, recon, interp), inputs)
    assert any("looks like [0, 1] or [-1, 1]: multiply to 0..255" in m for m in found), found
    found = failures("q2a", (train, test, inputs["train"][:100].astype(np.float32), recon, interp), inputs)
    assert any("samples: 100 of 100 are copies of training examples" in m for m in found), found


def test_q3_reconstructions_without_their_originals_are_named():
    inputs = QUESTIONS["q3"].inputs(100)
    *losses, samples, recon = correct_images("q3", inputs)
    found = failures("q3", (*losses, samples, np.concatenate([recon[1::2], recon[1::2]])), inputs)
    assert any("expected pairs (test image, its reconstruction)" in m for m in found), found


def test_q4b_probabilities_for_samples_and_an_unused_latent_are_named():
    inputs = QUESTIONS["q4b"].inputs(100)
    train, test, samples, recon = correct_images("q4b", inputs)
    found = failures("q4b", (train, test, samples * 0.8 + 0.1, recon), inputs)
    assert any("values should be 0 or 1" in m and "probabilities" in m for m in found), found
    collapsed = test.copy()
    collapsed[:, 0] -= collapsed[:, 2]
    collapsed[:, 2] = 0.0
    collapsed[0, 2] = 0.05  # at initialisation
    collapsed[0, 0] += 0.05
    found = failures("q4b", (train, collapsed, samples, recon), inputs)
    assert any("the latent carries nothing" in m for m in found), found


# ----------------------------------------------------------------------------- through the real grader


@pytest.mark.slow
def test_the_fake_answer_of_issue_26_fails(tmp_path):
    """Made-up falling losses and training points as samples, no training: it passed before."""
    path = tmp_path / "fake.py"
    path.write_text(textwrap.dedent("""
        import numpy as np

        def q1(train_data, test_data, part, dset_id):
            neg_elbo = np.linspace(6.0, 4.5, 160)
            train = np.stack([neg_elbo, neg_elbo - 0.5, np.full(160, 0.5)], 1)
            test = train[[0, *range(15, 160, 16)]]
            return train, test, train_data[:1000], train_data[1000:2000]
    """))
    run = subprocess.run([sys.executable, "-m", "lvm", "grade", str(path), "--timeout", "120"], capture_output=True,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAIL  samples_noise: 1000 of 1000 are copies of training examples" in run.stdout
    assert "0 of 1 questions pass" in run.stdout


# ----------------------------------------------------------------------------- Q3 and Q4a, trained with the mistake in


def first_mask_sees_the_current_code(monkeypatch) -> None:
    """The PixelCNN's first masked convolution of type B instead of A, and the Gated PixelCNN's first
    horizontal convolution one column wider (the current one): each position reads its own code."""
    from lvm.blocks import masked

    init, gated_init = masked.MaskedConv2d.__init__, masked.GatedLayer.__init__

    def leaky(self, mask_type, *args, **kwargs):
        init(self, "B", *args, **kwargs)

    def leaky_gated(self, in_channels, channels, kernel_size, first=False):
        gated_init(self, in_channels, channels, kernel_size, first)
        if first:
            self.h_conv = nn.Conv2d(in_channels, 2 * channels, (1, self.k + 1))

    monkeypatch.setattr(masked.MaskedConv2d, "__init__", leaky)
    monkeypatch.setattr(masked.GatedLayer, "__init__", leaky_gated)


def no_straight_through(monkeypatch) -> None:
    """z_q = codebook[idx] used directly: the decoder's gradient stops at the codebook."""
    import torch.nn.functional as F

    from lvm.vqvae.quantizer import VectorQuantizer

    def forward(self, z):
        B, D, H, W = z.shape
        indices = self.nearest(z.permute(0, 2, 3, 1).reshape(-1, D).detach()).view(B, H, W)
        quantized = self.lookup(indices)  # (B, D, H, W), no z + (quantized - z).detach()
        return quantized, indices, self.beta * F.mse_loss(z, quantized.detach()) + F.mse_loss(quantized, z.detach())

    monkeypatch.setattr(VectorQuantizer, "forward", forward)


def reference_vq(question: str, monkeypatch, prior_epochs: int | None = None):
    """The reference Q3 (or Q4a) at its tiny budget on the grader's inputs; its prior trained for
    `prior_epochs` when given (a student's longer budget: a leak shows once the prior has learned it)."""
    from lvm.homework import solutions

    if prior_epochs:
        fits = []

        def fit(model, train, test, cfg):
            fits.append(model)
            if len(fits) == 2:  # the second fit is the prior's
                cfg.epochs = prior_epochs
            return solutions_fit(model, train, test, cfg)

        solutions_fit = solutions.fit
        monkeypatch.setattr(solutions, "fit", fit)
    inputs = QUESTIONS[question].inputs(512)
    fn = solutions.q3 if question == "q3" else solutions.q4_a
    return fn(inputs["train"], inputs["test"], 1, budget="tiny"), inputs


@pytest.mark.slow
def test_a_longer_trained_honest_prior_passes(monkeypatch):
    out, inputs = reference_vq("q3", monkeypatch, prior_epochs=10)
    assert failures("q3", out, inputs) == []


@pytest.mark.slow
@pytest.mark.parametrize("question", ["q3", "q4a"])
def test_a_first_mask_that_sees_the_current_code_is_named(question, monkeypatch):
    first_mask_sees_the_current_code(monkeypatch)
    found = failures(question, *reference_vq(question, monkeypatch, prior_epochs=10))
    assert any("does the first masked convolution see the code it predicts?" in m for m in found), found


def test_no_straight_through_gradient_is_named(monkeypatch):
    no_straight_through(monkeypatch)
    found = failures("q3", *reference_vq("q3", monkeypatch))
    assert any("The VQ-VAE needs the straight-through gradient" in m for m in found), found


def test_prior_codes_taken_by_argmax_are_named(monkeypatch):
    import lvm.pixelcnn.model as pixelcnn

    monkeypatch.setattr(pixelcnn, "sample_categorical", lambda logits, temperature=1.0: logits.argmax(-1))
    found = failures("q3", *reference_vq("q3", monkeypatch))
    assert any("samples: nearly alike" in m and "argmax" in m for m in found), found


# ----------------------------------------------------------------------------- the causality probe (lvm.homework.probe)

STUDENT_PRIOR = '''
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class MaskedConv(nn.Conv2d):
    """mask "A": rows above and the centre row left of the centre; "B": and the centre; "right":
    the centre row right of the centre instead of left (a mask the wrong way round)."""

    def __init__(self, mask_type, c_in, c_out, k):
        super().__init__(c_in, c_out, k, padding=k // 2)
        c = k // 2
        mask = torch.zeros_like(self.weight)
        mask[:, :, :c] = 1
        if mask_type == "right":
            mask[:, :, c, c + 1:] = 1
        else:
            mask[:, :, c, :c + (mask_type == "B")] = 1
        self.register_buffer("mask", mask)

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class StudentPixelCNN(nn.Module):
    def __init__(self, first_mask, levels=8):
        super().__init__()
        self.embed = nn.Embedding(levels, 16)
        self.net = nn.Sequential(MaskedConv(first_mask, 16, 32, 7), nn.ReLU(), MaskedConv("B", 32, 32, 3), nn.ReLU(),
                                 nn.Conv2d(32, levels, 1))

    def forward(self, x):  # (B, H, W) codes -> (B, levels, H, W) logits
        return self.net(self.embed(x).permute(0, 3, 1, 2))
'''


def student_prior(first_mask: str) -> nn.Module:
    namespace: dict = {}
    exec(STUDENT_PRIOR, namespace)  # noqa: S102 - the same class the graded file below defines
    torch.manual_seed(0)
    return namespace["StudentPixelCNN"](first_mask)


@pytest.mark.parametrize("first_mask, words", [
    ("A", "depends on earlier codes only"),
    ("B", "its output at a position changes with that position's own code (64 of 64 positions probed): the first "
          "masked convolution sees the code it predicts"),
    # the centre row's right in place of its left: the later type-B layer passes the code at (i, j)
    # from (i, j - 1) to (i, j), so the output reads its own code too
    ("right", "its output at a position changes with that position's own code"),
])
def test_the_probe_tells_a_causal_prior_from_one_that_peeks(first_mask, words):
    from lvm.homework import probe
    from lvm.homework.grade import Result, _causal, _probes

    prior = student_prior(first_mask)
    noted, hooks = probe.watch()
    try:
        codes = torch.randint(0, 8, (16, 8, 8))
        nn.functional.cross_entropy(prior(codes), codes).backward()  # a training step's forward, as a student calls it
        prior.embed(codes)  # an embedding called on its own is not probed
    finally:
        for hook in hooks:
            hook.remove()
    result = Result("q3", "")
    _causal(result, _probes(probe.report(noted)))
    assert len(result.checks) == 1 and words in result.checks[0].message, [c.message for c in result.checks]
    assert result.passed == (first_mask == "A")


def test_a_prior_that_sees_a_later_code_is_named():
    from lvm.homework.grade import Result, _causal, _probes

    result = Result("q3", "")
    _causal(result, _probes([{"module": "M", "positions": 64, "self": 0, "earlier": 9}, {"module": "forged"}]))
    assert [c.message for c in result.checks] == [
        "prior (M): its output at a position changes with a later code (9 of 64 positions probed): a mask lets it "
        "see the future (a mask off by one, or a row or column the wrong way round?)"]


@pytest.mark.slow
def test_a_graded_prior_whose_first_mask_is_type_b_fails_at_any_budget(tmp_path):
    """Through the real grader: the prior is never trained, so no loss could show the leak."""
    path = tmp_path / "peeking.py"
    path.write_text(STUDENT_PRIOR + textwrap.dedent('''

        def q3(train_data, test_data, dset_id):
            prior = StudentPixelCNN("B")
            codes = torch.randint(0, 8, (4, 8, 8))
            prior(codes)
            losses = np.linspace(3.0, 2.0, 5)
            samples = np.random.default_rng(0).uniform(0, 255, (100, 32, 32, 3))
            return losses, losses[[0, 2, 4]], losses, losses[[0, 2, 4]], samples, samples
    '''))
    run = subprocess.run([sys.executable, "-m", "lvm", "grade", str(path), "--timeout", "120"], capture_output=True,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "FAIL  prior (StudentPixelCNN): its output at a position changes with that position's own code" in run.stdout
