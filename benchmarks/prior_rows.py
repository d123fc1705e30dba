"""The priors compared as `lvm run` trains them: results rows that share one VQ-VAE (as `lvm table`
trains a variant row, reusing the plain row's finished VQ-VAE), collected into
figures/vqvae/priors-DATASET-SUFFIX.json with their samples side by side in the .png beside it.

Each RUN is a run folder (metrics.json, samples.png); its prior's test NLL, schedule, parameters
and seconds come from metrics.json, and its fd, precision and recall from `lvm eval` files given
with --evals (any number per run, one per sample seed: `lvm eval --checkpoint RUN/checkpoint.pt
--samples 500 --seed S --json DIR/NAME-sS.json`, NAME the run folder's name), as mean +- sd.

    python benchmarks/prior_rows.py runs/vqvae/shapes-plain runs/vqvae/shapes-gated \\
        runs/vqvae/shapes-transformer --evals /tmp/evals --out figures/vqvae/priors-shapes-4000.json

Nothing is trained here: the numbers are those the runs and evaluations wrote.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def label(metrics: dict) -> str:
    model = metrics["config"]["model"]
    name = f"{model.get('prior', 'pixelcnn')} ({metrics['stage_epochs'].get('prior')} epochs)"
    if model.get("prior_lr_schedule", "constant") != "constant":
        name += f", warm-up {model.get('prior_warmup', 0)} + {model['prior_lr_schedule']}"
    return name


def collect(run: Path, evals: Path | None) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    row = {
        "run": str(run),
        "prior": label(metrics),
        "config": metrics["config"]["model"],
        "train": {k: metrics["config"]["train"].get(k) for k in ("batch_size", "lr", "grad_clip", "seed")},
        "prior_epochs": metrics["stage_epochs"].get("prior"),
        "test_nll_nats": metrics["test"]["prior_nll"],
        "vqvae_test_loss": metrics["test"]["loss"],
        "codes_used": metrics["test"].get("codes_used"),
        "seconds": metrics["seconds"],
        "device": metrics["device"],
        "code": metrics.get("code"),
    }
    found = sorted(evals.glob(f"{run.name}-s*.json")) if evals else []
    if found:
        scores = [json.loads(f.read_text()) for f in found]
        fds = [s["fd"] for s in scores]
        row.update(fd=fds, fd_mean=statistics.fmean(fds), fd_sd=statistics.stdev(fds) if len(fds) > 1 else 0.0,
                   precision=statistics.fmean(s["precision"] for s in scores),
                   recall=statistics.fmean(s["recall"] for s in scores),
                   samples=scores[0]["samples"], eval_files=[str(f) for f in found])
    return row


def side_by_side(rows: list[dict], path: Path, dataset: str) -> None:
    import matplotlib.pyplot as plt

    from prior_compare import panels  # this script's neighbour in benchmarks/

    shown = {}
    for row in rows:
        fd = f", fd {row['fd_mean']:.0f}" if "fd_mean" in row else ""
        shown[f"{row['prior']}: {row['test_nll_nats']:.4f} nats/code{fd}"] = plt.imread(Path(row["run"]) / "samples.png")
    panels(shown, path, f"VQ-VAE on {dataset}: each prior's end-of-run samples, trained on the same codes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--evals", type=Path, help="folder of `lvm eval` files named RUN-sSEED.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    rows = [collect(run, args.evals) for run in args.runs]
    losses = {round(r["vqvae_test_loss"], 6) for r in rows}
    if len(losses) != 1:
        parser.error(f"the runs do not share one VQ-VAE (test losses {sorted(losses)})")
    dataset = json.loads((args.runs[0] / "metrics.json").read_text())["dataset"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    side_by_side(rows, args.out.with_suffix(".png"), dataset)
    report = {"what": "priors trained by `lvm run` on one VQ-VAE's codes, same epochs and seed", "dataset": dataset,
              "priors": rows, "samples_png": str(args.out.with_suffix(".png"))}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    for r in rows:
        fd = f"fd {r['fd_mean']:.1f} +- {r['fd_sd']:.1f}" if "fd_mean" in r else "no fd"
        print(f"{r['prior']:<32} NLL {r['test_nll_nats']:.4f}  {fd}  {r['seconds']:.0f} s")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
