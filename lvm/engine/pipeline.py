"""What `lvm run` does for every model, read from the model's spec (`lvm.engine.spec`): load the
data, build the config, train each stage with the one trainer, let the model draw its figures,
and write `metrics.json` beside the run's one checkpoint. Also: rebuilding a trained model from
its checkpoint (`load_model`), and `lvm sample` / `lvm reconstruct` on it. The caller names the
model by its spec, having looked its name up: the engine looks up no model.

A run folder belongs to one run. Running again into a folder that holds a run is refused unless
`--resume` (continue it) or `--overwrite` (start it again) says which; two processes never write
into one folder at once (`lvm.engine.files.claim`). Every setting is checked before the folder is
touched: the config's ranges, every stage's budget, and a resume's model, stages and settings
against the folder's; only then does `--overwrite` delete. Every file is written whole
(`lvm.engine.files`), and Ctrl-C or SIGTERM at any step ends in one line saying what is kept.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import platform
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from lvm.blocks.scaling import picture
from lvm.engine import config as configs
from lvm.engine import data as datasets
from lvm.engine import files
from lvm.engine.checkpoint import RunFile, load
from lvm.engine.data import Data, DataInfo
from lvm.engine.errors import Advice, Interrupted, UserError
from lvm.engine.evaluate import at_end_of_run
from lvm.engine.plotting import png_path, plot_training, save_image_grid, save_reconstructions, save_scatter
from lvm.engine.spec import ModelSpec
from lvm.engine.train import (History, TrainConfig, check_resumable, cpu_flags, cpu_has_bf16, fast_path, fit, init_distributed,
                              resolve_device, world)

RUNS = Path("runs")  # where `lvm run` writes when no --out is given (git-ignored)


def write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (a temporary file of this process, then a rename)."""
    files.write_text(path, json.dumps(obj, indent=2) + "\n")


def describe_device(device: torch.device, threads: int | None = None) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.machine()}, {threads or torch.get_num_threads()} threads)"


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
    return commit + ("-dirty" if git("status", "--porcelain", "--", "..") else "")


# ----------------------------------------------------------------------------- configs


def make_config(spec: ModelSpec, info: DataInfo | None, overrides: dict[str, Any] | None = None) -> Any:
    """The model's config: its defaults, the fields the data decides, then `overrides`. Without
    `info` (the data not read yet) the data's fields keep their defaults: a config to check the
    settings with (`check_settings`), not to build a model from."""
    fixed = sorted(set(overrides or {}) & set(spec.from_data))
    if fixed:
        raise UserError(f"field '{fixed[0]}' of {spec.name} is set from the dataset and cannot be changed")
    try:
        base = spec.default_config(info) if info is not None else spec.config()
        config = dataclasses.replace(base, **configs.coerce(type(base), overrides or {}))
    except (TypeError, ValueError) as e:
        raise UserError(f"{spec.name}: {e}") from None
    configs.check(config, tuple(spec.from_data))
    return config


def check_budget(spec: ModelSpec, config: Any, cfg: TrainConfig) -> None:
    """Every stage's budget, checked before any stage trains (a later stage's own epochs too)."""
    cfg.validate()
    for stage in spec.stages:
        stage_train_config(stage, config, cfg).validate()


def check_settings(spec: ModelSpec, overrides: dict[str, Any] | None, cfg: TrainConfig) -> None:
    """The settings given, checked before the data is read (a download, maybe): each config value,
    and every stage's budget. Only the fields the data sets wait for it (`make_config`)."""
    check_budget(spec, make_config(spec, None, overrides), cfg)


def variant_of(spec: ModelSpec, config: Any) -> str | None:
    """The name of the spec's variant this config is (its changes applied and no other change but
    a stage's epochs: a budget, not another model), if any."""
    default = configs.to_dict(spec.config())
    budget = set(spec.from_data) | {s.epochs for s in spec.stages}
    changed = {k: v for k, v in configs.to_dict(config).items() if v != default[k] and k not in budget}
    for name, change in spec.variants.items():
        if changed == configs.json_ready(change):
            return name
    return None


