"""Reference solutions of the homework (`homework/`), built on this repository's models and its
one trainer. Each function keeps the course's contract (arguments and return values) and takes
one extra keyword, `budget`:

- "course": the course's architecture and training budget (what `lvm run` uses);
- "tiny": small widths and 2 epochs, so the grader and the tests can run them in seconds.

They run through the course's helpers unchanged, e.g.
`q2_save_results("a", 1, lambda *args: q2_a(*args, budget="tiny"))`.
`lvm grade --reference` grades them with the tiny budget; a student's notebook is graded the
same way (`lvm grade homework/q1_vae2d.ipynb`).
"""

from __future__ import annotations

import numpy as np
import torch

from lvm.blocks.scaling import from_unit
from lvm.homework.helpers import from_hwc, to_hwc
from lvm.engine.train import History, TrainConfig, fit
from lvm.vae2d.model import VAE2d, VAE2dConfig

BUDGETS = ("course", "tiny")


def _check(budget: str) -> None:
    """Check the budget, and seed: models are built after this, so a run is the same every time
    (bit for bit on one machine and thread count: tests/test_homework.py shows it)."""
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {BUDGETS}, got {budget!r}")
    torch.manual_seed(0)


def _columns(history_split: dict[str, list[float]], keys: tuple[str, ...]) -> np.ndarray:
    return np.stack([np.asarray(history_split[k], np.float32) for k in keys], axis=1)  # (N, len(keys))


def _to_pixels(x: torch.Tensor) -> np.ndarray:
    """Model images (N, C, H, W) in [-1, 1] -> (N, H, W, C) float32 in [0, 255]."""
    return (from_unit(x.float().cpu()) * 255.0).permute(0, 2, 3, 1).numpy().astype(np.float32)


def _pairs(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """Originals (N, H, W, C) and reconstructions -> (2N, H, W, C), each original then its copy."""
    return np.stack([x.astype(np.float32), x_hat], axis=1).reshape(-1, *x.shape[1:])


# ----------------------------------------------------------------------------- Q1


def q1(train_data: np.ndarray, test_data: np.ndarray, part: str, dset_id: int, budget: str = "course"):
    """VAE on 2-D points. Returns train_losses (n_minibatches, 3) and test_losses
    (n_epochs + 1, 3), columns -ELBO, reconstruction, KL; samples_noise and samples_nonoise,
    each (1000, 2)."""
    _check(budget)
    train, test = torch.as_tensor(train_data, dtype=torch.float32), torch.as_tensor(test_data, dtype=torch.float32)
    model = VAE2d(VAE2dConfig(hidden=(128, 128) if budget == "course" else (64, 64))).standardise_with(train)
    cfg = TrainConfig(epochs=20 if budget == "course" else 3, batch_size=128, lr=1e-3, lr_schedule="cosine", device="cpu")
    history = fit(model, train, test, cfg)
    keys = ("loss", "recon_loss", "kl_loss")
    model.eval()
    return (_columns(history.train, keys), _columns(history.test, keys),
            model.sample(1000, noise=True).numpy(), model.sample(1000, noise=False).numpy())


# ----------------------------------------------------------------------------- Q2


def _image_vae(model, train_data, test_data, epochs: int, batch_size: int = 128):
    train, test = from_hwc(train_data), from_hwc(test_data)  # (N, 3, 32, 32) uint8
    history: History = fit(model, train, test, TrainConfig(epochs=epochs, batch_size=batch_size, lr=1e-3,
                                                           device="cpu"))
    keys = ("loss", "recon_loss", "kl_loss")
    model.eval()
    with torch.no_grad():
        samples = _to_pixels(model.sample(100))  # (100, 32, 32, 3)
        reconstructions = _pairs(test_data[:50], _to_pixels(model.reconstruct(test[:50])))
        pick = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:20]
        ends = test[pick]  # (20, 3, 32, 32) uint8: the models take data as stored
        rows = model.interpolate(ends[:10], ends[10:], steps=10)  # (10, 10, 3, 32, 32)
        interpolations = _to_pixels(rows.flatten(0, 1))  # (100, 32, 32, 3)
    return _columns(history.train, keys), _columns(history.test, keys), samples, reconstructions, interpolations


def _vae_widths(budget: str) -> dict:
    return {} if budget == "course" else {"enc_widths": (8, 16, 32, 64), "dec_widths": (32, 32, 16, 8)}


def _vae_schedule(budget: str) -> tuple[int, int]:
    """Epochs and minibatch size. Tiny: 2 epochs of minibatches of 32 (32 steps on the grader's 512
    images, 8 on 128), so that the loss falls and the latent is used for sure."""
    return (20, 128) if budget == "course" else (2, 32)


def q2_a(train_data: np.ndarray, test_data: np.ndarray, dset_id: int, budget: str = "course"):
    """Image VAE. Returns train_losses (N, 3), test_losses (E + 1, 3), samples,
    reconstructions (50 pairs) and interpolations (10 rows of 10), each (100, 32, 32, 3) in [0, 255]."""
    _check(budget)
    from lvm.vae.model import VAE, VAEConfig

    model = VAE(VAEConfig(channels=train_data.shape[-1], **_vae_widths(budget)))
    return _image_vae(model, train_data, test_data, *_vae_schedule(budget))


