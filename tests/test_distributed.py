"""Multi-process training through torch's own DistributedDataParallel, on the CPU with gloo:
several processes train one model, the one a single process trains at the same global batch."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import lvm.vae.model
from lvm.engine.distributed import sync_batchnorm
from lvm.engine.errors import Interrupted, UserError
from lvm.engine.train import TrainConfig, fit, init_distributed
from lvm.vae.model import VAE, VAEConfig
from tests.test_train import Regression, regression_data

# float32: under bf16 autocast (the default on a CPU with bf16 units) one process and two round
# differently, and the curves part by more than float rounding
CFG = dict(epochs=3, batch_size=32, lr=0.05, device="cpu", log_every=2, amp="off")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, path: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    init_distributed("cpu")
    torch.manual_seed(1)
    model = Regression()
    data = regression_data(101)
    h = fit(model, data, data[:64], TrainConfig(**CFG))
    if rank == 0:
        json.dump({"train": h.train, "test": h.test, "w": model.lin.weight.tolist()}, open(path, "w"))
    dist.destroy_process_group()


def test_two_processes_follow_the_single_process_curve(tmp_path):
    torch.manual_seed(1)
    single = Regression()
    data = regression_data(101)  # the last minibatch of each epoch, 5 examples, splits 3 + 2
    h = fit(single, data, data[:64], TrainConfig(**CFG))

    path = str(tmp_path / "ddp.json")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    ddp = json.load(open(path))
    # same global minibatches, each process half of each: the same curve up to float rounding
    assert len(ddp["train"]["loss"]) == len(h.train["loss"]) == 12
    torch.testing.assert_close(torch.tensor(ddp["train"]["loss"]), torch.tensor(h.train["loss"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ddp["test"]["loss"]), torch.tensor(h.test["loss"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ddp["w"]), single.lin.weight.detach(), rtol=1e-4, atol=1e-5)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
# a tiny vae with its BatchNorm, float32, its own noise
RUN = ["-m", "lvm", "run", "vae", "--dataset", "shapes", "--epochs", "1", "--train-limit", "64", "--test-limit", "32",
       "--batch-size", "16", "--amp", "off", "--device", "cpu", "-o", "enc_widths=4,4,4,4", "-o", "dec_widths=8,4,4,4",
       "-o", "latent_dim=2"]
ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}


@pytest.mark.slow
def test_torchrun_on_one_node_and_on_two_writes_the_same_one_row(tmp_path):
    one_node = tmp_path / "one-node"
    r = subprocess.run([*TORCHRUN, "--nproc-per-node", "2", "--master-port", str(_free_port()), *RUN, "--out", str(one_node)],
                       env=ENV, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("Final -ELBO") == 1  # process 0 alone reports

    # two "nodes" on this machine: two launchers of one process each, meeting at a c10d rendezvous
    two_nodes, endpoint = tmp_path / "two-nodes", f"127.0.0.1:{_free_port()}"
    nodes = [subprocess.Popen([*TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank),
                               "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--local-addr", "127.0.0.1",
                               *RUN, "--out", str(two_nodes)],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    outs = [node.communicate(timeout=900) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outs[0][1][-2000:] + outs[1][1][-2000:]
    assert sum(out.count("Final -ELBO") for out, _ in outs) == 1

    a, b = (json.loads((folder / "metrics.json").read_text()) for folder in (one_node, two_nodes))
    assert a["device"].endswith("x 2 processes") and b["device"].endswith("x 2 processes")
    assert a["test"] == b["test"]  # the same processes, whichever launcher started them
    ha, hb = (json.loads((folder / "history.json").read_text()) for folder in (one_node, two_nodes))
    assert ha == hb and len(ha["train"]["loss"]) == 4


# ----------------------------------------------------------------------------- BatchNorm


def _join(rank: int, size: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    init_distributed("cpu")


def _bn_worker(rank: int, size: int, port: int, path: str) -> None:
    _join(rank, size, port)
    torch.manual_seed(0)
    x = torch.randn(12, 3, 5, 5) * 3 + 1  # the global minibatch; this process takes every size-th example
    bn = sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)))[0]
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    mine = x[rank::size].clone().requires_grad_()
    y = bn(mine)
    (y * torch.arange(1.0, 6.0)).pow(2).mean().backward()  # this process's share of the global mean
    grads = torch.cat([bn.weight.grad, bn.bias.grad])
    dist.all_reduce(grads)  # as DDP does: the parameters' gradients averaged over the processes
    torch.save({"y": y.detach(), "x_grad": mine.grad, "grads": grads / size,
                "buffers": [bn.running_mean, bn.running_var]}, f"{path}.{rank}")
    dist.destroy_process_group()


@pytest.mark.slow
def test_sync_batchnorm_computes_what_one_process_computes_on_the_global_batch(tmp_path):
    torch.manual_seed(0)
    x = (torch.randn(12, 3, 5, 5) * 3 + 1).requires_grad_()
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
    y = bn(x)
    (y * torch.arange(1.0, 6.0)).pow(2).mean().backward()

    mp.spawn(_bn_worker, args=(2, _free_port(), str(tmp_path / "bn")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"bn.{r}") for r in range(2)]
    close = dict(rtol=1e-5, atol=1e-6)
    for r, got in enumerate(ranks):
        torch.testing.assert_close(got["y"], y[r::2].detach(), **close)
        # each process's loss is a mean over its half: its input gradient is twice the global one's
        torch.testing.assert_close(got["x_grad"] / 2, x.grad[r::2], **close)
        torch.testing.assert_close(got["grads"], torch.cat([bn.weight.grad, bn.bias.grad]), **close)
        torch.testing.assert_close(got["buffers"], [bn.running_mean, bn.running_var], **close)
    assert not torch.allclose(ranks[0]["buffers"][1], torch.ones(3))  # the running variance moved


# A tiny `vae` with BatchNorm. Its noise is made a fixed function of the posterior mean here: each
# process draws its own noise, so with real noise two processes and one are two Monte-Carlo draws
# of the same training, and only the noise-free parts can be compared exactly.
TINY_VAE = dict(enc_widths=(4, 4, 4, 4), dec_widths=(8, 4, 4, 4), latent_dim=2, norm="batch")
VAE_CFG = dict(epochs=2, batch_size=16, lr=2e-3, device="cpu", log_every=2, amp="off")
# Tolerances, measured (docs/distributed.md): the losses part by at most 1.6e-5 relative (the
# KL term, about 0.4, by 1.4e-4 absolute), the
# parameters by 2.1e-4 (Adam's steps are 2e-3), the buffers by 2.5e-5; without the synchronised
# BatchNorm the losses part by 1.1e-2 at the first step, the parameters by 0.03, the buffers 0.035.
LOSS_CLOSE, PARAM_CLOSE, BUFFER_CLOSE = dict(rtol=1e-4, atol=1e-3), dict(rtol=0.0, atol=1e-3), dict(rtol=1e-4, atol=1e-4)


def _fixed_noise(mu: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    return mu + log_std.exp() * torch.cos(3 * mu.detach() + 1)


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randint(0, 256, (n, 3, 1, 1), generator=g)  # a colour per image, and noise on it
    return (base + torch.randint(-40, 41, (n, 3, 32, 32), generator=g)).clamp(0, 255).to(torch.uint8)


def _freeze_biases_before_batchnorm(model: nn.Module) -> None:
    """A conv's bias just before a BatchNorm has no effect in training (the BatchNorm subtracts it
    again), so its gradient is float rounding, and Adam, which divides a gradient by its own size,
    turns that into full steps of random sign: two runs that differ by rounding part there first."""
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for conv, bn in zip(seq, seq[1:]):
                if isinstance(bn, nn.BatchNorm2d):
                    conv.bias.requires_grad_(False)


def _train_vae(checkpoint=None, resume=False, stop_at=None, freeze=False):
    torch.manual_seed(3)
    model = VAE(VAEConfig(**TINY_VAE))
    if freeze:
        _freeze_biases_before_batchnorm(model)
    if stop_at is not None:  # SIGTERM to this process during its stop_at-th training step
        loss, calls = model.loss, [0]

        def loss_then_kill(x):
            calls[0] += model.training  # not the evaluations
            if model.training and calls[0] == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)
            return loss(x)

        model.loss = loss_then_kill
    try:
        h = fit(model, _images(96, 0), _images(40, 1), TrainConfig(**VAE_CFG), checkpoint=checkpoint, resume=resume)
    except Interrupted:
        return {"interrupted": True}
    except UserError as e:
        return {"refused": str(e)}
    return {"train": h.train, "test": h.test, "params": [p.detach().clone() for p in model.parameters()],
            "buffers": [b.clone() for b in model.buffers()]}


def _vae_worker(rank: int, size: int, port: int, path: str, fixed_noise: bool, kwargs: dict) -> None:
    _join(rank, size, port)
    if fixed_noise:
        lvm.vae.model.reparameterize = _fixed_noise
    torch.save(_train_vae(**kwargs), f"{path}.{rank}")
    dist.destroy_process_group()


def _spawn_vae(path, fixed_noise=True, **kwargs) -> list[dict]:
    mp.spawn(_vae_worker, args=(2, _free_port(), str(path), fixed_noise, kwargs), nprocs=2, join=True)
    return [torch.load(f"{path}.{r}") for r in range(2)]


@pytest.mark.slow
def test_two_processes_train_the_vae_with_batchnorm_one_process_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(lvm.vae.model, "reparameterize", _fixed_noise)
    one = _train_vae(freeze=True)
    two = _spawn_vae(tmp_path / "vae", freeze=True)
    # one model: the same buffers on both processes, bit for bit, and the same reported numbers
    for a, b in zip(two[0]["buffers"], two[1]["buffers"]):
        assert torch.equal(a, b)
    assert two[0]["test"] == two[1]["test"] and two[0]["train"] == two[1]["train"]
    # ... and the model one process trains at the same global batch, up to float rounding
    assert len(two[0]["train"]["loss"]) == len(one["train"]["loss"]) == 12
    for key in ("train", "test"):
        for term in one[key]:
            torch.testing.assert_close(torch.tensor(two[0][key][term]), torch.tensor(one[key][term]), **LOSS_CLOSE)
    torch.testing.assert_close(two[0]["params"], one["params"], **PARAM_CLOSE)
    torch.testing.assert_close(two[0]["buffers"], one["buffers"], **BUFFER_CLOSE)
    assert sum(one["train"]["loss"][-4:]) < sum(one["train"]["loss"][:4])  # it trained


@pytest.mark.slow
def test_a_two_process_run_killed_mid_epoch_resumes_exactly(tmp_path):
    # the vae's own noise this time: each process must continue its own random stream
    whole = _spawn_vae(tmp_path / "whole", fixed_noise=False)
    ckpt = str(tmp_path / "ckpt.pt")
    # SIGTERM during step 2 of epoch 2 (6 steps an epoch): both stop at step 2, the next log boundary
    cut = _spawn_vae(tmp_path / "cut", checkpoint=ckpt, stop_at=8, fixed_noise=False)
    assert cut[0] == cut[1] == {"interrupted": True}
    state = torch.load(ckpt, weights_only=False)["stages"]["train"]
    assert (state["epoch"], state["step"], state["world_size"]) == (1, 2, 2)
    # with another number of processes the continuation would be neither run's: refused in one line
    refused = _train_vae(checkpoint=ckpt, resume=True)["refused"]
    assert "trained by 2 processes, this run has 1" in refused and "\n" not in refused
    resumed = _spawn_vae(tmp_path / "resumed", checkpoint=ckpt, resume=True, fixed_noise=False)
    for rank in range(2):  # exactly, not up to rounding
        assert resumed[rank]["train"] == whole[rank]["train"] and resumed[rank]["test"] == whole[rank]["test"]
        for key in ("params", "buffers"):
            assert all(torch.equal(a, b) for a, b in zip(resumed[rank][key], whole[rank][key])), key


def test_a_minibatch_smaller_than_the_number_of_processes_is_refused_in_one_line(monkeypatch):
    monkeypatch.setattr("lvm.engine.train.world", lambda: (0, 2))  # as under torchrun with 2 processes
    data = regression_data(65)  # at batch 32 the last minibatch holds 1 example
    with pytest.raises(UserError, match="2 processes cannot share a minibatch of 1 examples") as e:
        fit(Regression(), data, data, TrainConfig(**CFG))
    assert "\n" not in str(e.value)
