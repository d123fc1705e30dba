"""Multi-process training through torch's own DistributedDataParallel, on the CPU with gloo."""

import json
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lvm.engine.train import TrainConfig, fit, init_distributed
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
    data = regression_data(128)
    h = fit(model, data, data[:64], TrainConfig(**CFG))
    if rank == 0:
        json.dump({"train": h.train, "test": h.test, "w": model.lin.weight.tolist()}, open(path, "w"))
    dist.destroy_process_group()


def test_two_processes_follow_the_single_process_curve(tmp_path):
    torch.manual_seed(1)
    single = Regression()
    data = regression_data(128)
    h = fit(single, data, data[:64], TrainConfig(**CFG))

    path = str(tmp_path / "ddp.json")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    ddp = json.load(open(path))
    # same global minibatches, each process half of each: the same curve up to float rounding
    assert len(ddp["train"]["loss"]) == len(h.train["loss"]) == 12
    torch.testing.assert_close(torch.tensor(ddp["train"]["loss"]), torch.tensor(h.train["loss"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ddp["test"]["loss"]), torch.tensor(h.test["loss"]), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(ddp["w"]), single.lin.weight.detach(), rtol=1e-4, atol=1e-5)


def test_torchrun_cli_writes_one_row(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
         "-m", "lvm", "run", "vae2d", "--dataset", "gaussians-b1", "--epochs", "1", "--train-limit", "512",
         "--out", str(tmp_path / "row"), "--device", "cpu"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("Final -ELBO") == 1  # process 0 alone reports
    m = json.loads((tmp_path / "row" / "metrics.json").read_text())
    assert m["device"].endswith("x 2 processes")