def stage_meta(spec: ModelSpec, config: Any, data: Data, index: int) -> dict[str, Any]:
    """What stage `index` is trained from: the model, the data (which examples), and every config
    field it depends on: all but those only later stages read, and but its own epochs (a run may
    be extended)."""
    stage = spec.stages[index]
    later = {f for s in spec.stages[index + 1:] for f in s.fields}
    values = configs.to_dict(config)
    return {"model": spec.name, "stage": stage.name, "data": configs.json_ready(asdict(data.info)),
            "train_size": len(data.train), "test_size": len(data.test),
            "config": {k: v for k, v in values.items() if k not in later and k != stage.epochs}}


def stage_train_config(stage, config: Any, cfg: TrainConfig) -> TrainConfig:
    """The run's budget as this stage trains it: its own epochs and schedule, where it has them."""
    own = stage.train(config) if stage.train is not None else {}
    if stage.epochs:
        own["epochs"] = getattr(config, stage.epochs)
    return replace(cfg, **own)


# ----------------------------------------------------------------------------- training


@dataclass
class Trained:
    """A model's trained stages, their histories, and the model a user samples from."""

    model: nn.Module
    stages: list[nn.Module]
    histories: dict[str, History]


def fit_stages(spec: ModelSpec, config: Any, data: Data, cfg: TrainConfig, *, file: RunFile | None = None,
               resume: bool = False) -> Trained:
    """Train every stage of `spec` in order, each on what the ones before it produced. With a
    checkpoint `file`, each stage keeps its state there; with `resume`, a stage continues from
    it (a finished one trains no further), and a stage after one that trained in this run starts
    again from scratch (its inputs changed)."""
    models: list[nn.Module] = []
    histories: dict[str, History] = {}
    upstream_trained = False
    for i, stage in enumerate(spec.stages):
        stage_data = stage.inputs(models, data) if stage.inputs else data
        model = stage.build(config)
        if stage.setup is not None:
            stage.setup(model, stage_data)
        scfg = stage_train_config(stage, config, cfg)
        slot = file.slot(stage.name) if file is not None else None
        if slot is not None and upstream_trained:
            slot.clear()
        before = slot.load() if slot is not None and resume else None
        desc = spec.name if len(spec.stages) == 1 else f"{spec.name} {stage.name}"
        histories[stage.name] = fit(model, stage_data.train, stage_data.test, scfg, checkpoint=slot, resume=resume,
                                    meta=stage_meta(spec, config, data, i), desc=desc)
        upstream_trained |= before is None or (before["epoch"], before["step"]) != (scfg.epochs, 0)
        model.eval()
        models.append(model)
    model = spec.assemble(config, models) if spec.assemble else models[-1]
    return Trained(model.eval(), models, histories)


def final_numbers(spec: ModelSpec, trained: Trained, data: Data) -> dict[str, float]:
    """The last test value of every term, under its metric name, then the spec's summaries."""
    test = {}
    for stage in spec.stages:
        for term in stage.terms:
            test[term.name] = trained.histories[stage.name].test[term.key][-1]
    if spec.summarise is not None:
        test.update(spec.summarise(trained.model, data))
    return test


def final_line(spec: ModelSpec, test: dict[str, float], config: dict[str, Any] | None = None) -> str:
    """The course's way of printing final test numbers: `Final -ELBO: 4.4321, Recon Loss: ...`;
    `config` is the run's model config (metrics.json's), for labels that depend on it."""
    shown = [(t.course_label(config or {}), test[t.name]) for t in spec.terms() if t.course and t.name in test]
    return "Final " + ", ".join(f"{label}: {value:.4f}" for label, value in shown)


# ----------------------------------------------------------------------------- run folders


def _run_state(out: Path) -> str | None:
    """What `out` holds: "a finished run", "an unfinished run" or None."""
    if (out / "metrics.json").exists():
        return "a finished run"
    if (out / "checkpoint.pt").exists():
        return "an unfinished run"
    return None


