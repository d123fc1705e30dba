"""`lvm run pixelcnn`: a PixelCNN (or, with `-o gated=true`, a Gated PixelCNN) as an image model of
its own on binarised images: every pixel a token of 2 levels, p(x) = prod_i p(x_i | x_<i).

The same classes are the VQ-VAE's priors over its code grids (`lvm.vqvae.model.make_prior`).
"""

from __future__ import annotations

from lvm.engine import figures
from lvm.engine.spec import Evaluation, ModelSpec, Stage, Term
from lvm.engine.train import TrainConfig
from lvm.pixelcnn.model import GatedPixelCNN, GridModel, PixelCNN, PixelCNNConfig, build

__all__ = ["GatedPixelCNN", "GridModel", "PixelCNN", "PixelCNNConfig", "build", "MODEL"]

MODEL = ModelSpec(
    name="pixelcnn",
    config=PixelCNNConfig,
    stages=(Stage("pixelcnn", build, (
        Term("loss", "NLL/dim", "nats per pixel", metric="nll", course="Test NLL (nats/dim)"),
    )),),
    kinds=("binary",),
    default_dataset="fashion-mnist-binary",
    # the course's PixelCNN budget (its first homework, binarised MNIST): batch 128, Adam 1e-3,
    # 10 epochs, gradients clipped to norm 1
    train=TrainConfig(epochs=10, batch_size=128, lr=1e-3, grad_clip=1.0),
    from_data={"shape": lambda info: tuple(info.shape[1:])},  # (1, H, W): one channel of 0/1 tokens
    figures=figures.samples,
    variants={"gated": {"gated": True}},
    # exact: one pass per test batch; its samples are drawn pixel by pixel, so only 100
    evaluation=Evaluation(likelihood="exact", test_limit=2000, samples=100, note=(
        "exact: a categorical over the levels of each pixel given the pixels before it")),
)
