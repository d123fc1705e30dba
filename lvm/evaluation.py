"""`lvm eval`: score a trained model (a checkpoint) or a file of images, and write the numbers to
a JSON file. The math is in `lvm.engine.evaluate` (likelihoods) and `lvm.engine.quality` (sample
metrics); this module finds the model's spec and its data, and records what was measured."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import click
import torch

from lvm import read_trained, registry
from lvm.engine import data as datasets
from lvm.engine import quality
from lvm.engine.evaluate import evaluate, summary
from lvm.engine.errors import UserError
from lvm.engine.pipeline import describe_device, load_model
from lvm.engine.train import resolve_device


def _write(path: Path, numbers: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(numbers, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def evaluate_checkpoint(checkpoint: str | Path, *, k: int | None = None, samples: int | None = None,
                        test_limit: int | None = None, data_dir: str | Path | None = None, device: str | None = None,
                        json_path: str | Path | None = None, seed: int = 0, download: bool = True) -> dict[str, Any]:
    """Evaluate a trained model on its dataset's test split (see `lvm.engine.evaluate.evaluate`),
    write the numbers to `json_path` (default: eval.json beside the checkpoint) and return them
    with "line", the one results line, and "json", where they went."""
    checkpoint = Path(checkpoint)
    spec, state = read_trained(checkpoint)
    model, meta = load_model(spec, checkpoint, state=state)
    dev = resolve_device(device or "auto")
    model.to(dev)
    dataset = meta["data"]["name"]
    data = datasets.load(dataset, data_dir, train_limit=1, download=download)
    if data.info.shape != tuple(meta["data"]["shape"]):
        raise UserError(f"{checkpoint} was trained on {dataset} of shape {tuple(meta['data']['shape'])}; "
                        f"the data dir's has {data.info.shape}")
    start = time.perf_counter()
    numbers = evaluate(model, data, spec.evaluation, k=k, samples=samples, test_limit=test_limit,
                       data_dir=data_dir, device=dev, seed=seed, download=download)
    numbers = {"model": spec.name, "dataset": dataset, "variant": meta.get("variant"), "checkpoint": str(checkpoint),
               **numbers, "device": describe_device(dev), "seconds": round(time.perf_counter() - start, 1),
               "torch": torch.__version__}
    out = Path(json_path) if json_path else checkpoint.parent / "eval.json"
    _write(out, numbers)
    return {**numbers, "line": summary(numbers), "json": str(out)}


def score_images(dataset: str, images: str | Path, *, data_dir: str | Path | None = None,
                 json_path: str | Path | None = None, download: bool = True) -> dict[str, Any]:
    """fd, precision and recall of the images in FILE.npz (array `images`) against as many test
    images of `dataset`, as pytorch-fid's command line scores a folder."""
    data = datasets.load(dataset, data_dir, train_limit=1, download=download)
    if data.info.kind == "points":
        raise UserError(f"'{dataset}' holds points, not images: the sample metrics are for images")
    fake = quality.read_images(images, data.info.kind, data.info.shape)
    clf, acc = quality.classifier(dataset, data_dir, download=download)
    n = min(len(fake), len(data.test))
    numbers = {"dataset": dataset, "images": str(images),
               **quality.sample_quality(clf, fake[:n], data.test[:n]), "classifier_accuracy": acc}
    out = Path(json_path) if json_path else Path(images).with_suffix(".eval.json")
    _write(out, numbers)
    line = (f"fd {numbers['fd']:.3f}, precision {numbers['precision']:.3f}, recall {numbers['recall']:.3f} "
            f"({n} images against {n} test images of {dataset}; classifier accuracy {acc:.3f})")
    return {**numbers, "line": line, "json": str(out)}


def defaults_help() -> str:
    """Each model's default k, test examples and samples, for `lvm eval --help`."""
    rows = []
    for name in registry.names():
        try:
            how = registry.get(name).evaluation
        except Exception:  # a broken plugin must not break --help
            continue
        k = f"k={how.k}" if how.likelihood == "iwae" else how.likelihood
        rows.append(f"  {name}: {k}, test examples {how.test_limit or 'all'}, samples {how.samples}")
    return "\n".join(rows)


# ----------------------------------------------------------------------------- the command


def _help() -> str:
    return f"""Evaluate a trained model, or score a file of images.

\b
lvm eval --checkpoint PATH: on the test split of the dataset the model trained on,
  nll     -log p(x), nats per example: importance-sampled with k draws per example (the IWAE
          bound, Burda et al. 2015) where the model has an encoder q(z | x), exact where it is
          autoregressive, else the model's own bound (as recon + prior NLL of discrete codes);
  elbo    the -ELBO on the same examples; bits_per_dim = nll / (D ln 2);
  fd, precision, recall of `samples` samples against as many test images, in the features of
          a small classifier lvm trains on the dataset's labels (cached in the data dir; its
          test accuracy is recorded beside them). FD falls with N: compare at equal N only.
lvm eval --dataset NAME --images FILE.npz: fd, precision and recall of the uint8 array `images`
  (N x H x W x C or N x C x H x W) against the test set.

\b
Defaults per model (a few CPU minutes each, after the classifier's first training):
{defaults_help()}

How each decoder is a likelihood over the data's levels: docs/evaluation.md."""


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


def _samples(ctx, param, value):
    if value is not None and value < 0:
        raise click.BadParameter(f"must be at least 0, got {value}")
    return value


def _command():
    from lvm.cli import data_dir_option, device_option, download_option

    @click.command(help=_help())
    @click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="A run's checkpoint.pt.")
    @click.option("-k", "k", type=int, default=None, callback=_positive,
                  help="Importance samples per test example [default: the model's, below].")
    @click.option("--samples", type=int, default=None, callback=_samples,
                  help="Samples for fd/precision/recall; 0 skips them [default: the model's, below].")
    @click.option("--test-limit", type=int, default=None, callback=_positive,
                  help="Score the first N test examples [default: the model's, below].")
    @click.option("--dataset", default=None, help="With --images: the dataset to score them against.")
    @click.option("--images", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="With --dataset: FILE.npz holding a uint8 array `images`.")
    @click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Where to write the numbers [default: eval.json beside the checkpoint, or FILE.eval.json].")
    @click.option("--seed", type=int, default=0, show_default=True, help="Random seed of the draws and samples.")
    @data_dir_option
    @device_option
    @download_option
    def eval_(checkpoint, k, samples, test_limit, dataset, images, json_path, seed, data_dir, device, download):
        if checkpoint is not None and (dataset or images):
            raise click.UsageError("give --checkpoint, or --dataset with --images, not both")
        if checkpoint is not None:
            numbers = evaluate_checkpoint(checkpoint, k=k, samples=samples, test_limit=test_limit, data_dir=data_dir,
                                          device=device, json_path=json_path, seed=seed, download=download)
        elif dataset and images:
            numbers = score_images(dataset, images, data_dir=data_dir, json_path=json_path, download=download)
        else:
            raise click.UsageError("give --checkpoint PATH, or --dataset NAME --images FILE.npz")
        click.echo(numbers["line"])
        click.echo(f"wrote {numbers['json']}")

    return eval_


command = _command()
