"""What `lvm run` does for every model: load data, train with the one trainer, let the model
write its figures, and record `metrics.json`. Also: rebuilding a trained model from its
checkpoint in one call (`load_model`)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lvm.engine import data as datasets
from lvm import registry
from lvm.engine.data import DataInfo
from lvm.engine.errors import UserError
from lvm.engine.plotting import plot_training, save_image_grid, save_reconstructions, save_scatter
from lvm.engine.train import History, TrainConfig, init_distributed, load_checkpoint, resolve_device, world
from lvm.engine.train import fit as train_fit


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (temporary file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def describe_device(device: torch.device, threads: int | None = None) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {threads or torch.get_num_threads()} threads)"


def fit(
    model: nn.Module,
    name: str,
    model_config: dict[str, Any],
    train: torch.Tensor,
    test: torch.Tensor,
    info: DataInfo,
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool = False,
    stage: str = "",
    labels: dict[str, str] | None = None,
    title: str | None = None,
) -> History:
    """Train with the shared trainer and write `[stage_]checkpoint.pt`, `[stage_]history.json`
    and `[stage_]train_plot.png` (titled `title`, else "NAME (STAGE) on DATASET") into `out`."""
    prefix = f"{stage}_" if stage else ""
    meta = {"model": name, "config": model_config, "data": asdict(info), "stage": stage}
    history = train_fit(
        model, train, test, cfg,
        checkpoint=out / f"{prefix}checkpoint.pt", resume=resume, meta=meta, desc=stage or name,
    )
    write_json(out / f"{prefix}history.json", asdict(history))
    plot_training(history.train, history.test, out / f"{prefix}train_plot.png",
                  title=title or f"{name}{f' ({stage})' if stage and stage != name else ''} on {info.name}",
                  labels=labels)
    return history


def code_version() -> str | None:
    """The git commit the code runs from, with `-dirty` if the `lvm` package has uncommitted
    changes (figures written meanwhile do not count); None outside a git checkout. Recorded in
    metrics.json, as of the start of the run, so that every row names the code that made it."""
    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(["git", *args], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "--short=12", "HEAD")
    if not commit:
        return None
    return commit + ("-dirty" if git("status", "--porcelain", "--", ".") else "")


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".lvm-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write to output folder {out}: {e.strerror or e}") from None


def run(
    model: str,
    dataset: str | None = None,
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    download: bool = True,
    options: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train `model` on `dataset` with its default budget changed by `overrides` (TrainConfig
    fields), write its figures and `metrics.json` to `out`, and return the metrics."""
    entry = registry.get(model)
    dataset = dataset or entry.default_dataset
    src = datasets.source(dataset)
    if src.kind not in entry.kinds:
        fits = [n for n, s in datasets.DATASETS.items() if s.kind in entry.kinds]
        raise UserError(f"model '{model}' does not train on '{dataset}'; choose one of: {', '.join(fits)}")
    options = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise UserError(f"model '{model}' takes no option {', '.join('--' + u.replace('_', '-') for u in unknown)}")
    cfg = replace(entry.train, **{k: v for k, v in overrides.items() if v is not None})
    cfg.validate()
    init_distributed(cfg.device)  # a no-op unless started by torchrun
    device = resolve_device(cfg.device)
    data = datasets.load(dataset, data_dir, train_limit, test_limit, download=download)
    out = Path(out) if out else Path("figures") / model / dataset
    _check_writable(out)  # only now, after every input was checked: bad input writes nothing
    rank, size = world()

    start, code = time.perf_counter(), code_version()
    torch.manual_seed(cfg.seed)  # the model's initial weights come from --seed too
    if rank == 0:
        result = entry.run(data, cfg, out, resume=resume, **options)
    else:  # under torchrun the other processes train alongside; process 0 alone writes to `out`
        scratch = Path(tempfile.mkdtemp(prefix=f"lvm-rank{rank}-"))
        try:
            result = entry.run(data, cfg, scratch, resume=resume, **options)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - start
    metrics = {
        "model": model,
        "dataset": dataset,
        "config": {
            "model": result.pop("config"),
            "train": asdict(cfg),
            "train_limit": train_limit,
            "test_limit": test_limit,
            "train_size": len(data.train),
            "test_size": len(data.test),
            **{k: v for k, v in options.items()},
        },
        "device": describe_device(device, cfg.cpu_threads) + (f" x {size} processes" if size > 1 else ""),
        "torch": torch.__version__,
        "code": code,
        "epochs": cfg.epochs,
        "seconds": round(seconds, 1),
        "resumed": resume,
        **result,
    }
    if rank == 0:
        write_json(out / "metrics.json", metrics)
    return metrics


