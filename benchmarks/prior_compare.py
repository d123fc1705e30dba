"""The three priors over the SAME VQ-VAE codes, at equal epochs: the plain PixelCNN (course Q3),
the Gated PixelCNN (Q4a) and the transformer prior (`lvm.vqvae.transformer`): the README's
table of priors, at a small CPU budget, written to figures/vqvae/priors-DATASET.json with the
three priors' samples side by side in figures/vqvae/priors-DATASET.png.

The VQ-VAE (the course's, `VQVAEConfig` defaults) is trained once with the one trainer and the
codes of train and test are saved to `--codes`; a later call with the same file reuses them, so
variants added later (`--append`) are trained on exactly the same grids. Every prior then trains
with the same TrainConfig (batch 128, Adam 1e-3 constant, clip 1: what `lvm run vqvae` gives its
prior). Reported per prior: test NLL after every epoch (nats per code, and bits), the last
epoch's mean training loss, parameters, training seconds, seconds to sample 100 grids, and the
quality of `--samples` samples decoded by the same VQ-VAE: fd, precision and recall against as
many test images, in the features of the dataset's own classifier (`lvm.engine.quality`, whose
test accuracy is recorded beside them). The FD is biased by N: compare priors only at equal N.

    python benchmarks/prior_compare.py                      # the three priors at course sizes
    python benchmarks/prior_compare.py --append --priors transformer:dropout=0.1 \\
        transformer:n_layer=12,d_model=192,n_head=6        # variants, on the same codes

A prior is `kind` or `kind:field=value,...` with fields of its config (make_prior's overrides
for pixelcnn and gated; TransformerPriorConfig's for transformer), optionally followed by
`@field=value,...` with fields of its TrainConfig (the schedule of that prior alone):

    python benchmarks/prior_compare.py --append --priors transformer@lr_schedule=cosine,warmup=5
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from lvm.engine import data as datasets
from lvm.engine import quality
from lvm.engine.evaluate import score_samples
from lvm.engine.train import TrainConfig, fit
from lvm.vqvae.model import make_prior
from lvm.vqvae import codebook_usage, encode_all
from lvm.vqvae.model import VQVAE, VQVAEConfig
from lvm.vqvae.transformer import TransformerPrior, TransformerPriorConfig


def cpu_flags() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    line = lambda key: next((l.split(":", 1)[1].strip() for l in info.splitlines() if l.startswith(key)), "")  # noqa: E731
    flags = [f for f in line("flags").split() if f.startswith(("avx", "fma", "amx"))]
    return {"cpu": line("model name") or platform.processor(), "flags": flags}


def parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def fields(text: str) -> dict:
    return {k: parse_value(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}


def training(spec: str, base: TrainConfig) -> TrainConfig:
    """The TrainConfig of one prior: `base` changed by the fields after the spec's `@`."""
    cfg = replace(base, **fields(spec.partition("@")[2]))
    cfg.validate()
    return cfg


def build(spec: str, levels: int, shape: tuple[int, int]) -> torch.nn.Module:
    kind, _, rest = spec.partition("@")[0].partition(":")
    overrides = fields(rest)
    if kind == "transformer":
        return TransformerPrior(TransformerPriorConfig(levels=levels, shape=shape, **overrides))
    return make_prior(kind, levels, **overrides)


def trained_vqvae(args, data) -> tuple[VQVAE, dict]:
    """The VQ-VAE whose codes the priors learn, and how it was trained: the first stage of the
    row `--vqvae-checkpoint` (an `lvm run vqvae` checkpoint), else one trained here."""
    if args.vqvae_checkpoint:
        import lvm

        model, meta = lvm.load_model(args.vqvae_checkpoint)
        return model.vqvae.eval(), {"checkpoint": args.vqvae_checkpoint}
    torch.manual_seed(0)
    vqvae = VQVAE(VQVAEConfig(channels=data.info.channels))
    start = time.perf_counter()
    history = fit(vqvae, data.train[: args.vqvae_train], data.test,
                  TrainConfig(epochs=args.vqvae_epochs, grad_clip=1.0, device="cpu"), desc="vqvae")
    return vqvae, {"images": args.vqvae_train, "epochs": args.vqvae_epochs,
                   "seconds": round(time.perf_counter() - start, 1), "test": {k: v[-1] for k, v in history.test.items()}}


