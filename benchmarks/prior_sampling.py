"""Seconds to sample 100 8x8 code grids (levels 128) from each prior at its default (course)
size, untrained: the plain PixelCNN, the Gated PixelCNN, and the transformer prior with its
key/value cache. "gated (windowed, before)" is the Gated PixelCNN sampled the way it was before
its vertical stack was cached per row (one pass over the window its reach sees, per position,
`GridModel.row_logits`), to measure that change in the same process.

All priors run in one process, in interleaved repeats (the order rotates every repeat), for each
thread count, so a change in the machine's load hits all of them alike; the JSON keeps every
repeat and the median.

    OMP_NUM_THREADS=1 python benchmarks/prior_sampling.py --threads 1 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from lvm.pixelcnn.model import GridModel
from lvm.vqvae.model import make_prior
from lvm.vqvae.transformer import TransformerPrior, TransformerPriorConfig

LEVELS, SHAPE, N = 128, (8, 8), 100


def cpu_info() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = lambda key: next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(key)), "")  # noqa: E731
    flags = [f for f in line("flags").split() if f.startswith(("avx", "fma", "amx", "sse4"))]
    return {"cpu": line("model name") or platform.processor(), "flags": flags, "cores": os.cpu_count()}


def priors() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    gated = make_prior("gated", LEVELS)
    before = make_prior("gated", LEVELS)
    before.load_state_dict(gated.state_dict())
    # the instance attribute shadows GatedPixelCNN.row_logits: the windowed sampler of before
    before.row_logits = types.MethodType(GridModel.row_logits, before)
    models = {
        "pixelcnn": make_prior("pixelcnn", LEVELS),
        "gated": gated,
        "gated (windowed, before)": before,
        "transformer": TransformerPrior(TransformerPriorConfig(levels=LEVELS, shape=SHAPE)),
    }
    return {name: m.eval() for name, m in models.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="figures/vqvae/prior_sampling-cpu.json")
    args = parser.parse_args()
    models = priors()
    names = list(models)
    report = {
        "what": f"seconds to sample {N} grids of {SHAPE[0]}x{SHAPE[1]} codes, {LEVELS} levels, default-size priors, untrained",
        **cpu_info(),
        "torch": torch.__version__,
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "repeats": args.repeats,
        "threads": {},
        "command": "OMP_NUM_THREADS=" + os.environ.get("OMP_NUM_THREADS", "") + " python " + shlex.join(sys.argv),
    }
    results = report["threads"]
    for threads in args.threads:
        torch.set_num_threads(threads)
        for m in models.values():  # one untimed warm-up each: allocator, kernels chosen
            m.sample(2, SHAPE)
        times: dict[str, list[float]] = {name: [] for name in names}
        same = True
        for r in range(args.repeats):
            drawn = {}
            for name in names[r % len(names):] + names[: r % len(names)]:
                torch.manual_seed(r)
                start = time.perf_counter()
                drawn[name] = models[name].sample(N, SHAPE)  # (100, 8, 8)
                times[name].append(round(time.perf_counter() - start, 3))
                print(f"threads {threads} repeat {r} {name}: {times[name][-1]} s", flush=True)
            same &= torch.equal(drawn["gated"], drawn["gated (windowed, before)"])
        median = {name: statistics.median(t) for name, t in times.items()}
        results[str(threads)] = {
            "seconds_median": median,
            "seconds_all": times,
            "gated_before_over_after": round(median["gated (windowed, before)"] / median["gated"], 2),
            "gated_before_over_transformer": round(median["gated (windowed, before)"] / median["transformer"], 2),
            "gated_over_transformer": round(median["gated"] / median["transformer"], 2),
            # the same seed through both gated samplers: the cache changes the cost, not the draws
            "gated_same_samples_before_and_after": same,
            # the machine is shared: how busy it was when this thread count finished
            "load_average_1_5_15_min": [round(v, 2) for v in os.getloadavg()],
        }
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")  # after each thread count
    print(json.dumps({t: r["seconds_median"] for t, r in results.items()}, indent=2))


if __name__ == "__main__":
    main()
