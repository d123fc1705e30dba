"""The one trainer. It knows nothing about any model beyond `model.loss(x) -> dict` whose
`"loss"` entry is minimised; every other entry is a named term recorded on the curves.

What it records, the course's way: every term for every training minibatch, and every term on
the test set at initialisation (epoch 0) and after every epoch. A checkpoint (model, optimiser,
epoch, step, RNG states, history, config) is written atomically after every epoch and when the
run is interrupted (Ctrl-C or SIGTERM), and `resume=True` continues from it so that the resumed
run ends exactly where an uninterrupted one would (shuffling is seeded per epoch).
"""

from __future__ import annotations

import math
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from lvm.engine.errors import UserError

CHECKPOINT_FORMAT = "lvm-checkpoint-1"


@dataclass
class TrainConfig:
    """How to train. Defaults are the course's (Adam 1e-3, batch 128)."""

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    lr_schedule: str = "constant"  # constant (the course) | cosine (decays to 0 over the run)
    cpu_threads: int | None = None  # torch's intra-op threads on the CPU; None = torch's default
    # The fast path. amp: bf16 autocast of the training step, "auto" = on CUDA only, "on" = on
    # any device, "off". Test numbers are always measured in float32. On a CPU with bf16 units
    # "on" pays (AMD EPYC with avx512_bf16, 2 threads, `lvm bench --amp on`: vae 1.80x and vqvae
    # 2.31x the plain loop, against 1.25x and 1.18x in float32), but "auto" leaves CPUs in
    # float32: CPU runs then give the same numbers on every machine, and a CPU without bf16
    # units would run it far slower.
    # Channels-last convolutions everywhere (measured on the CPU, interleaved with the default
    # layout: vae 149 vs 128 images/s, vqvae 14.6 vs 12.9). torch.compile is opt-in: it costs a
    # minute of compiling up front.
    amp: str = "auto"
    channels_last: bool = True
    compile: bool = False
    log_every: int = 25  # minibatches between host syncs (losses are read back in batches)

    def validate(self) -> None:
        for name, value in (("epochs", self.epochs), ("batch-size", self.batch_size)):
            if value < 1:
                raise UserError(f"--{name} must be at least 1, got {value}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"--lr must be a positive number, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr schedule must be constant or cosine, got {self.lr_schedule!r}")
        if self.amp not in ("auto", "on", "off"):
            raise UserError(f"amp must be auto, on or off, got {self.amp!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UserError(f"grad clip must be positive, got {self.grad_clip}")


@dataclass
class History:
    """Per-minibatch training terms and per-epoch test terms (index 0 = before training)."""

    train: dict[str, list[float]] = field(default_factory=dict)
    test: dict[str, list[float]] = field(default_factory=dict)

    def add(self, split: dict[str, list[float]], terms: dict[str, float]) -> None:
        for k, v in terms.items():
            split.setdefault(k, []).append(float(v))


class Interrupted(Exception):
    """Training stopped by a signal after saving a checkpoint."""


class Diverged(UserError):
    """A loss became NaN or infinite."""


def world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless running under torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return world()[0] == 0


def init_distributed(device_name: str) -> None:
    """Join the process group torchrun set up (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    cuda = device_name != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")


def resolve_device(name: str) -> torch.device:
    if name == "auto" and world()[1] > 1 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())  # one GPU per process
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device '{name}' asked for, but torch sees no CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device '{name}'; use auto, cpu or cuda")
    return device


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a file, a crash never loses the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle, ...: all mean "not ours"
        raise UserError(f"cannot read checkpoint {path}: corrupt or not a torch file ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not an lvm checkpoint")
    return state


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextmanager
def _stop_on_signals() -> Iterator[dict[str, int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half."""
    flag = {"signal": 0}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001 - signal API
        flag["signal"] = signum

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- training


def _fast_path(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, channels-last), each where it helps (see TrainConfig)."""
    return cfg.amp == "on" or (cfg.amp == "auto" and device.type == "cuda"), cfg.channels_last


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


class _Loss(nn.Module):
    """`model.loss` as a forward, so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.loss(x)


def make_step(model: nn.Module, opt: torch.optim.Optimizer, cfg: TrainConfig, device: torch.device,
              sched: torch.optim.lr_scheduler.LRScheduler | None = None):
    """One optimisation step, `step(x) -> detached loss terms`; the trainer and `lvm bench` share it.
    No host-device synchronisation happens inside."""
    amp, channels_last = _fast_path(cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = _Loss(model)
    if world()[1] > 1:
        ids = [device.index] if device.type == "cuda" else None
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, device_ids=ids)
    if cfg.compile:
        loss_fn = torch.compile(loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            terms = loss_fn(_layout(x, channels_last))
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if sched is not None:
            sched.step()
        return {k: v.detach().float() for k, v in terms.items()}

    return step


def evaluate(model: nn.Module, data: torch.Tensor, batch_size: int, device: torch.device,
             cfg: TrainConfig | None = None) -> dict[str, float]:
    """Every loss term, averaged over all examples of `data` (over all processes under torchrun).
    Always in float32, also for a model trained under bf16 autocast: the reported numbers are
    the model's, not bf16's rounding of them (evaluation is a small part of the time)."""
    _, channels_last = _fast_path(cfg or TrainConfig(), device)
    rank, size = world()
    shard = data[rank::size]
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        for start in range(0, len(shard), batch_size):
            x = _layout(shard[start : start + batch_size].to(device, non_blocking=True), channels_last)
            for k, v in model.loss(x).items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() * len(x)
    model.train(was_training)
    keys = list(totals)
    sums = torch.stack([totals[k] for k in keys]) if keys else torch.zeros(0, device=device)
    if size > 1:
        dist.all_reduce(sums)
    return dict(zip(keys, (sums / len(data)).tolist()))


def fit(
    model: nn.Module,
    train: torch.Tensor,
    test: torch.Tensor,
    cfg: TrainConfig,
    *,
    checkpoint: Path | None = None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    desc: str = "train",
) -> History:
    """Train `model` on `train`, evaluating on `test`; returns the history.

    `meta` is stored in the checkpoint as it is (the model's name and config, the data's
    description), so that the checkpoint alone can rebuild the model. Under torchrun every
    process takes its share of each global minibatch of `cfg.batch_size`; process 0 alone
    writes checkpoints.
    """
    cfg.validate()
    device = resolve_device(cfg.device)
    rank, size = world()
    torch.manual_seed(cfg.seed + 1_000_003 * rank)  # each process its own noise
    model.to(device)
    train, test = train.to(device), test.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    if cfg.lr_schedule == "cosine":  # a final iterate at lr ~ 0 is not bounced around by noise
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0)
    history, epoch, step = History(), 0, 0

    state = None
    if resume and checkpoint is not None and rank == 0 and checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location="cpu")
        if meta is not None and state.get("meta") != meta:
            raise UserError(f"{checkpoint} was written by another model, dataset or config; use a new --out")
    if size > 1:  # every process resumes from process 0's checkpoint
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        history = History(**state["history"])
        epoch, step = state["epoch"], state["step"]
        if rank == 0:
            _set_rng_state(state["rng"])

    def save(epoch: int, step: int) -> None:
        if checkpoint is not None and rank == 0:
            save_checkpoint(checkpoint, {
                "format": CHECKPOINT_FORMAT,
                "meta": meta or {},
                "train_config": asdict(cfg),
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch,
                "step": step,
                "history": asdict(history),
                "rng": _rng_state(),
            })

    if not history.test:  # the course's curves start with the test loss at initialisation
        history.add(history.test, evaluate(model, test, cfg.batch_size, device, cfg))

    train_step = make_step(model, opt, cfg, device, sched)
    bar = tqdm(total=total, initial=epoch * per_epoch + step, desc=desc, unit="step",
               dynamic_ncols=True, leave=False, disable=True if rank else None)
    pending: list[dict[str, torch.Tensor]] = []

    def flush(epoch: int, step: int) -> None:
        """Read the pending minibatch losses back from the device; stop on NaN/inf."""
        if not pending:
            return
        keys = list(pending[0])
        values = torch.stack([torch.stack([p[k] for k in keys]) for p in pending])  # (steps, terms)
        if size > 1:  # the curve of the global minibatch: the mean over processes
            dist.all_reduce(values)
            values /= size
        values = values.cpu()
        bad = ~torch.isfinite(values).all(1)
        if bad.any():
            at = step - len(pending) + int(bad.nonzero()[0]) + 1
            kept = (f"the last good checkpoint is kept in {checkpoint}" if checkpoint and checkpoint.exists()
                    else "no checkpoint had been written yet")
            raise Diverged(f"loss became {values[bad][0].tolist()} at epoch {epoch + 1} step {at}; "
                           f"stopped, {kept}. Try a lower --lr.")
        for row in values.tolist():
            history.add(history.train, dict(zip(keys, row)))
        bar.set_postfix({k: f"{v:.4g}" for k, v in zip(keys, values[-1].tolist())}, refresh=False)
        pending.clear()

    def stopping(signalled: int, boundary: bool) -> bool:
        """Single process: at once. Under torchrun: at log boundaries, all processes together."""
        if size == 1:
            return bool(signalled)
        if not boundary:
            return False
        flag = torch.tensor([float(bool(signalled))], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    threads = torch.get_num_threads()
    if cfg.cpu_threads and device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    with _stop_on_signals() as stop:
        try:
            while epoch < cfg.epochs:
                gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
                order = torch.randperm(len(train), generator=gen).to(device)
                bar.set_description(f"{desc} epoch {epoch + 1}/{cfg.epochs}")
                while step < per_epoch:
                    if stopping(stop["signal"], boundary=step % cfg.log_every == 0):
                        flush(epoch, step)
                        save(epoch, step)
                        raise Interrupted(
                            f"interrupted at epoch {epoch + 1}, step {step}"
                            + (f"; saved {checkpoint}" if checkpoint else "")
                        )
                    batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    pending.append(train_step(train[batch[rank::size]]))
                    step += 1
                    bar.update(1)
                    if len(pending) >= cfg.log_every:
                        flush(epoch, step)
                flush(epoch, step)
                history.add(history.test, evaluate(model, test, cfg.batch_size, device, cfg))
                epoch, step = epoch + 1, 0
                save(epoch, 0)
        finally:
            bar.close()
            torch.set_num_threads(threads)
    return history