def get_codes(args) -> dict:
    path = Path(args.codes)
    if path.exists():
        saved = torch.load(path, weights_only=False)
        if saved["setup"] != setup(args):
            sys.exit(f"{path} holds codes of another setup {saved['setup']}; pass another --codes")
        return saved
    data = datasets.load(args.dataset, train_limit=args.train_limit, test_limit=args.test_limit, download=False)
    vqvae, trained = trained_vqvae(args, data)
    train, test = encode_all(vqvae, data.train), encode_all(vqvae, data.test)  # (N, 8, 8) each
    saved = {"setup": setup(args), "train": train, "test": test, "vqvae": {
        **trained, "test_codebook": codebook_usage(test, vqvae.cfg.num_codes), "num_codes": vqvae.cfg.num_codes},
        "vqvae_state": vqvae.state_dict(), "vqvae_config": asdict(vqvae.cfg), "channels": data.info.channels}
    torch.save(saved, path)
    return saved


def side_by_side(drawn: dict, path: Path, dataset: str) -> Path:
    """One figure: each prior's 100 samples (decoded by the same VQ-VAE) in a panel of its own."""
    from torchvision.utils import make_grid

    from lvm.blocks.scaling import from_unit

    shown = {}
    for name, (images, nll, params) in drawn.items():
        grid = make_grid(from_unit(images.float()), nrow=10, padding=2, pad_value=1.0)  # (C, H, W)
        shown[f"{name}: {nll:.4f} nats/code, {params / 1e6:.2f} M parameters"] = grid.permute(1, 2, 0).numpy()
    return panels(shown, path, f"VQ-VAE on {dataset}: 100 samples from each prior, trained on the same codes")


def panels(shown: dict, path: Path, title: str) -> Path:
    """One figure of images (H, W, C) side by side, each under its own title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(shown), figsize=(6.2 * len(shown), 6.8))
    for ax, (name, image) in zip(list(axes) if len(shown) > 1 else [axes], shown.items()):
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=12)
        ax.axis("off")
    fig.suptitle(title, fontsize=14)
    fig.tight_layout(rect=(0, 0, 1, 0.96))  # room for the title
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def decoded_quality(prior, vqvae, shape: tuple[int, int], scoring: dict, n: int, batch: int = 100,
                    seed: int = 1) -> dict:
    """fd, precision and recall of n grids drawn from `prior` and decoded by `vqvae`, against the
    first n test images, with the dataset classifier's accuracy and the seconds it took."""
    data, clf, accuracy = scoring["data"], scoring["classifier"], scoring["accuracy"]
    start = time.perf_counter()
    torch.manual_seed(seed)
    with torch.no_grad():
        fake = torch.cat([vqvae.decode(prior.sample(min(batch, n - i), shape)) for i in range(0, n, batch)])
    return {**score_samples(fake, data, (clf, accuracy)), "quality_seconds": round(time.perf_counter() - start, 1)}


def scorer(dataset: str, n: int) -> dict:
    """What every score needs, read once: the first 2n test images and the dataset's classifier."""
    clf, accuracy = quality.classifier(dataset)
    return {"data": datasets.load(dataset, test_limit=2 * n, download=False), "classifier": clf, "accuracy": accuracy}


def floors(vqvae, scoring: dict, n: int, batch: int = 100) -> dict:
    """What no prior can beat, in the same features and at the same n as its samples: the FD of
    n other test images (the metric's own noise at this n), and of the VQ-VAE's reconstructions
    of them (its decoder's blur: samples drawn from a perfect prior decode no better), each
    against the first n test images."""
    data, clf, accuracy = scoring["data"], scoring["classifier"], scoring["accuracy"]
    other = data.test[n : 2 * n]
    with torch.no_grad():
        recon = torch.cat([quality.as_stored(vqvae.decode(vqvae.encode(other[i : i + batch])), data.info.kind,
                                             data.info.shape) for i in range(0, len(other), batch)])
    return {"real": quality.sample_quality(clf, other, data.test[:n]),
            "reconstructions": quality.sample_quality(clf, recon, data.test[:n]), "classifier_accuracy": accuracy}


