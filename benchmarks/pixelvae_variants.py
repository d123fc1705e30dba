"""PixelVAE variants against their references at one small, equal budget (issue 23): does a
smaller receptive field, or free bits per latent dimension, make z carry more than its floor,
lower the -ELBO to the plain PixelCNN's NLL and the samples' FD below both references?

Each variant is an ordinary `lvm run` row (`lvm.engine.pipeline.train_row`: the same data,
trainer, seed, checkpoint and metrics.json as `python -m lvm run MODEL -o ...` at that budget);
only what happens after training differs, to keep a row to a few CPU minutes: no reconstruction
grid, the likelihood on the first `--eval-limit` test images (k importance samples for the
PixelVAE, exact for the PixelCNN), and `--samples` samples drawn once (seeded) that are both
samples.png and the images whose fd, precision and recall are measured against as many test
images (the dataset's cached classifier, `lvm.engine.quality`; FD falls with N: compare at equal
N only).

    python benchmarks/pixelvae_variants.py run default layers2 --runs /tmp/pv   # trains, one by one
    python benchmarks/pixelvae_variants.py collect --runs /tmp/pv \\
        --out figures/pixelvae/variants-fashion-mnist-binary.json

`run` may be started twice in parallel on different variants (one thread each); `collect` reads
the rows' metrics.json files into one JSON, numbers untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

from lvm import registry
from lvm.blocks.scaling import picture
from lvm.engine.evaluate import score_samples
from lvm.engine.pipeline import train_row
from lvm.engine.plotting import save_image_grid

DATASET = "fashion-mnist-binary"
# Every PixelVAE variant below changes the course's Q4b configuration, which was lvm's default
# when they were run: the course's 10-nat floor unless the variant sets its own (lvm's default
# floor is now 0, the `fb0` variant; lvm/pixelvae/model.py says why).
COURSE = {"pixelvae": {"free_bits": 10.0}}
# name -> (model, its config overrides): what each variant changes from the course's configuration
VARIANTS: dict[str, tuple[str, dict]] = {
    "default": ("pixelvae", {}),  # the course's configuration (the name it ran under)
    # the decoder's reach (rows above, columns either side of a pixel): 11 at the default 8 layers
    "layers4": ("pixelvae", {"n_layers": 4}),  # reach 7
    "layers2": ("pixelvae", {"n_layers": 2}),  # reach 5
    "layers1": ("pixelvae", {"n_layers": 1}),  # reach 4: the first 7x7 layer alone
    "reach3": ("pixelvae", {"n_layers": 2, "first_kernel": 3}),  # reach 3: a 3x3 first layer and one more
    "reach2": ("pixelvae", {"n_layers": 1, "first_kernel": 3}),  # reach 2: one 3x3 gated layer
    "fb0": ("pixelvae", {"free_bits": 0.0}),  # the course's decoder, the plain ELBO
    "fb5": ("pixelvae", {"free_bits": 5.0}),  # the course's decoder, half the course's floor
    "reach2_fb0": ("pixelvae", {"n_layers": 1, "first_kernel": 3, "free_bits": 0.0}),
    "reach2_fb5": ("pixelvae", {"n_layers": 1, "first_kernel": 3, "free_bits": 5.0}),
    # the floor itself: none (the plain ELBO), and twice the course's, on the cheap two-layer decoder
    "layers2_fb0": ("pixelvae", {"n_layers": 2, "free_bits": 0.0}),
    "layers2_fb20": ("pixelvae", {"n_layers": 2, "free_bits": 20.0}),
    # the decoder's input pixels hidden at random while training (word dropout), so it leans on z
    "dropout30": ("pixelvae", {"input_dropout": 0.3}),
    "layers2_dropout30": ("pixelvae", {"n_layers": 2, "input_dropout": 0.3}),
    "layers2_dropout60": ("pixelvae", {"n_layers": 2, "input_dropout": 0.6}),
    "fb_per_dim": ("pixelvae", {"free_bits_groups": 16}),  # 10 / 16 nats floor on each dimension
    "layers2_fb_per_dim": ("pixelvae", {"n_layers": 2, "free_bits_groups": 16}),
    "layers1_fb_per_dim": ("pixelvae", {"n_layers": 1, "free_bits_groups": 16}),
    # a KL warm-up: the KL term's weight rises from ~0 to 1 over the first 100 or 200 steps
    "kl_warmup100": ("pixelvae", {"kl_warmup": 100}),
    "kl_warmup200": ("pixelvae", {"kl_warmup": 200}),
    "vae": ("pixelvae", {"autoregressive": False}),  # the factorised decoder: the plain VAE
    "pixelcnn": ("pixelcnn", {}),  # the plain PixelCNN at its default size, no latent
    # the plain PixelCNN at the size of its results row (docs/results.md): a third of the default's
    # cost per step, for when the default's does not fit the time at hand
    "pixelcnn_small": ("pixelcnn", {"channels": 64, "layers": 5, "head_channels": 128, "embed_dim": 16}),
}


def cpu() -> dict:
    """The CPU's name and its vector flags (as benchmarks/prior_compare.py records them)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = lambda key: next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(key)), "")  # noqa: E731
    flags = [f for f in line("flags").split() if f.startswith(("avx", "fma", "amx"))]
    return {"cpu": line("model name") or platform.processor(), "cpus": os.cpu_count(), "flags": flags}


