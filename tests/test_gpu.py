"""What only a GPU can show: the training step of every model never makes the host wait for the
device (torch's sync debug mode turns any such wait into an error), and bf16 autocast on CUDA,
whose op lists differ from the CPU's, keeps every loss term in float32 and close to the float32
loss. Skipped without CUDA; run them on a GPU machine with `pytest tests/test_gpu.py`."""

from __future__ import annotations

import pytest
import torch

from lvm import registry
from lvm.engine.train import make_step
from tests.helpers import bf16_models, every_model, stage_cases

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cases(name: str, variant: str | None, n: int):
    """Every stage of the model at its default (the course's) widths, on the GPU, with n examples of
    random data of the kind it trains on, as `lvm bench` builds it."""
    torch.manual_seed(0)
    return [(stage, model.cuda(), x.cuda()) for stage, model, x in stage_cases(name, variant, n)]


@pytest.mark.parametrize("name,variant", every_model())
def test_training_step_never_waits_for_the_device(name, variant):
    train = registry.get(name).train
    for stage, model, x in _cases(name, variant, 128):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        step = make_step(model, opt, train, torch.device("cuda"))
        for _ in range(2):  # warm-up: lazy initialisation (cuDNN plans, optimiser state) may sync
            step(x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(3):
                terms = step(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(terms["loss"]).item(), stage


@pytest.mark.parametrize("name,variant", bf16_models())
def test_bf16_autocast_on_cuda_keeps_loss_terms_float32_and_close(name, variant):
    for stage, model, x in _cases(name, variant, 64):
        model.eval()
        torch.manual_seed(1)
        exact = model.loss(x)
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            rounded = model.loss(x)
        for k, v in rounded.items():
            assert v.dtype == torch.float32, (stage, k)
            torch.testing.assert_close(v, exact[k], rtol=0.05, atol=1e-3, msg=f"{stage} {k}")
