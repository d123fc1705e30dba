"""`lvm bench MODEL`: training steps per second of a model's default configuration, ours beside
the course's plain loop, measured in one process on the same data.

Ours: the trainer's own step (`lvm.engine.train.make_step`): uint8 data held on the device and batched
by index, bf16 autocast and channels-last where the hardware pays for them, optional torch.compile.
Plain reference: float32 data in a torch DataLoader (per-item indexing and collation), the same
model and optimiser, no autocast, no compilation: the course's loop.
"""

from __future__ import annotations

import resource
import time
from dataclasses import replace
from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, TensorDataset

from lvm import registry
from lvm.engine import data as datasets
from lvm.engine.spec import ModelSpec
from lvm.engine.train import TrainConfig, cpu_flags, fast_path, make_step, resolve_device

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


def _first_stage(spec: ModelSpec, info: datasets.DataInfo, dev: torch.device) -> torch.nn.Module:
    """The network of the model's first stage, at its default config (what trains longest)."""
    torch.manual_seed(0)
    return spec.stages[0].build(spec.default_config(info)).to(dev)


def _ours(net: torch.nn.Module, c: TrainConfig, dev: torch.device, on_device: torch.Tensor,
          order: torch.Tensor) -> Callable[[int], Any]:
    """The trainer's own step: data on the device as uint8, batched by index."""
    step = make_step(net, torch.optim.Adam(net.parameters(), lr=c.lr), c, dev)
    return lambda i: step(on_device[order[i * c.batch_size:(i + 1) * c.batch_size]])


def _plain(net: torch.nn.Module, cfg: TrainConfig, x: torch.Tensor, dev: torch.device) -> Callable[[int], None]:
    """The plain reference: float32 DataLoader, no autocast, no compilation."""
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    loader = iter(DataLoader(TensorDataset(x.float()), batch_size=cfg.batch_size, shuffle=True, drop_last=True))

    def plain(i: int) -> None:  # noqa: ARG001 - a step's index, as ours takes
        (xb,) = next(loader)
        loss = net.loss(xb.to(dev))["loss"]
        opt.zero_grad()
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()

    return plain


def _settings(c: TrainConfig, dev: torch.device) -> dict:
    amp_on, layout = fast_path(c, dev)
    return {"amp": c.amp, "bf16": amp_on, "channels_last_setting": c.channels_last, "channels_last": layout}


def bench(model: str, device: str = "auto", batch_size: int | None = None, steps: int = 20,
          warmup: int = 3, compile: bool = False, dataset: str | None = None, amp: str | None = None,
          channels_last: str | None = None, vs: dict[str, dict[str, str]] | None = None) -> dict:
    """Images per second of our step and of the course's plain loop, interleaved in one process;
    `vs` adds paths of ours with other fast-path settings ({"name": {"channels_last": "off"}}),
    interleaved with the rest, so that each setting is measured against the others on the same
    machine at the same moment."""
    spec = registry.get(model)
    given = {"batch_size": batch_size, "amp": amp, "channels_last": channels_last}
    cfg = replace(spec.train, device=device, compile=compile, **{k: v for k, v in given.items() if v})
    configs = {"ours": cfg, **{name: replace(cfg, **change) for name, change in (vs or {}).items()}}
    for c in configs.values():
        c.validate()
    dev = resolve_device(cfg.device)
    info = datasets.load(dataset or spec.default_dataset, train_limit=1, test_limit=1, download=False).info
    n = cfg.batch_size * (steps + warmup)
    x = random_batch(info, n)
    on_device = x.to(dev)
    order = torch.randperm(n, device=dev)
    plain = _plain(_first_stage(spec, info, dev), cfg, x, dev)
    paths = {**{k: _ours(_first_stage(spec, info, dev), c, dev, on_device, order) for k, c in configs.items()},
             "plain": plain}
    spent, peak = _time_interleaved(paths, steps, warmup, dev)
    rate = {k: round(steps * cfg.batch_size / v, 1) for k, v in spent.items()}
    result = {"model": model, "dataset_shape": list(info.shape), "batch_size": cfg.batch_size, "steps": steps,
              "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
              "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
              "threads": torch.get_num_threads(), "compile": compile, **_settings(cfg, dev),
              "images_per_s": rate["ours"], "peak_memory_mb": round(peak["ours"], 1),
              "reference": {"images_per_s": rate["plain"], "peak_memory_mb": round(peak["plain"], 1)},
              "speedup": round(rate["ours"] / rate["plain"], 3)}
    if vs:
        result["vs"] = {k: {**_settings(configs[k], dev), "images_per_s": rate[k], "speedup": round(rate[k] / rate["plain"], 3)}
                        for k in vs}
    return result
