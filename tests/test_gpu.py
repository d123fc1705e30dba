"""What only a GPU can show: the training step of every model never makes the host wait for the
device (torch's sync debug mode turns any such wait into an error), and bf16 autocast on CUDA,
whose op lists differ from the CPU's, keeps every loss term in float32 and close to the float32
loss. Skipped without CUDA; run them on a GPU machine with `pytest tests/test_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from lvm import registry
from lvm.bench import random_batch
from lvm.engine.data import DataInfo
from lvm.engine.train import make_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# each model at its default (the course's) widths, on data of the kind it trains on
CASES = {
    "vae": DataInfo("shapes", "image", (3, 32, 32)),
    "vlae": DataInfo("shapes", "image", (3, 32, 32)),
    "vqvae": DataInfo("shapes", "image", (3, 32, 32)),
    "pixelcnn": DataInfo("fashion-mnist-binary", "binary", (1, 32, 32)),
}


def _batch(info: DataInfo, n: int = 128) -> torch.Tensor:
    return random_batch(info, n).cuda()


def _build(name: str, info: DataInfo):
    spec = registry.get(name)
    return spec, spec.stages[0].build(spec.default_config(info)).cuda()  # the default model, as `lvm bench` builds it


@pytest.mark.parametrize("name", list(CASES))
def test_training_step_never_waits_for_the_device(name):
    torch.manual_seed(0)
    entry, model = _build(name, CASES[name])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = make_step(model, opt, entry.train, torch.device("cuda"))
    x = _batch(CASES[name])
    for _ in range(2):  # warm-up: lazy initialisation (cuDNN plans, optimiser state) may sync
        step(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            terms = step(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(terms["loss"]).item()


@pytest.mark.parametrize("name", list(CASES))
def test_bf16_autocast_on_cuda_keeps_loss_terms_float32_and_close(name):
    torch.manual_seed(0)
    _, model = _build(name, CASES[name])
    model.eval()
    x = _batch(CASES[name], 64)
    torch.manual_seed(1)
    exact = model.loss(x)
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        rounded = model.loss(x)
    for k, v in rounded.items():
        assert v.dtype == torch.float32, k
        torch.testing.assert_close(v, exact[k], rtol=0.05, atol=1e-3)

