"""Does training under bf16 autocast change the final test numbers? Trains each model twice per
seed through `lvm run`'s own code path, once in float32 (`amp="off"`) and once under bf16
autocast (`amp="on"`), and writes every final test number, with the gap between the two paths
beside the gap between seeds (the noise the bf16 gap has to stay within).

On a GPU bf16 is the default fast path; on a CPU it is slower, but the same autocast mechanism
runs, so the numerics can be checked there too at a small budget:

    python benchmarks/bf16_numerics.py --device cpu --train-limit 4000 --epochs 3 --out figures/bf16/cpu.json
    python benchmarks/bf16_numerics.py --device cuda --out figures/bf16/cuda.json   # default budgets
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lvm import registry
from lvm.engine import pipeline as experiment

# model -> (dataset, the number compared, extra options)
RUNS = {
    "vae": ("fashion-mnist", "neg_elbo", {}),
    "vlae": ("fashion-mnist", "neg_elbo", {}),
    "vqvae": ("fashion-mnist", "loss", {"prior_epochs": 1}),
}


def compare(metric: str, float32: list[float], bf16: list[float]) -> dict:
    """The two paths' means over seeds, their difference, and the noise it is judged against:
    two standard errors of a difference of means, from the spread between seeds (pooled)."""
    n = len(float32)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    var = lambda v: sum((x - mean(v)) ** 2 for x in v) / (len(v) - 1) if len(v) > 1 else float("nan")  # noqa: E731
    two_se = 2 * ((var(float32) + var(bf16)) / n) ** 0.5
    diff = mean(bf16) - mean(float32)
    return {"metric": metric, "float32": float32, "bf16": bf16, "mean_float32": round(mean(float32), 5),
            "mean_bf16": round(mean(bf16), 5), "difference": round(diff, 5),
            "two_standard_errors": round(two_se, 5), "within_noise": abs(diff) <= two_se}


def summarise(runs: list[dict]) -> dict:
    """`compare` for every model among `runs`, on its metric, seeds in order."""
    out = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        key = RUNS[model][1]
        final = {amp: [r["test"][key] for r in runs if r["model"] == model and r["amp"] == amp] for amp in ("off", "on")}
        out[model] = compare(key, final["off"], final["on"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="figures/bf16/numerics.json")
    parser.add_argument("--models", nargs="+", default=list(RUNS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=None, help="[default: each model's]")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--summarise", metavar="FILE", help="only recompute the summary of FILE's runs")
    args = parser.parse_args()
    if args.summarise:
        result = json.loads(Path(args.summarise).read_text())
        result["summary"] = summarise(result["runs"])
        Path(args.summarise).write_text(json.dumps(result, indent=2) + "\n")
        return
    os.environ.setdefault("TQDM_DISABLE", "1")
    start, runs = time.perf_counter(), []
    for model in args.models:
        dataset, key, options = RUNS[model]
        for seed in args.seeds:
            for amp in ("off", "on"):
                with tempfile.TemporaryDirectory() as out:
                    m = experiment.train_row(registry.get(model), dataset, out=Path(out), train_limit=args.train_limit,
                                             test_limit=args.test_limit, download=False, overrides=options,
                                             epochs=args.epochs, seed=seed, device=args.device, amp=amp)
                runs.append({"model": model, "dataset": dataset, "seed": seed, "amp": amp, "test": m["test"],
                             "seconds": m["seconds"], "device": m["device"], "epochs": m["epochs"],
                             "train_size": m["config"]["train_size"]})
                print(f"{model} seed {seed} amp {amp:<3}: {key} {m['test'][key]:.4f} ({m['seconds']:.0f} s)", flush=True)
        s = summarise([r for r in runs if r["model"] == model])[model]
        print(f"{model}: bf16 - float32 = {s['difference']:+.4f} (mean over seeds), "
              f"noise (2 standard errors) {s['two_standard_errors']:.4f}", flush=True)
    summary = summarise(runs)
    result = {"seeds": args.seeds, "epochs": args.epochs, "train_limit": args.train_limit,
              "code": experiment.code_version(),
              "seconds": round(time.perf_counter() - start, 1), "summary": summary, "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
