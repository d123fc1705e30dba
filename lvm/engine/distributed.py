"""Several processes, one model: what DistributedDataParallel leaves to us.

DDP averages the gradients, so every process holds the same parameters. A BatchNorm, though,
normalises with the statistics of the minibatch it sees, and under DDP that is each process's
share of the global minibatch: the processes then train a different network from the one a single
process trains at the same global batch, and their running statistics drift apart. Here every
BatchNorm is replaced by `SyncBatchNorm`, whose statistics are those of the global minibatch,
summed over the processes (Ioffe & Szegedy 2015 compute them over the minibatch; so do we, over
all of it).

`torch.nn.SyncBatchNorm` does the same on GPUs but refuses CPU tensors (gloo), which is where this
course's tests run; this one is a few lines of plain tensor code, one path for CPUs and GPUs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _SumOverProcesses(torch.autograd.Function):
    """y = the sum of x over all processes (all-reduce). Each process's loss depends on every
    process's x through y, so the gradient of x is the sum of every process's gradient of y."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - autograd API
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ARG004 - autograd API
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the global minibatch: in training, under torchrun, the per-channel mean and
    variance are summed over all processes (two all-reduces forward, two backward); otherwise
    (evaluation, one process) it is a plain BatchNorm. Same parameters and buffers, so the same
    state_dict, as `nn.BatchNorm1d/2d/3d`."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected input of at least 2 dimensions (N, C, ...), got {x.dim()}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]  # all but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)  # a (C,) statistic against (N, C, ...)
        x32 = x.float()  # statistics in float32, also under bf16 autocast
        count = x32.new_tensor([x.numel() // x.shape[1]])  # this process's values per channel
        sums = _SumOverProcesses.apply(torch.cat([x32.sum(dims), count]))  # (C + 1,)
        n = sums[-1].detach()  # values per channel in the global minibatch
        mean = sums[:-1] / n  # (C,)
        centred = x32 - mean.view(shape)  # (N, C, ...)
        squares = _SumOverProcesses.apply(centred.pow(2).sum(dims))  # (C,): two passes, as exact as one process's
        var = squares / n  # (C,), biased: what the batch is normalised with
        if self.track_running_stats:
            with torch.no_grad():  # the same update as nn.BatchNorm's, from the global statistics
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(squares.detach() / (n - 1).clamp(min=1) * m)  # unbiased
        y = centred * torch.rsqrt(var + self.eps).view(shape)  # (N, C, ...)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace, in place, every BatchNorm inside `module` by a `SyncBatchNorm` holding the same
    parameter and buffer tensors (an optimiser made before still steps them); returns `module`."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                setattr(sync, key, getattr(child, key))
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            sync_batchnorm(child)
    return module


@torch.no_grad()
def broadcast_buffers(module: nn.Module) -> None:
    """Make every process's buffers (BatchNorm's running statistics, ...) process 0's."""
    if distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