def _check_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """A run goes into a folder that holds none, or continues (resume) or replaces (overwrite) the
    one it holds: never over a run by accident."""
    held = _run_state(out)
    if resume and not (out / "checkpoint.pt").exists():
        raise UserError(f"no checkpoint in {out} to resume; run without {{resume}} to start there")
    if held and not (resume or overwrite):
        raise UserError(f"{out} holds {held} already; {{resume}} continues it, {{overwrite}} starts it again, "
                        "or choose another {out}")


def _check_resume(spec: ModelSpec, config: Any, data: Data, cfg: TrainConfig, file: RunFile) -> None:
    """A resumed run continues the folder's own run: the same model, the same stages, and the
    settings of every stage that would continue (not those a retrained earlier stage restarts).
    Checked before anything trains, so a refused resume changes nothing."""
    mine = [s.name for s in spec.stages]
    theirs, stages = file.meta.get("model") if isinstance(file.meta, dict) else None, list(file.stages)
    if theirs != spec.name or not set(stages) <= set(mine):
        raise UserError(f"cannot resume {file.path}: it holds a {theirs or 'unknown'} run (stages "
                        f"{', '.join(stages) or 'none'}), this run is {spec.name} (stages {', '.join(mine)}); "
                        "choose another {out}, or {overwrite} to start it again")
    for i, stage in enumerate(spec.stages):
        state, scfg = file.stages.get(stage.name), stage_train_config(stage, config, cfg)
        if not isinstance(state, dict):
            return
        try:
            check_resumable(state, stage_meta(spec, config, data, i), scfg, str(file.path))
            finished = (state["epoch"], state["step"]) == (scfg.epochs, 0)
        except (KeyError, TypeError):
            raise UserError(f"cannot resume {file.path}: its {stage.name} stage is not a state lvm wrote") from None
        if not finished:  # it trains on, so the stages after it start again: nothing of theirs to check
            return


