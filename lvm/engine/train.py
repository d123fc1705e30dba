"""The one trainer. It knows nothing about any model beyond `model.loss(x) -> dict` whose
`"loss"` entry is minimised; every other entry is a named term recorded on the curves.

What it records, the course's way: every term for every training minibatch, and every term on
the test set at initialisation (epoch 0) and after every epoch. A checkpoint (model, optimiser,
epoch, step, RNG states, history, config) is written atomically after every epoch and when the
run is interrupted (Ctrl-C or SIGTERM), and `resume=True` continues from it so that the resumed
run ends exactly where an uninterrupted one would (shuffling is seeded per epoch). A loss that
becomes NaN or infinite, in training or on the test set, stops the run before anything is
written over the last checkpoint whose numbers are all finite.

Progress: a bar on a terminal; elsewhere (a log file, a cluster job) one plain line per epoch.
"""

from __future__ import annotations

import functools
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from lvm.engine.checkpoint import RunFile
from lvm.engine.distributed import broadcast_buffers, sync_batchnorm
from lvm.engine.errors import Interrupted, UserError, setting


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
    warmup: int = 0  # steps of linear warm-up from lr/warmup to lr before the schedule (0: none)
    cpu_threads: int | None = None  # torch's intra-op threads on the CPU; None = torch's default
    # The fast path, each part where the hardware pays for it (`fast_path` decides "auto"):
    # amp: bf16 autocast of the training step: "auto" = on CUDA and on CPUs with native bf16 units
    # (avx512_bf16 or AMX), where it about doubles the speed (figures/bench/*-bf16.json); off on
    # other CPUs, where bf16 is emulated and far slower. Test numbers are always measured in float32.
    # channels_last: the convolutions' memory layout; "auto" = on: it paid on every kind of machine
    # measured, CPUs with and without avx512_bf16 alike (figures/bench/*-cpu*.json; `lvm bench
    # MODEL --vs channels_last=off` measures it on yours). compile: torch.compile, opt-in: a minute
    # of compiling up front.
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    log_every: int = 25  # minibatches between host syncs (losses are read back in batches)

    def validate(self) -> None:
        for name, value, most in (("epochs", self.epochs, 100_000), ("batch_size", self.batch_size, 2**20)):
            if not 1 <= value <= most:  # above the bound: a typo, never a budget
                raise UserError(f"{setting(name)} must be between 1 and {most}, got {value}")
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise UserError(f"{{lr}} must be a positive number, got {self.lr}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserError(f"lr schedule must be constant or cosine, got {self.lr_schedule!r}")
        if not 0 <= self.warmup <= 10**7:
            raise UserError(f"warm-up must be between 0 and 10000000 steps, got {self.warmup}")
        for name in ("amp", "channels_last"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise UserError(f"{name} must be auto, on or off, got {getattr(self, name)!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UserError(f"grad clip must be positive, got {self.grad_clip}")


def lr_factor(schedule: str, warmup: int, total: int, step: int) -> float:
    """The learning rate at `step` (0-based) of `total`, as a fraction of the configured one: a
    linear warm-up over the first `warmup` steps (1/warmup, 2/warmup, ... 1), then constant, or a
    cosine from 1 down to 0 over the steps that remain (a final iterate at lr ~ 0 is not bounced
    around by the minibatches' noise)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    rest = max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, rest) / rest))


@dataclass
class History:
    """Per-minibatch training terms and per-epoch test terms (index 0 = before training)."""

    train: dict[str, list[float]] = field(default_factory=dict)
    test: dict[str, list[float]] = field(default_factory=dict)

    def add(self, split: dict[str, list[float]], terms: dict[str, float]) -> None:
        for k, v in terms.items():
            split.setdefault(k, []).append(float(v))


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

# What a resumed run must keep: these decide what the run computes. Everything else (device,
# precision, threads) is how it computes, and may change between sessions; `epochs` may grow, to
# extend a run (the schedule is then that of the new total, from the step reached).
RESUME_FIXED = ("batch_size", "lr", "grad_clip", "seed", "lr_schedule", "warmup")


class Checkpoint(Protocol):
    """Where the trainer keeps one run's state (`lvm.engine.checkpoint.Slot`)."""

    where: str

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


# The setting that decides each key of a pipeline's meta, named by marker in messages
# (`lvm.engine.errors`): a config field is `{config.FIELD}=VALUE`, these are `{SETTING} VALUE`.
_SETTINGS = {"data.name": "{dataset} ", "train_size": "{train_limit} ", "test_size": "{test_limit} "}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def check_resumable(state: dict[str, Any], meta: dict[str, Any] | None, cfg: "TrainConfig", where: str) -> None:
    """Refuse, in one line, to resume a state with settings that contradict this run's."""
    old, new = _flat(state.get("meta") or {}), _flat(meta or {})
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            named = _SETTINGS.get(key) or (f"{setting(key)}=" if key.startswith("config.") else f"{key}=")
            raise UserError(f"cannot resume {where}: it was trained with {named}{old.get(key)!r}, this run asks "
                            f"for {new.get(key)!r}; drop that option, or start a new run ({{overwrite}} or another {{out}})")
    saved = state.get("train_config", {})
    for name in RESUME_FIXED:
        if name in saved and saved[name] != getattr(cfg, name):
            raise UserError(f"cannot resume {where}: it was trained with {setting(name)} {saved[name]}, "
                            f"this run asks for {getattr(cfg, name)}; a resumed run keeps its settings")
    if state["epoch"] > cfg.epochs:
        raise UserError(f"cannot resume {where}: it has trained {state['epoch']} epochs already, more than "
                        f"{{epochs}} {cfg.epochs}")


def check_world_size(state: dict[str, Any], cfg: "TrainConfig", size: int, where: str) -> None:
    """Refuse, in one line, to continue training a state with another number of processes: each
    process draws its own noise (the VAEs' samples), so the continuation would be neither run's.
    A finished state (nothing left to train) may be read by any number."""
    trained = state.get("world_size", 1)
    if trained != size and (state["epoch"], state["step"]) != (cfg.epochs, 0):
        how = f"torchrun --nproc-per-node {trained} (or --nnodes)" if trained > 1 else "one process (no torchrun)"
        raise UserError(f"cannot resume {where}: it was trained by {trained} process{'es' * (trained > 1)}, this run has "
                        f"{size}; resume it with {how}, as each process draws its own noise")


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


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    line = next((l for l in text.splitlines() if l.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX), rather than emulating it."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def fast_path(cfg: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """(bf16 autocast, channels-last) for this device: "on" and "off" as asked, "auto" where the
    hardware pays for it (see TrainConfig)."""
    bf16_units = device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())
    amp = cfg.amp == "on" or (cfg.amp == "auto" and bf16_units)
    return amp, cfg.channels_last in ("auto", "on")  # channels-last paid on every kind measured


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
    No host-device synchronisation happens inside. Under torchrun, `step(x, weight)` weighs this
    process's share of an unevenly split global minibatch (its size x processes / the global size),
    so that the gradient DDP averages, and the terms averaged over processes, are the global mean's."""
    amp, channels_last = fast_path(cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss_fn = _Loss(model)
    if world()[1] > 1:
        ids = [device.index] if device.type == "cuda" else None
        loss_fn = nn.parallel.DistributedDataParallel(loss_fn, device_ids=ids)
    if cfg.compile:
        loss_fn = torch.compile(loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]

    def step(x: torch.Tensor, weight: float = 1.0) -> dict[str, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            terms = loss_fn(_layout(x, channels_last))
        if weight != 1.0:
            terms = {k: v * weight for k, v in terms.items()}
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
             cfg: TrainConfig | None = None, desc: str = "test") -> dict[str, float]:
    """Every loss term, averaged over all examples of `data`. Under torchrun it is one model's
    evaluation, and every process must call it: each takes process 0's buffers, evaluates its
    share of `data`, and the sums are added up over the processes, so every process returns the
    same numbers. Always in float32, also for a model trained under bf16 autocast: the reported
    numbers are the model's, not bf16's rounding of them (evaluation is a small part of the time)."""
    _, channels_last = fast_path(cfg or TrainConfig(), device)
    rank, size = world()
    broadcast_buffers(model)  # a no-op in one process
    shard = data[rank::size]
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    starts = range(0, len(shard), batch_size)
    with torch.inference_mode():
        for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=True if rank else None):
            x = _layout(shard[start : start + batch_size].to(device, non_blocking=True), channels_last)
            for k, v in model.loss(x).items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() * len(x)
    model.train(was_training)
    keys = list(totals)
    sums = torch.stack([totals[k] for k in keys]) if keys else torch.zeros(0, device=device)
    if size > 1:
        dist.all_reduce(sums)
    return dict(zip(keys, (sums / len(data)).tolist()))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {seconds % 3600 / 60:02.0f} min"


class Progress:
    """A bar on a terminal. Where there is none (a log file, nohup, a cluster job) the bar would
    print nothing, so one plain line per epoch instead, and one early line with the ETA.
    `TQDM_DISABLE=1` silences both."""

    def __init__(self, total: int, initial: int, desc: str, quiet: bool):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                        leave=False, disable=True if quiet else None)
        self.lines = self.bar.disable and not quiet and os.environ.get("TQDM_DISABLE", "") in ("", "0")
        self.total, self.initial, self.done, self.start = total, initial, initial, time.perf_counter()
        self.said = 0.0  # when the last plain line was printed
        self.desc = desc

    def eta(self) -> str:
        spent, steps = time.perf_counter() - self.start, self.done - self.initial
        return _duration(spent / steps * (self.total - self.done)) if steps else "?"

    def describe(self, desc: str) -> None:
        self.desc = desc
        self.bar.set_description(desc)

    def step(self) -> None:
        self.done += 1
        self.bar.update(1)
        now = time.perf_counter()
        if self.lines and now - self.start > 5 and now - self.said > 60:  # an ETA early on, then at most a minute apart
            self.said = now
            print(f"{self.desc}: step {self.done}/{self.total}, {(now - self.start) / (self.done - self.initial):.2f} s/step, "
                  f"ETA {self.eta()}", flush=True)

    def epoch(self, train: dict[str, float], test: dict[str, float], seconds: float) -> None:
        if self.lines:
            self.said = time.perf_counter()
            terms = "  ".join(f"{k} {v:.4g}" for k, v in test.items())
            print(f"{self.desc}: train loss {train.get('loss', float('nan')):.4g}  test {terms}  "
                  f"({seconds:.1f} s; ETA {self.eta()})", flush=True)

    def close(self) -> None:
        self.bar.close()


# Seeds derived from --seed, each by a prime multiplier that keeps the streams it seeds apart:
PROCESS_SEED_STRIDE = 1_000_003  # process r's noise starts at seed + r * this (each process its own)
EPOCH_SEED_STRIDE = 100_003  # epoch e's shuffle is seeded seed * this + e (a resumed run reshuffles alike)


def fit(
    model: nn.Module,
    train: torch.Tensor,
    test: torch.Tensor,
    cfg: TrainConfig,
    *,
    checkpoint: Checkpoint | str | Path | None = None,
    resume: bool = False,
    meta: dict[str, Any] | None = None,
    desc: str = "train",
) -> History:
    """Train `model` on `train`, evaluating on `test`; returns the history.

    `checkpoint` is where the state goes after every epoch: a file path, or a stage's slot in a
    run's checkpoint (`lvm.engine.checkpoint.Slot`). With `resume`, training continues from it;
    `meta` (what the model was built from) is stored with it, and a resumed run whose `meta` or
    settings differ is refused. Under torchrun every process takes its share of each global
    minibatch of `cfg.batch_size`, the BatchNorm layers normalise with the global minibatch's
    statistics (`lvm.engine.distributed`), and process 0 alone writes checkpoints (every
    process's random state in them: a run resumed with as many processes continues exactly).
    """
    cfg.validate()
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"nothing to train on: {len(train)} training and {len(test)} test examples")
    if isinstance(checkpoint, (str, Path)):
        path = Path(checkpoint)
        checkpoint = (RunFile.read(path) if resume and path.exists() else RunFile(path, {})).slot("train")
    t = _Trainer(model, train, test, cfg, checkpoint, meta)
    if resume:
        t.resume()
    if not t.history.test:  # the course's curves start with the test loss at initialisation
        t.history.add(t.history.test, t.test_row("at initialisation"))
    t.start(desc)
    threads = torch.get_num_threads()
    if cfg.cpu_threads and t.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads)
    with _stop_on_signals() as stop_flag:
        try:
            while t.epoch < cfg.epochs:
                t.train_epoch(stop_flag, desc)
                row = t.test_row(f"after epoch {t.epoch + 1}")
                t.end_epoch(row)
            if t.size == 1 and stop_flag["signal"]:  # it came during the last test pass: the state is saved whole
                raise Interrupted(f"interrupted after the last epoch ({t.epoch})" + t.saved_where())
        finally:
            t.progress.close()
            torch.set_num_threads(threads)
    return t.history


class _Trainer:
    """One `fit`: the model, its optimiser and schedule, where training stands (`epoch`, `step`),
    the history, and the pieces of the loop: resuming, one epoch of steps, reading losses back,
    evaluating, checkpointing, stopping on a signal."""

    def __init__(self, model: nn.Module, train: torch.Tensor, test: torch.Tensor, cfg: TrainConfig,
                 checkpoint: Checkpoint | None, meta: dict[str, Any] | None):
        self.cfg, self.checkpoint, self.meta = cfg, checkpoint, meta
        self.device = resolve_device(cfg.device)
        self.rank, self.size = world()
        torch.manual_seed((cfg.seed + PROCESS_SEED_STRIDE * self.rank) % 2**63)  # each process its own noise
        self.model = model.to(self.device)
        if self.size > 1:  # one model: BatchNorm statistics of the global minibatch, not of each share
            sync_batchnorm(model)
        self.train, self.test = train.to(self.device), test.to(self.device)
        self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        self.per_epoch = math.ceil(len(train) / cfg.batch_size)
        smallest = min(cfg.batch_size, len(train) - (self.per_epoch - 1) * cfg.batch_size)  # the last minibatch may be short
        if smallest < self.size:
            raise UserError(f"{self.size} processes cannot share a minibatch of {smallest} examples (the last of each "
                            f"epoch of {len(train)} at {{batch_size}} {cfg.batch_size}); change {{batch_size}} or "
                            "{train_limit}")
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, functools.partial(lr_factor, cfg.lr_schedule, cfg.warmup, cfg.epochs * self.per_epoch))
        self.history, self.epoch, self.step = History(), 0, 0
        self.any_saved = False
        self.pending: list[dict[str, torch.Tensor]] = []  # minibatch losses not yet read back

    # --- resuming and checkpoints

    def resume(self) -> None:
        """Continue from the checkpoint, if it holds a state; refuse one with other settings.
        Under torchrun every process resumes from process 0's checkpoint, or refuses with it."""
        state, refusal = None, None
        if self.checkpoint is not None and self.rank == 0:
            state = self.checkpoint.load()
            try:
                if state is not None:
                    check_resumable(state, self.meta, self.cfg, self.checkpoint.where)
                    check_world_size(state, self.cfg, self.size, self.checkpoint.where)
            except UserError as e:
                refusal = e.template()  # its settings still markers, for whoever words the message
        if self.size > 1:
            box = [state, refusal]
            dist.broadcast_object_list(box, src=0)
            state, refusal = box
        if refusal is not None:
            raise UserError(refusal)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["optimizer"])
            self.sched.load_state_dict(state["scheduler"])
            self.history = History(**state["history"])
            self.epoch, self.step = state["epoch"], state["step"]
            rngs = state.get("rng_ranks") or [state["rng"]]  # one per process; older checkpoints: one
            if self.rank < len(rngs):
                _set_rng_state(rngs[self.rank])
            self.any_saved = True

    def save(self, epoch: int, step: int) -> None:
        """The whole state, as of `epoch` and `step`, with every process's random state."""
        if self.checkpoint is None:
            return
        rngs = [_rng_state()]
        if self.size > 1:  # every process's noise, so that each continues its own on resume
            rngs = [None] * self.size if self.rank == 0 else None
            dist.gather_object(_rng_state(), rngs, dst=0)
        if self.rank == 0:
            self.checkpoint.save({
                "meta": self.meta or {}, "train_config": asdict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "epoch": epoch,
                "step": step, "history": asdict(self.history), "rng": rngs[0], "rng_ranks": rngs,
                "world_size": self.size,
            })
            self.any_saved = True

    def saved_where(self) -> str:
        return f"; saved {self.checkpoint.where}" if self.checkpoint is not None else ""

    def diverged(self, values: list[float], where: str) -> Diverged:
        kept = (f"the last good checkpoint is kept in {self.checkpoint.where}" if self.checkpoint is not None
                and self.any_saved else "no checkpoint had been written yet")
        return Diverged(f"loss became {values} {where}; stopped, {kept}. Try a lower {{lr}} in a new run "
                        "({overwrite} or another {out}; a resumed run keeps its {lr})")

    # --- the loop

    def start(self, desc: str) -> None:
        self.train_step = make_step(self.model, self.opt, self.cfg, self.device, self.sched)
        self.progress = Progress(self.cfg.epochs * self.per_epoch, self.epoch * self.per_epoch + self.step, desc,
                                 quiet=bool(self.rank))

    def train_epoch(self, stop_flag: dict[str, int], desc: str) -> None:
        """The minibatches of the epoch under way, from the step reached, in the epoch's own
        shuffled order; a signal stops it between steps, saved."""
        cfg, epoch = self.cfg, self.epoch
        gen = torch.Generator().manual_seed((cfg.seed * EPOCH_SEED_STRIDE + epoch) % 2**63)
        order = torch.randperm(len(self.train), generator=gen).to(self.device)
        self.progress.describe(f"{desc} epoch {epoch + 1}/{cfg.epochs}")
        self.started, self.first = time.perf_counter(), len(self.history.train.get("loss", []))
        while self.step < self.per_epoch:
            if self.stopping(stop_flag["signal"], boundary=self.step % cfg.log_every == 0):
                self.flush()
                self.save(epoch, self.step)
                raise Interrupted(f"interrupted at epoch {epoch + 1}, step {self.step}" + self.saved_where())
            batch = order[self.step * cfg.batch_size : (self.step + 1) * cfg.batch_size]
            mine = batch[self.rank :: self.size]  # every size-th example: together, the whole minibatch
            self.pending.append(self.train_step(self.train[mine], len(mine) * self.size / len(batch)))
            self.step += 1
            if len(self.pending) >= cfg.log_every:
                self.flush()
            self.progress.step()
        self.flush()

    def end_epoch(self, row: dict[str, float]) -> None:
        """Record the epoch's test row, say it, and checkpoint the start of the next epoch."""
        self.history.add(self.history.test, row)
        losses = self.history.train.get("loss", [])[self.first:]
        self.progress.epoch({"loss": sum(losses) / max(1, len(losses))}, row, time.perf_counter() - self.started)
        self.epoch, self.step = self.epoch + 1, 0
        self.save(self.epoch, 0)

    def test_row(self, label: str) -> dict[str, float]:
        row = evaluate(self.model, self.test, self.cfg.batch_size, self.device, self.cfg)
        if not all(math.isfinite(v) for v in row.values()):
            raise self.diverged(list(row.values()), f"on the test set {label}")
        return row

    def flush(self) -> None:
        """Read the pending minibatch losses back from the device; stop on NaN/inf."""
        if not self.pending:
            return
        keys = list(self.pending[0])
        values = torch.stack([torch.stack([p[k] for k in keys]) for p in self.pending])  # (steps, terms)
        if self.size > 1:  # the curve of the global minibatch: the mean over processes
            dist.all_reduce(values)
            values /= self.size
        values = values.cpu()
        bad = ~torch.isfinite(values).all(1)
        if bad.any():
            at = self.step - len(self.pending) + int(bad.nonzero()[0]) + 1
            raise self.diverged(values[bad][0].tolist(), f"at epoch {self.epoch + 1} step {at}")
        for row in values.tolist():
            self.history.add(self.history.train, dict(zip(keys, row)))
        self.progress.bar.set_postfix({k: f"{v:.4g}" for k, v in zip(keys, values[-1].tolist())}, refresh=False)
        self.pending.clear()

    def stopping(self, signalled: int, boundary: bool) -> bool:
        """Single process: at once. Under torchrun: at log boundaries, all processes together."""
        if self.size == 1:
            return bool(signalled)
        if not boundary:
            return False
        flag = torch.tensor([float(bool(signalled))], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