def scored_samples(n: int):
    """A `figures` hook: n samples (the pipeline seeds it), saved as samples.png and scored."""

    def draw(model, data, out, title) -> dict:
        start = time.perf_counter()
        x = model.sample(n)  # (n, C, H, W)
        seconds = time.perf_counter() - start
        save_image_grid(picture(x, data.info.kind), out / "samples.png", f"{title}: {n} samples")
        return {"sample_quality": {**score_samples(x, data, download=False), "sample_seconds": round(seconds, 1)}}

    return draw


def run(name: str, args: argparse.Namespace) -> None:
    model, changes = VARIANTS[name]
    overrides = {**COURSE.get(model, {}), **changes}
    spec = registry.get(model)
    how = replace(spec.evaluation, run_k=args.k, run_test_limit=args.eval_limit, run_samples=0)
    spec = replace(spec, figures=scored_samples(args.samples), evaluation=how)
    load = os.getloadavg()[0]  # other work on the machine slows a row: its seconds say so only with this
    metrics = train_row(spec, DATASET, out=Path(args.runs) / name, train_limit=args.train_limit,
                        test_limit=args.test_limit, overrides=overrides, overwrite=True, download=False,
                        epochs=args.epochs, device="cpu", cpu_threads=1, seed=args.seed)
    sets = " ".join(f"-o {k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in overrides.items())
    metrics["variant_of_script"] = {
        "name": name, "overrides": overrides, "load_average_1min": [load, os.getloadavg()[0]], "command": "python " + shlex.join(sys.argv),
        "lvm_run": (f"python -m lvm run {model} --dataset {DATASET} --train-limit {args.train_limit} "
                    f"--test-limit {args.test_limit} --epochs {args.epochs} --seed {args.seed} {sets}").strip(),
    }
    (Path(metrics.pop("out")) / "variant.json").write_text(json.dumps(metrics, indent=1))
    print(name, json.dumps({"test": metrics["test"], "eval": metrics["eval"], "seconds": metrics["seconds"],
                            **metrics["sample_quality"]}))


def collect(args: argparse.Namespace) -> None:
    """Every row under --runs into one JSON: each variant's command, config, budget, seconds,
    test numbers and evaluation, with the machine; its samples.png into a folder named as the JSON."""
    pictures = Path(args.out).with_suffix("")  # each row's samples.png beside the JSON
    pictures.mkdir(parents=True, exist_ok=True)
    rows = {name: r for name in VARIANTS if (r := row(Path(args.runs) / name, pictures / f"{name}_samples.png"))}
    report = {"what": __doc__.split("\n\n")[0].replace("\n", " "), "dataset": DATASET, "machine": cpu(),
              "variants": rows}
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    shown = [n for n in args.show or rows if n in rows and rows[n]["eval"] is not None]
    if shown:
        print("samples side by side ->", side_by_side({n: rows[n] for n in shown}, pictures,
                                                      Path(args.out).with_suffix(".png")))
    print(f"{len(rows)} variants -> {args.out}")
    print(table(rows))


def side_by_side(rows: dict, pictures: Path, path: Path) -> Path:
    """One figure: each row's samples.png (as `collect` copied it) in a panel titled with its
    numbers, so the eye and the numbers can be read together."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(rows))
    lines = -(-len(rows) // cols)
    fig, axes = plt.subplots(lines, cols, figsize=(5.2 * cols, 6.0 * lines), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, (name, r) in zip(axes.flat, rows.items()):
        t, e = r["test"], r["eval"]
        kl = f"KL {t['kl_loss']:.1f}, " if "kl_loss" in t else ""
        ax.imshow(plt.imread(pictures / f"{name}_samples.png"), interpolation="nearest")
        ax.set_title(f"{name}\n{kl}nll {e['nll']:.1f}, fd {e['fd']:.1f} (N {e['samples']})", fontsize=13)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)
    return path


def row(folder: Path, picture_to: Path) -> dict | None:
    """One variant's record from its folder; a row whose training ended but whose samples and
    likelihood were not (stopped at a deadline) gives its last test numbers from history.json."""
    path = folder / "variant.json"
    if not path.is_file():
        if not (folder / "history.json").is_file():
            return None
        test = {k: v[-1] for k, v in json.loads((folder / "history.json").read_text())["test"].items()}
        return {"unfinished": "trained, then stopped before its samples and nll (the deadline)", "test": test,
                "eval": None}
    m = json.loads(path.read_text())
    v = m["variant_of_script"]
    shutil.copyfile(folder / "samples.png", picture_to)
    return {
        "command": v["command"], "same_training_as": v["lvm_run"], "model": m["model"],
        "overrides": v["overrides"], "config": m["config"], "epochs": m["epochs"],
        "seconds": m["seconds"], "test": m["test"], "eval": {**m["eval"], **m["sample_quality"]},
        "device": m["device"], "load_average_1min_at_start_and_end": v["load_average_1min"],
        "precision": m["precision"], "cpu_flags": m["cpu_flags"], "torch": m["torch"], "code": m["code"],
    }


def table(rows: dict) -> str:
    """A markdown table of the rows: KL and -ELBO on the run's test images (the PixelCNN's exact
    NLL there, nats per image), the evaluation's nll, fd, precision, recall, and seconds."""
    out = ["| variant | KL | -ELBO (test) | nll | fd | precision | recall | train s | sample s |",
           "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        t, e = r["test"], r["eval"]
        kl = f"{t['kl_loss']:.2f}" if "kl_loss" in t else "-"
        bound = t["neg_elbo"] if "neg_elbo" in t else t["nll"] * 28 * 28  # the PixelCNN reports nats per pixel (28 x 28)
        if e is None:
            out.append(f"| {name} | {kl} | {bound:.2f} | (unfinished) | | | | | |")
            continue
        out.append(f"| {name} | {kl} | {bound:.2f} | {e['nll']:.2f} | {e['fd']:.1f} | {e['precision']:.2f} | "
                   f"{e['recall']:.2f} | {r['seconds']:.0f} | {e['sample_seconds']:.0f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("run", "collect"))
    p.add_argument("variants", nargs="*", help=f"for run: the variants, in turn ({', '.join(VARIANTS)})")
    p.add_argument("--runs", default="/tmp/pv", help="the folder of the rows (one per variant)")
    p.add_argument("--out", default=f"figures/pixelvae/variants-{DATASET}.json")
    p.add_argument("--train-limit", type=int, default=5000)
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="for run: the rows' seed (data order, initialisation, samples)")
    p.add_argument("--k", type=int, default=10, help="importance samples per test image (the PixelVAE's nll)")
    p.add_argument("--eval-limit", type=int, default=100, help="test images whose nll is measured")
    p.add_argument("--show", nargs="*", help="for collect: the variants side by side in the .png (default: all)")
    p.add_argument("--samples", type=int, default=100, help="samples for samples.png and fd/precision/recall")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        p.error(f"no variant {', '.join(unknown)}; the variants: {', '.join(VARIANTS)}")
    if args.what == "collect":
        collect(args)
    for name in args.variants if args.what == "run" else ():
        run(name, args)


if __name__ == "__main__":
    main()
