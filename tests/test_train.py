"""The one trainer: it learns, it records the course's curves, and it never loses a run."""

import math
import os
import signal
from dataclasses import replace

import pytest
import torch
from torch import nn

from lvm.engine.errors import UserError
from lvm import load_model, registry
from lvm.cli import flag
from lvm.engine.checkpoint import load as load_checkpoint
from lvm.engine.checkpoint import stage_state
from lvm.engine.train import Diverged, Interrupted, TrainConfig, evaluate, fit, lr_factor
from lvm.vae2d.model import VAE2d, VAE2dConfig


class Regression(nn.Module):
    """y = w.x: a model whose loss can be driven to ~0 on one batch."""

    def __init__(self, nan_at: int | None = None, sigint_at: int | None = None):
        super().__init__()
        self.lin = nn.Linear(3, 1)
        self.calls, self.nan_at, self.sigint_at = 0, nan_at, sigint_at

    def loss(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.sigint_at:
                os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C mid-epoch
        err = (self.lin(x[:, :3]).squeeze(1) - x[:, 3]).pow(2).mean()
        if self.training and self.calls == self.nan_at:
            err = err * float("nan")
        return {"loss": err, "abs_w": self.lin.weight.abs().sum()}


def regression_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    return torch.cat([x, y[:, None]], 1)


def test_overfits_one_batch_and_records_curves():
    batch = regression_data(32)
    torch.manual_seed(1)
    model = Regression()
    cfg = TrainConfig(epochs=200, batch_size=32, lr=0.05, device="cpu")
    h = fit(model, batch, batch, cfg)
    assert h.test["loss"][-1] < 1e-4 < h.test["loss"][0]
    assert len(h.test["loss"]) == cfg.epochs + 1  # epoch 0 = at initialisation
    assert len(h.train["loss"]) == cfg.epochs  # one minibatch per epoch
    assert set(h.train) == set(h.test) == {"loss", "abs_w"}
    # epoch 0 is the untrained model's test loss
    torch.manual_seed(1)
    fresh = Regression()
    assert h.test["loss"][0] == pytest.approx(evaluate(fresh, batch, 32, torch.device("cpu"))["loss"], rel=1e-6)


def _vae_run(tmp_path, epochs, resume=False, name="ck.pt"):
    torch.manual_seed(0)
    model = VAE2d(VAE2dConfig(hidden=(16,)))
    data = regression_data(300)[:, :2].contiguous()
    cfg = TrainConfig(epochs=epochs, batch_size=32, lr=1e-2, device="cpu", lr_schedule="cosine", log_every=3)
    h = fit(model, data, data[:50], cfg, checkpoint=tmp_path / name, resume=resume, meta={"m": 1})
    return model, h


def test_interrupt_then_resume_equals_uninterrupted(tmp_path):
    straight, h_straight = _vae_run(tmp_path, epochs=3, name="straight.pt")

    torch.manual_seed(0)
    model = VAE2d(VAE2dConfig(hidden=(16,)))
    calls = {"n": 0}
    original = model.loss

    def loss_with_ctrl_c(x):  # SIGINT in the middle of the second epoch
        if model.training:
            calls["n"] += 1
            if calls["n"] == 15:
                os.kill(os.getpid(), signal.SIGINT)
        return original(x)

    model.loss = loss_with_ctrl_c
    data = regression_data(300)[:, :2].contiguous()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=1e-2, device="cpu", lr_schedule="cosine", log_every=3)
    with pytest.raises(Interrupted, match="epoch 2, step 5"):
        fit(model, data, data[:50], cfg, checkpoint=tmp_path / "cut.pt", meta={"m": 1})
    state = stage_state(tmp_path / "cut.pt")
    assert (state["epoch"], state["step"]) == (1, 5)

    resumed, h_resumed = _vae_run(tmp_path, epochs=3, resume=True, name="cut.pt")
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert h_resumed.train == h_straight.train and h_resumed.test == h_straight.test


def test_resume_refuses_another_models_checkpoint(tmp_path):
    _vae_run(tmp_path, epochs=1)
    model = VAE2d(VAE2dConfig(hidden=(16,)))
    data = regression_data(64)[:, :2].contiguous()
    cfg = TrainConfig(epochs=2, batch_size=32, lr=1e-2, device="cpu", lr_schedule="cosine")
    with pytest.raises(UserError, match="it was trained with m=1, this run asks for 2"):
        fit(model, data, data, cfg, checkpoint=tmp_path / "ck.pt", resume=True, meta={"m": 2})
    with pytest.raises(UserError, match="it was trained with lr 0.01, this run asks for 0.001") as refused:
        fit(model, data, data, replace(cfg, lr=1e-3), checkpoint=tmp_path / "ck.pt", resume=True, meta={"m": 1})
    # the engine names the setting; the command line names it as the flag the user typed
    assert "it was trained with --lr 0.01" in refused.value.phrased(flag)