def setup(args) -> dict:
    if args.vqvae_checkpoint:
        return {"dataset": args.dataset, "train_limit": args.train_limit, "test_limit": args.test_limit,
                "vqvae_checkpoint": args.vqvae_checkpoint}
    return {"dataset": args.dataset, "train_limit": args.train_limit, "test_limit": args.test_limit,
            "vqvae_train": args.vqvae_train, "vqvae_epochs": args.vqvae_epochs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--train-limit", type=int, default=5000, help="training grids for the priors")
    parser.add_argument("--test-limit", type=int, default=1000)
    parser.add_argument("--vqvae-train", type=int, default=5000, help="images the VQ-VAE trains on")
    parser.add_argument("--vqvae-epochs", type=int, default=2)
    parser.add_argument("--vqvae-checkpoint", default=None,
                        help="take the VQ-VAE of this `lvm run vqvae` checkpoint instead of training one")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of every prior")
    parser.add_argument("--samples", type=int, default=500, help="samples scored by fd/precision/recall (0: none)")
    parser.add_argument("--sample-seeds", type=int, default=1,
                        help="score samples drawn with seeds 1..S; S > 1 adds each seed's fd, their mean and sd "
                             "(the FD's noise from the draw alone)")
    parser.add_argument("--priors", nargs="+", default=["pixelcnn", "gated", "transformer"])
    parser.add_argument("--codes", default="/tmp/lvm-prior-compare-codes.pt")
    parser.add_argument("--out", default=None, help="default: figures/vqvae/priors-compare-DATASET.json")
    parser.add_argument("--append", action="store_true", help="add to the priors already in --out")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    out = Path(args.out or f"figures/vqvae/priors-{args.dataset}.json")
    codes = get_codes(args)
    train, test = codes["train"], codes["test"]  # (N, 8, 8) int64
    levels, shape = codes["vqvae"]["num_codes"], tuple(train.shape[1:])
    report = json.loads(out.read_text()) if args.append and out.exists() else {}
    if report and report["setup"] != setup(args):
        sys.exit(f"{out} holds another setup; drop --append or pass another --out")
    report.update({
        "what": "three priors trained on the same VQ-VAE codes for the same epochs (CPU)",
        "setup": setup(args), "vqvae": codes["vqvae"], "train_grids": len(train), "test_grids": len(test),
        "device": f"cpu ({torch.get_num_threads()} threads)", **cpu_flags(), "torch": torch.__version__,
    })
    report.setdefault("priors", {})
    report.setdefault("commands", []).append("python " + shlex.join(sys.argv))
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=1e-3, grad_clip=1.0, device="cpu")
    vqvae, drawn = None, {}
    if "vqvae_state" in codes:  # codes saved by this version also keep the VQ-VAE, to decode samples
        vqvae = VQVAE(VQVAEConfig(**codes.get("vqvae_config", {"channels": codes["channels"]})))
        vqvae.load_state_dict(codes["vqvae_state"])
        vqvae.eval()
    scoring = scorer(args.dataset, args.samples) if vqvae is not None and args.samples else None
    if scoring and report.get("floors", {}).get("samples") != args.samples:
        report["floors"] = {"samples": args.samples, **floors(vqvae, scoring, args.samples)}
        print("floors", report["floors"], flush=True)
    for spec in args.priors:
        torch.manual_seed(0)
        model = build(spec, levels, shape)
        start = time.perf_counter()
        prior_cfg = training(spec, cfg)
        history = fit(model, train, test, prior_cfg, desc=spec)
        seconds = time.perf_counter() - start
        model.eval()
        start = time.perf_counter()
        grids = model.sample(100, shape)  # (100, 8, 8)
        sample_seconds = time.perf_counter() - start
        if vqvae is not None:
            drawn[spec] = (vqvae.decode(grids), nll[-1] if (nll := history.test["loss"]) else None,
                           sum(p.numel() for p in model.parameters()))
        nll = history.test["loss"]
        per_epoch = math.ceil(len(train) / prior_cfg.batch_size)
        report["priors"][spec] = {
            "config": {k: v for k, v in vars(model.cfg).items()},
            "train": {k: v for k, v in asdict(prior_cfg).items() if k in ("batch_size", "lr", "grad_clip", "lr_schedule", "warmup")},
            "parameters": sum(p.numel() for p in model.parameters()),
            "test_nll_nats": nll[-1], "test_nll_bits": nll[-1] / math.log(2),
            "test_nll_by_epoch": [round(v, 4) for v in nll],
            "train_loss_last_epoch": sum(history.train["loss"][-per_epoch:]) / per_epoch,
            "epochs": prior_cfg.epochs, "train_seconds": round(seconds, 1), "sample_100_seconds": round(sample_seconds, 2),
        }
        if vqvae is not None and args.samples:
            report["priors"][spec].update(decoded_quality(model, vqvae, shape, scoring, args.samples))
            if args.sample_seeds > 1:  # seed 1 is the row above; the others only for the spread
                fds = [report["priors"][spec]["fd"]] + [
                    decoded_quality(model, vqvae, shape, scoring, args.samples, seed=s)["fd"]
                    for s in range(2, args.sample_seeds + 1)]
                report["priors"][spec].update({"fd_by_seed": [round(f, 2) for f in fds],
                                               "fd_mean": statistics.mean(fds), "fd_sd": statistics.stdev(fds)})
        print(spec, report["priors"][spec], flush=True)
        out.write_text(json.dumps(report, indent=2, default=list) + "\n")  # after each prior: partial runs count
    if drawn and not args.append:  # the figure shows the priors of one call side by side
        report["samples_png"] = str(side_by_side(drawn, out.with_suffix(".png"), args.dataset))
        out.write_text(json.dumps(report, indent=2, default=list) + "\n")


if __name__ == "__main__":
    main()
