"""`lvm bench MODEL`: training steps per second of a model's default configuration, ours beside
the course's plain loop, measured in one process on the same data.

Ours: the trainer's own step (`lvm.engine.train.make_step`): uint8 data held on the device and batched
by index, bf16 autocast and channels-last on CUDA, optional torch.compile.
Plain reference: float32 data in a torch DataLoader (per-item indexing and collation), the same
model and optimiser, no autocast, no compilation: the course's loop.
"""

from __future__ import annotations

import resource
import time
from dataclasses import replace

import torch
from torch.utils.data import DataLoader, TensorDataset

from lvm.engine import data as datasets
from lvm import registry
from lvm.engine.train import make_step, resolve_device


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (KiB on Linux)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(info: datasets.DataInfo, n: int) -> torch.Tensor:
    """Random examples of the dataset's kind and shape: timing does not depend on content."""
    g = torch.Generator().manual_seed(0)
    if info.kind == "points":
        return torch.randn(n, *info.shape, generator=g)
    high = 2 if info.kind == "binary" else 256
    return torch.randint(0, high, (n, *info.shape), generator=g, dtype=torch.uint8)


def _time_interleaved(paths: dict, steps: int, warmup: int, device: torch.device,
                      chunk: int = 5) -> tuple[dict, dict]:
    """Seconds each path spends on `steps` steps, run in alternating chunks so that a change in
    the machine's load hits both alike (timed one after the other, a busy neighbour can halve
    the second). Synchronised only at chunk boundaries. Also each path's peak memory in MiB: on
    CUDA the allocator's peak while that path ran (the other path's weights, resident too, are
    counted: a few MiB); on the CPU the process's peak RSS, one number for both."""
    for one_step in paths.values():
        for i in range(warmup):
            one_step(i)
    spent, peak = dict.fromkeys(paths, 0.0), dict.fromkeys(paths, 0.0)
    for start in range(warmup, warmup + steps, chunk):
        for name, one_step in paths.items():
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t = time.perf_counter()
            for i in range(start, min(start + chunk, warmup + steps)):
                one_step(i)
            _sync(device)
            spent[name] += time.perf_counter() - t
            peak[name] = max(peak[name], _peak_mb(device))
    return spent, peak


def bench(model: str, device: str = "auto", batch_size: int | None = None, steps: int = 20,
          warmup: int = 3, compile: bool = False, dataset: str | None = None, amp: str | None = None) -> dict:
    entry = registry.get(model)
    cfg = replace(entry.train, device=device, compile=compile, **({"batch_size": batch_size} if batch_size else {}),
                  **({"amp": amp} if amp else {}))
    cfg.validate()
    dev = resolve_device(cfg.device)
    name = dataset or entry.default_dataset
    info = datasets.load(name, train_limit=1, test_limit=1, download=False).info
    n = cfg.batch_size * (steps + warmup)
    x = random_batch(info, n)
    result = {"model": model, "dataset_shape": list(info.shape), "batch_size": cfg.batch_size, "steps": steps,
              "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
              "threads": torch.get_num_threads(), "compile": compile, "amp": cfg.amp}

    # ours: data on the device as uint8, batched by index, the trainer's step
    torch.manual_seed(0)
    net = entry.build({}, info).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step = make_step(net, opt, cfg, dev)
    on_device = x.to(dev)
    order = torch.randperm(n, device=dev)

    # the plain reference: float32 DataLoader, no autocast, no compilation
    torch.manual_seed(0)
    ref_net = entry.build({}, info).to(dev)
    ref_opt = torch.optim.Adam(ref_net.parameters(), lr=cfg.lr)
    loader = iter(DataLoader(TensorDataset(x.float()), batch_size=cfg.batch_size, shuffle=True, drop_last=True))

    def plain(i: int) -> None:
        (xb,) = next(loader)
        loss = ref_net.loss(xb.to(dev))["loss"]
        ref_opt.zero_grad()
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(ref_net.parameters(), cfg.grad_clip)
        ref_opt.step()

    spent, peak = _time_interleaved(
        {"ours": lambda i: step(on_device[order[i * cfg.batch_size:(i + 1) * cfg.batch_size]]), "plain": plain},
        steps, warmup, dev,
    )
    rate = {k: round(steps * cfg.batch_size / v, 1) for k, v in spent.items()}
    return {**result, "images_per_s": rate["ours"], "peak_memory_mb": round(peak["ours"], 1),
            "reference": {"images_per_s": rate["plain"], "peak_memory_mb": round(peak["plain"], 1)},
            "speedup": round(rate["ours"] / rate["plain"], 3)}