@contextmanager
def _stops_cleanly(out: Path, what: dict[str, str]) -> Iterator[None]:
    """SIGINT/SIGTERM at any step of a run (the trainer has its own, between minibatches): one
    line saying what was being done and what is kept, instead of a silent death. `what["now"]`
    names the step under way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001 - signal API
        kept = (f"the last good checkpoint is kept in {out / 'checkpoint.pt'}" if (out / "checkpoint.pt").exists()
                else "no checkpoint had been written yet")
        raise Interrupted(f"interrupted while {what['now']}; {kept}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass
class RunPlan:
    """One run of `spec`, everything it is decided from, checked before its folder is touched."""

    spec: ModelSpec
    dataset: str
    config: Any
    data: Data
    cfg: TrainConfig
    device: torch.device
    variant: str | None
    out: Path
    meta: dict[str, Any]  # what the checkpoint says it holds
    limits: tuple[int | None, int | None]  # --train-limit, --test-limit as given
    resume: bool = False
    reuse: Path | None = None

    @property
    def title(self) -> str:
        return f"{self.spec.name}{f' ({self.variant})' if self.variant else ''} on {self.dataset}"


def train_row(
    spec: ModelSpec,
    dataset: str | None = None,
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    train_limit: int | None = None,
    test_limit: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    download: bool = True,
    overrides: dict[str, Any] | None = None,
    reuse: str | Path | None = None,
    **train_overrides: Any,
) -> dict[str, Any]:
    """Train the model `spec` declares on `dataset` with its default budget changed by
    `train_overrides` (TrainConfig fields) and its config by `overrides`, write its figures,
    checkpoint and `metrics.json` to `out` (default runs/MODEL/DATASET), and return the metrics.

    `reuse`: another run's checkpoint whose finished stages this run may take as they are where
    they were trained from the same settings (`lvm table`'s variants share the VQ-VAE)."""
    if resume and overwrite:
        raise UserError("{resume} continues a run and {overwrite} starts it again: give one of them")
    row = _plan(spec, dataset or spec.default_dataset, out, data_dir, (train_limit, test_limit), download,
                    overrides, train_overrides, resume, reuse)
    rank, size = world()
    if rank != 0:  # under torchrun the other processes train alongside; process 0 alone writes
        _check_folder(row.out, resume, overwrite)
        _train_alongside(row, rank)
        return {}
    doing = {"now": "training"}
    with files.claim(row.out), _stops_cleanly(row.out, doing):  # checked while holding the folder: another run may have just finished there
        trained, seconds, code = _train_into(row, row.out, _open_folder(row, overwrite))
        doing["now"] = "drawing the figures (training had finished)"
        extra = _draw(row, trained)
        doing["now"] = "evaluating (training had finished)"
        extra["eval"] = at_end_of_run(trained.model, row.data, spec.evaluation, full_run=train_limit is None,
                                      data_dir=data_dir, device=row.device, download=download)
        metrics = _metrics(row, trained, seconds, code, size, extra)
        doing["now"] = "writing metrics.json (training had finished)"
        write_json(row.out / "metrics.json", metrics)
    return {**metrics, "out": str(row.out)}


def _plan(spec: ModelSpec, dataset: str, out: str | Path | None, data_dir: str | Path | None,
              limits: tuple[int | None, int | None], download: bool, overrides: dict[str, Any] | None,
              train_overrides: dict[str, Any], resume: bool, reuse: str | Path | None) -> RunPlan:
    """Every setting of a run, checked in turn (the dataset, the budget, the device, the config's
    ranges and every stage's budget, the data, the fields it sets) before anything is written."""
    src = datasets.source(dataset)
    if src.kind not in spec.kinds:
        fits = [n for n, s in datasets.DATASETS.items() if s.kind in spec.kinds]
        raise UserError(f"model '{spec.name}' does not train on '{dataset}'; choose one of: {', '.join(fits)}")
    cfg = replace(spec.train, **{k: v for k, v in train_overrides.items() if v is not None})
    cfg.validate()
    init_distributed(cfg.device)  # a no-op unless started by torchrun
    device = resolve_device(cfg.device)
    if cfg.amp == "on" and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn(Advice("{amp} on: this CPU has no bf16 units (no avx512_bf16 or amx_bf16), so bf16 is emulated "
                             "and training runs several times slower than in float32; {amp} auto picks float32 here"),
                      stacklevel=3)
    check_settings(spec, overrides, cfg)  # a bad value is told before the data is read, let alone downloaded
    data = datasets.load(dataset, data_dir, *limits, download=download)
    config = make_config(spec, data.info, overrides)  # and with the data's fields, before anything is touched
    variant = variant_of(spec, config)
    out = Path(out) if out else RUNS / spec.name / (dataset + (f"-{variant}" if variant else ""))
    meta = {"model": spec.name, "variant": variant, "config": configs.to_dict(config),
            "data": configs.json_ready(asdict(data.info))}
    return RunPlan(spec, dataset, config, data, cfg, device, variant, out, meta, limits, resume,
               Path(reuse) if reuse is not None else None)


def _open_folder(row: RunPlan, overwrite: bool) -> RunFile | None:
    """Check the folder (and a resume against it) and, every check passed, clear it for an
    overwrite. Returns the checkpoint a resume continues."""
    _check_folder(row.out, row.resume, overwrite)
    file = RunFile.read(row.out / "checkpoint.pt") if row.resume else None
    if file is not None:
        _check_resume(row.spec, row.config, row.data, row.cfg, file)
    if overwrite:  # only now, every check passed
        for name in ("metrics.json", "checkpoint.pt"):
            (row.out / name).unlink(missing_ok=True)
    return file


def _train_into(row: RunPlan, folder: Path, file: RunFile | None = None) -> tuple[Trained, float, str | None]:
    """Train every stage with its checkpoint in `folder`: (what trained, seconds, code version)."""
    start, code = time.perf_counter(), code_version()
    file = file or (RunFile.read(row.out / "checkpoint.pt") if row.resume else RunFile(folder / "checkpoint.pt", row.meta))
    file.path, file.meta = folder / "checkpoint.pt", row.meta
    if row.reuse is not None and not row.resume:
        _take_finished_stages(row.spec, row.config, row.data, row.cfg, file, row.reuse)
    torch.manual_seed(row.cfg.seed)  # the model's initial weights come from the seed too
    trained = fit_stages(row.spec, row.config, row.data, row.cfg, file=file, resume=row.resume or row.reuse is not None)
    return trained, time.perf_counter() - start, code


def _train_alongside(row: RunPlan, rank: int) -> None:
    """A torchrun process other than 0: trains its share, its checkpoint in a scratch folder."""
    scratch = Path(tempfile.mkdtemp(prefix=f"lvm-rank{rank}-"))
    try:
        _train_into(row, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _draw(row: RunPlan, trained: Trained) -> dict[str, Any]:
    """Each stage's history and curves, then the model's own figures; returns what those add to
    the metrics."""
    spec = row.spec
    for stage in spec.stages:
        prefix = f"{stage.name}_" if len(spec.stages) > 1 else ""
        history = trained.histories[stage.name]
        write_json(row.out / f"{prefix}history.json", asdict(history))
        plot_training(history.train, history.test, row.out / f"{prefix}train_plot.png",
                      title=row.title + (f": {stage.name}" if prefix else ""),
                      labels={t.key: f"{t.label} ({t.unit})" for t in stage.terms}, note=stage.note)
    torch.manual_seed(row.cfg.seed)
    return spec.figures(trained.model, row.data, row.out, row.title) if spec.figures else {}


def _metrics(row: RunPlan, trained: Trained, seconds: float, code: str | None, size: int,
             extra: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json holds: the run's settings, machine, code and final numbers."""
    spec, config, cfg, data = row.spec, row.config, row.cfg, row.data
    return {
        "model": spec.name,
        "dataset": row.dataset,
        "variant": row.variant,
        "config": {
            "model": configs.to_dict(config),
            "train": asdict(cfg),
            "train_limit": row.limits[0],
            "test_limit": row.limits[1],
            "train_size": len(data.train),
            "test_size": len(data.test),
        },
        "device": describe_device(row.device, cfg.cpu_threads) + (f" x {size} processes" if size > 1 else ""),
        "precision": "bf16" if fast_path(cfg, row.device)[0] else "float32",  # of the training steps
        "cpu_flags": sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "torch": torch.__version__,
        "code": code,
        "epochs": cfg.epochs,
        "stage_epochs": {s.name: stage_train_config(s, config, cfg).epochs for s in spec.stages},
        "seconds": round(seconds, 1),
        "resumed": row.resume,
        "test": final_numbers(spec, trained, data),
        **extra,
    }


def _take_finished_stages(spec: ModelSpec, config: Any, data: Data, cfg: TrainConfig, file: RunFile,
                          source: Path) -> None:
    """Copy into `file` the leading stages of the run at `source` that finished from exactly the
    settings this run would train them from."""
    stages = RunFile.read(source).stages
    for i, stage in enumerate(spec.stages):
        state, scfg = stages.get(stage.name), stage_train_config(stage, config, cfg)
        if state is None or (state["epoch"], state["step"]) != (scfg.epochs, 0):
            return
        try:
            check_resumable(state, stage_meta(spec, config, data, i), scfg, str(source))
        except UserError:
            return
        file.stages[stage.name] = state


# ----------------------------------------------------------------------------- trained models


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict[str, Any]:
    """A run's checkpoint as written by `train_row`; its `meta` says which model (`meta["model"]`,
    the name it is registered under) and which data it was trained on."""
    state = load(path, map_location)
    meta = state.get("meta")
    data = meta.get("data") if isinstance(meta, dict) else None
    if not isinstance(data, dict) or not {"name", "kind", "shape"} <= set(data) or not isinstance(meta.get("model"), str):
        raise UserError(f"{path}: the checkpoint does not say which model and data it was trained on "
                        "(meta.model, meta.data); it was not written by lvm run")
    return state


def load_model(spec: ModelSpec, path: str | Path, map_location: str = "cpu", *,
               state: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the trained `spec` model of a checkpoint: `model, meta = load_model(spec, path)`
    (`lvm.load_model(path)` finds the spec itself). `state`: the checkpoint, if already read
    (`read_checkpoint`)."""
    state = state if state is not None else read_checkpoint(path, map_location)
    meta = state["meta"]
    try:
        config = configs.from_dict(spec.config, meta["config"])
        try:
            configs.check(config)
        except UserError as e:
            raise UserError(f"{path}: its config is not one lvm builds ({e.template()})") from None
        models = []
        for stage in spec.stages:
            if stage.name not in state["stages"]:
                raise UserError(f"{path} is an unfinished run: its {stage.name} stage has not trained yet; "
                                "continue it with {resume}")
            model = stage.build(config)
            model.load_state_dict(state["stages"][stage.name]["model"])
            models.append(model)
    except (KeyError, RuntimeError, TypeError, ValueError, ArithmeticError) as e:
        raise UserError(f"{path}: checkpoint does not match its model ({type(e).__name__}: {_first_line(e)})") from None
    model = spec.assemble(config, models) if spec.assemble else models[-1]
    return model.eval(), meta


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def check_temperature(temperature: float) -> None:
    """Refuse a sampling temperature that is not a positive number (0, negative, inf, NaN): a
    flag, checked before any checkpoint is read."""
    if not 0 < temperature < float("inf"):  # also refuses NaN
        raise UserError(f"{{temperature}} must be a positive number, got {temperature}")


def sample_to_file(spec: ModelSpec, checkpoint: str | Path, n: int, out: str | Path, seed: int = 0,
                   temperature: float = 1.0, *, state: dict[str, Any] | None = None) -> Path:
    """Draw n samples from a trained `spec` model and plot them (a grid of images, or a scatter).
    `state`: the checkpoint, if already read."""
    check_temperature(temperature)
    out = png_path(out)
    model, meta = load_model(spec, checkpoint, state=state)
    takes_temperature = "temperature" in inspect.signature(model.sample).parameters
    if temperature != 1.0 and not takes_temperature:
        raise UserError(f"{checkpoint}: {meta['model']} samples without a temperature")
    torch.manual_seed(seed)
    x = model.sample(n, temperature=temperature) if takes_temperature else model.sample(n)
    kind, title = meta["data"]["kind"], f"{meta['model']} on {meta['data']['name']}: {n} samples"
    if kind == "points":
        return save_scatter({"samples": x.cpu()}, out, title)
    return save_image_grid(picture(x, kind), out, title)


def reconstruct_to_file(spec: ModelSpec, checkpoint: str | Path, out: str | Path, n: int = 50,
                        dataset: str | None = None, data_dir: str | Path | None = None, download: bool = True, *,
                        state: dict[str, Any] | None = None) -> Path:
    """The first n test images of `dataset` (default: the one the model trained on) beside the
    trained `spec` model's reconstructions. `state`: the checkpoint, if already read."""
    out = png_path(out)
    model, meta = load_model(spec, checkpoint, state=state)
    if not hasattr(model, "reconstruct"):
        raise UserError(f"{checkpoint}: this model ({meta['model']}) does not reconstruct")
    dataset = dataset or meta["data"]["name"]
    data = datasets.load(dataset, data_dir, test_limit=n, download=download)
    if data.info.shape != tuple(meta["data"]["shape"]) or data.info.kind != meta["data"]["kind"]:
        raise UserError(f"{checkpoint} was trained on {meta['data']['name']} {tuple(meta['data']['shape'])}; "
                        f"'{dataset}' has examples of shape {data.info.shape}")
    with torch.no_grad():
        x_hat = model.reconstruct(data.test)  # every model takes data as stored
    kind = data.info.kind
    return save_reconstructions(picture(data.test, kind), picture(x_hat, kind), out)