def test_resume_extends_a_run_with_more_epochs_and_refuses_fewer(tmp_path):
    _, first = _vae_run(tmp_path, epochs=2)
    _, longer = _vae_run(tmp_path, epochs=3, resume=True)
    assert len(longer.test["loss"]) == 4 and longer.test["loss"][:3] == first.test["loss"]
    with pytest.raises(UserError, match="it has trained 3 epochs already, more than epochs 2"):
        _vae_run(tmp_path, epochs=2, resume=True)


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path):
    data = regression_data(64)
    model = Regression(nan_at=6)  # epoch 3 with two minibatches per epoch
    cfg = TrainConfig(epochs=5, batch_size=32, device="cpu", log_every=1)
    with pytest.raises(Diverged, match="epoch 3 step 2"):
        fit(model, data, data, cfg, checkpoint=tmp_path / "ck.pt")
    state = stage_state(tmp_path / "ck.pt")
    assert state["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_nan_test_loss_stops_before_the_checkpoint_is_overwritten(tmp_path):
    data = regression_data(64)
    model = Regression()
    original = model.loss
    epochs_done = {"n": 0}

    def loss(x):  # finite training losses throughout; the test loss of epoch 2 is NaN
        terms = original(x)
        if not model.training and epochs_done["n"] == 2:
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    model.loss = loss
    cfg = TrainConfig(epochs=4, batch_size=64, device="cpu")
    saved = []

    class Recorder:  # a checkpoint slot that counts the epochs it was given
        where = "memory"

        def load(self):
            return None

        def save(self, state):
            saved.append(state["epoch"])
            epochs_done["n"] = state["epoch"]

    with pytest.raises(Diverged, match=r"on the test set after epoch 3; stopped, the last good checkpoint is kept"):
        fit(model, data, data, cfg, checkpoint=Recorder())
    assert saved == [1, 2]  # epoch 3's NaN test row was never saved


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "ck.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(path)


def test_checkpoint_round_trips_through_load_model(tmp_path):
    from lvm.engine import pipeline as experiment

    experiment.train_row(registry.get("vae2d"), "gaussians-b1", out=tmp_path, epochs=1, train_limit=256, test_limit=64, device="cpu")
    model, meta = load_model(tmp_path / "checkpoint.pt")
    assert meta["model"] == "vae2d" and meta["data"]["name"] == "gaussians-b1"
    state = stage_state(tmp_path / "checkpoint.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state["model"][k])


def test_bad_numbers_are_rejected():
    for bad in (dict(epochs=0), dict(batch_size=0), dict(lr=0.0), dict(lr=float("nan")), dict(lr_schedule="step")):
        with pytest.raises(UserError):
            TrainConfig(**bad).validate()


def test_warmup_rises_linearly_then_the_schedule_takes_over():
    total, warm = 40, 8
    cosine = [lr_factor("cosine", warm, total, t) for t in range(total)]
    assert cosine[:warm] == pytest.approx([(t + 1) / warm for t in range(warm)])
    assert cosine[warm] == 1.0 and all(a >= b for a, b in zip(cosine[warm:], cosine[warm + 1:]))
    assert cosine[-1] < 0.01
    assert [lr_factor("constant", warm, total, t) for t in range(warm, total)] == [1.0] * (total - warm)
    # no warm-up: the cosine of the whole run, as before the warm-up existed
    assert [lr_factor("cosine", 0, total, t) for t in range(total)] == pytest.approx(
        [0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)])


def test_the_optimiser_follows_the_warmup(monkeypatch):
    seen, step = [], torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    torch.manual_seed(0)
    data = regression_data(64)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-2, device="cpu", lr_schedule="cosine", warmup=3, log_every=1)
    fit(Regression(), data, data[:16], cfg)
    assert seen == pytest.approx([1e-2 * lr_factor("cosine", 3, 8, t) for t in range(8)])
    assert seen[0] < seen[1] < seen[2] == pytest.approx(1e-2) and seen[-1] < seen[3]
    with pytest.raises(UserError):
        TrainConfig(warmup=-1).validate()