def q2_b(train_data: np.ndarray, test_data: np.ndarray, dset_id: int, budget: str = "course"):
    """VLAE (the VAE with an autoregressive-flow prior); same contract as `q2_a`."""
    _check(budget)
    from lvm.vlae.model import VLAE, VLAEConfig

    made = {} if budget == "course" else {"made_hidden": (64, 64)}
    model = VLAE(VLAEConfig(channels=train_data.shape[-1], **_vae_widths(budget), **made))
    return _image_vae(model, train_data, test_data, *_vae_schedule(budget))


# ----------------------------------------------------------------------------- Q3, Q4a


def _vqvae_with_prior(train_data, test_data, prior: str, budget: str):
    from lvm.vqvae.model import VQVAE, VQVAEConfig, encode_all, make_prior

    course = budget == "course"
    mcfg = VQVAEConfig(channels=train_data.shape[-1]) if course else \
        VQVAEConfig(channels=train_data.shape[-1], num_codes=32, code_dim=32, width=32)
    train, test = from_hwc(train_data), from_hwc(test_data)  # (N, 3, 32, 32) uint8
    model = VQVAE(mcfg)
    batch = 128 if course else 32  # tiny: 32 steps on the grader's 512 images, so that each loss falls for sure
    vq_history = fit(model, train, test, TrainConfig(epochs=20 if course else 2, batch_size=batch, lr=1e-3,
                                                     grad_clip=1.0, device="cpu"))
    model.eval()
    train_codes, test_codes = encode_all(model, train), encode_all(model, test)  # (N, 8, 8)
    widths = {} if course else {"embed_dim": 16, "channels": 32, "head_channels": 64,
                                "layers": 2}
    prior_model = make_prior(prior, levels=mcfg.num_codes, **widths)
    prior_history = fit(prior_model, train_codes, test_codes,
                        TrainConfig(epochs=15 if course else 2, batch_size=batch, lr=1e-3, device="cpu"))
    prior_model.eval()
    with torch.no_grad():
        codes = prior_model.sample(100, tuple(test_codes.shape[1:]))  # (100, 8, 8)
        samples = _to_pixels(model.decode(codes))  # (100, 32, 32, 3)
        reconstructions = _pairs(test_data[:50], _to_pixels(model.reconstruct(test[:50])))
    return (np.asarray(vq_history.train["loss"], np.float32), np.asarray(vq_history.test["loss"], np.float32),
            np.asarray(prior_history.train["loss"], np.float32), np.asarray(prior_history.test["loss"], np.float32),
            samples, reconstructions)


def q3(train_data: np.ndarray, test_data: np.ndarray, dset_id: int, budget: str = "course"):
    """VQ-VAE, then a PixelCNN prior over its 8x8 codes. Returns vqvae_train_losses (N,),
    vqvae_test_losses (E + 1,), prior_train_losses (M,), prior_test_losses (E' + 1,), samples
    (100, 32, 32, 3) and reconstructions (100, 32, 32, 3, 50 pairs), images in [0, 255]."""
    _check(budget)
    return _vqvae_with_prior(train_data, test_data, "pixelcnn", budget)


def q4_a(train_data: np.ndarray, test_data: np.ndarray, dset_id: int, budget: str = "course"):
    """As `q3` with a Gated PixelCNN prior."""
    _check(budget)
    return _vqvae_with_prior(train_data, test_data, "gated", budget)


# ----------------------------------------------------------------------------- Q4b


def q4_b(train_data: np.ndarray, test_data: np.ndarray, budget: str = "course"):
    """PixelVAE on binarised MNIST (N, 28, 28, 1) of 0/1. Returns train_losses (N, 3) and
    test_losses (E + 1, 3), columns -ELBO, reconstruction, KL in nats per image (-ELBO with the
    true KL: the free-bits floor is only in what is minimised); samples (100, 28, 28, 1) and
    reconstructions (100, 28, 28, 1: 50 test images, each followed by its reconstruction), 0/1."""
    _check(budget)
    from lvm.pixelvae.model import PixelVAE, PixelVAEConfig

    course = budget == "course"
    shape = (1, *train_data.shape[1:3])
    small = {} if course else {"enc_widths": (8, 16, 32), "map_widths": (32, 16, 8), "channels": 16, "n_layers": 2}
    model = PixelVAE(PixelVAEConfig(shape=shape, free_bits=10.0, **small))  # the course's floor, not lvm's default 0
    train, test = from_hwc(train_data), from_hwc(test_data)  # (N, 1, 28, 28) uint8 0/1
    # tiny: 256 images in minibatches of 32, 2 epochs: 16 steps, so that the test loss falls for sure
    history = fit(model, train, test, TrainConfig(epochs=10 if course else 2, batch_size=128 if course else 32,
                                                  lr=1e-3, grad_clip=1.0, device="cpu"))

    def columns(split: dict[str, list[float]]) -> np.ndarray:
        recon, kl = (np.asarray(split[k], np.float32) for k in ("recon_loss", "kl_loss"))
        return np.stack([recon + kl, recon, kl], axis=1)  # (N, 3)

    model.eval()
    with torch.no_grad():
        samples = to_hwc(model.sample(100).to(torch.uint8)).astype(np.float32)  # (100, 28, 28, 1)
        recon = to_hwc(model.reconstruct(test[:50]).to(torch.uint8)).astype(np.float32)  # (50, 28, 28, 1)
    return columns(history.train), columns(history.test), samples, _pairs(test_data[:50], recon)


__all__ = ["q1", "q2_a", "q2_b", "q3", "q4_a", "q4_b", "BUDGETS"]