def final_line(model: str, test: dict[str, float]) -> str:
    """The course's way of printing final test numbers: `Final -ELBO: 4.4321, Recon Loss: ...`."""
    terms = registry.get(model).terms or {k: k for k in test}
    return "Final " + ", ".join(f"{label}: {test[k]:.4f}" for k, label in terms.items() if k in test)


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a checkpoint: `model, meta = load_model("figures/.../checkpoint.pt")`."""
    state = load_checkpoint(path, map_location)
    meta = state["meta"]
    try:
        entry = registry.get(meta["model"])
        info = DataInfo(meta["data"]["name"], meta["data"]["kind"], tuple(meta["data"]["shape"]))
        model = entry.build(meta["config"], info, stage=meta.get("stage", ""))
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, TypeError) as e:
        raise UserError(f"{path}: checkpoint does not match its model ({type(e).__name__}: {e})") from None
    return model.eval(), meta


def show(x: torch.Tensor, kind: str) -> torch.Tensor:
    """A model's output in its data space -> something to draw: [0, 1] images, or points."""
    x = x.detach().float().cpu()
    return datasets.from_unit(x) if kind == "image" else x


def sample_to_file(checkpoint: str | Path, n: int, out: str | Path, seed: int = 0) -> Path:
    """Draw n samples from a trained model and plot them (a grid of images, or a scatter)."""
    model, meta = load_model(checkpoint)
    if meta.get("stage") == "prior":
        raise UserError(f"{checkpoint} holds only the prior over codes; sample from checkpoint.pt beside it")
    if not hasattr(model, "sample"):
        raise UserError(f"{checkpoint}: this model ({meta['model']} {meta.get('stage', '')}) cannot sample on its own")
    _check_writable(Path(out).parent)
    torch.manual_seed(seed)
    x = model.sample(n)
    kind, title = meta["data"]["kind"], f"{meta['model']} on {meta['data']['name']}: {n} samples"
    if kind == "points":
        return save_scatter({"samples": x.cpu()}, out, title)
    return save_image_grid(show(x, kind), out, title)


def reconstruct_to_file(checkpoint: str | Path, dataset: str, out: str | Path, n: int = 50,
                        data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The first n test images of `dataset` beside the trained model's reconstructions."""
    model, meta = load_model(checkpoint)
    if not hasattr(model, "reconstruct"):
        raise UserError(f"{checkpoint}: this model ({meta['model']}) does not reconstruct")
    data = datasets.load(dataset, data_dir, test_limit=n, download=download)
    if data.info.shape != tuple(meta["data"]["shape"]) or data.info.kind != meta["data"]["kind"]:
        raise UserError(f"{checkpoint} was trained on {meta['data']['name']} {tuple(meta['data']['shape'])}; "
                        f"'{dataset}' has examples of shape {data.info.shape}")
    _check_writable(Path(out).parent)
    with torch.no_grad():
        x_hat = model.reconstruct(data.test)  # every model takes data as stored
    kind = data.info.kind
    original = datasets.to_unit(data.test) if kind == "image" else data.test
    return save_reconstructions(show(original, kind), show(x_hat, kind), out)
