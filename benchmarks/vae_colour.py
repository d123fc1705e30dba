"""Why the course's image VAE (Kingma & Welling 2013) reconstructs `shapes` in grey (issue 12).

Trains `lvm.vae.model.VAE` (the course's architecture and loss) on a slice of `shapes` with the
shared trainer and measures what the latent holds, for one training variant per run:

    course      the course's objective, recon + KL, from the first step
    ae          recon only (beta = 0): no KL at all, an upper bound on what the net can learn
    warmup      recon + beta * KL with beta rising linearly from 0 to 1 over `--warmup` steps
                (Bowman et al. 2016, "Generating Sentences from a Continuous Space"; Sonderby
                et al. 2016, "Ladder Variational Autoencoders")

and, on top of any variant, a change to the network (the course's is `--init default --norm none`):

    --init he          He et al. 2015 initialisation (variance-preserving for ReLU), biases 0
    --norm batch       a BatchNorm (Ioffe & Szegedy 2015) between every hidden conv and its ReLU,
                       what `lvm.vae` now does by default (`VAEConfig.norm`)
    --norm meanonly    only the centring of BatchNorm (Salimans & Kingma 2016), no rescaling
    --norm group       GroupNorm with one group: normalised per image, not across the batch
    --norm-where       encoder, decoder or both (the default)

The metric (issue 12): the background colour error. In `make_shapes` every background channel is
drawn in [0, 90] and every shape channel in [110, 255], so a pixel is background exactly when
its largest channel is below 100. The true background colour of an image is the colour of those
pixels (all equal); the reconstructed one is the mean of the reconstruction over the same pixels.
The error is |reconstructed - true| on the [0, 255] scale, averaged over channels and test
images. It is split into luminance (the mean of the three channels) and chroma (each channel
minus that mean), because "grey" means the chroma is lost. Reconstructions are the decoder mean
at the posterior mean, as `VAE.reconstruct` (and the course) make them.

What the latent holds: the KL of each dimension on the test set, its activity Var_x(E_q[z_d])
(Burda et al. 2016; active when above 0.01), and a linear probe (least squares from the
posterior means of 4,000 training images to their background colour) scored by R^2 on the test
set for luminance and chroma: whether the encoder carries colour at all, whatever the decoder
does with it.

    OMP_NUM_THREADS=1 python benchmarks/vae_colour.py --variant course --train-limit 8000 \
        --epochs 4 --out figures/colour/course-8000x4.json
    OMP_NUM_THREADS=1 python benchmarks/vae_colour.py --norm batch --train-limit 20000 \
        --epochs 4 --out figures/colour/norm-batch-20000x4.json
    python benchmarks/vae_colour.py --checkpoint runs/vae/shapes/checkpoint.pt \
        --out figures/colour/run-vae-shapes.json      # a trained run, on its whole test set
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from lvm.blocks.distributions import gaussian_kl
from lvm.engine import train
from lvm.blocks.scaling import from_unit, to_unit
from lvm.engine.data import load
from lvm.engine.plotting import save_reconstructions
from lvm.engine.train import TrainConfig, fit
from lvm.vae.model import VAE, VAEConfig

BACKGROUND_MAX = 100  # background channels are <= 90, shape channels >= 110 (make_shapes)


# An orthonormal colour basis: luminance (1, 1, 1)/sqrt 3 and two chroma axes. Rotating the
# pixels by it changes no squared error (so no loss), only which parameters carry what.
YCC = torch.tensor([[1, 1, 1], [1, -1, 0], [1, 1, -2]], dtype=torch.float32)
YCC = YCC / YCC.norm(dim=1, keepdim=True)  # (3, 3), orthonormal rows


def rotate(q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("dc,bchw->bdhw", q.to(x.dtype), x)  # (B, 3, H, W)


class ScheduledVAE(VAE):
    """The course's VAE whose training loss weighs the KL by beta(step); evaluation (the model
    in eval mode) always reports the true -ELBO, beta = 1. `basis` "ycc": the encoder reads and
    the decoder's last conv writes the pixels in the YCC basis (a fixed rotation on either side,
    the loss still the squared error of the RGB pixels); "ycc-out": the decoder side only."""

    def __init__(self, cfg: VAEConfig, variant: str, warmup: int, basis: str = "rgb",
                 centre: torch.Tensor | None = None):
        super().__init__(cfg)
        self.variant, self.warmup, self.step, self.basis = variant, warmup, 0, basis
        # centre: a per-channel offset (3,) on [-1, 1] taken off the encoder's input and added
        # to the decoder's output (no change to the loss or the architecture's shape)
        self.register_buffer("centre", torch.zeros(3) if centre is None else centre)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = to_unit(x) - self.centre[:, None, None]  # uint8 images as stored, as VAE.encode takes them
        return self.encoder(rotate(YCC, x) if self.basis == "ycc" else x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = super().decode(z)  # (B, 3, H, W)
        out = out if self.basis == "rgb" else rotate(YCC.T, out)
        return out + self.centre[:, None, None]

    def beta(self) -> float:
        if self.variant == "ae":
            return 0.0
        if self.variant == "warmup":
            return min(1.0, self.step / self.warmup)
        return 1.0

    def loss(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = super().loss(x)
        if self.training:
            terms["loss"] = terms["recon_loss"] + self.beta() * terms["kl_loss"]
            self.step += 1
        return terms


def he_init(model: torch.nn.Module) -> None:
    """He et al. 2015 ("Delving Deep into Rectifiers") for every conv, transposed conv and linear
    layer: weights N(0, 2 / fan_in), biases 0, where fan_in counts the inputs that really reach
    one output (for a stride-s transposed conv, in_channels * k * k / s^2). PyTorch's default
    (uniform, variance 1 / (3 fan_in)) shrinks a ReLU net's signal about 6-fold in variance per
    layer; this keeps it."""
    for m in model.modules():
        if isinstance(m, torch.nn.ConvTranspose2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1] / (m.stride[0] * m.stride[1])
        elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = m.weight[0].numel()
        else:
            continue
        torch.nn.init.normal_(m.weight, 0.0, (2.0 / fan_in) ** 0.5)
        torch.nn.init.zeros_(m.bias)


class MeanOnlyBatchNorm(torch.nn.BatchNorm2d):
    """Mean-only batch normalisation (Salimans & Kingma 2016, "Weight Normalization"): takes off
    each channel's batch mean (its running mean in eval) and adds a learned bias; no rescaling."""

    def __init__(self, channels: int):
        super().__init__(channels, affine=False)
        self.bias_ = torch.nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean((0, 2, 3))
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
        else:
            mean = self.running_mean
        return x - mean[:, None, None] + self.bias_[:, None, None]


NORMS = {
    "batch": torch.nn.BatchNorm2d,
    "meanonly": MeanOnlyBatchNorm,
    "group": lambda c: torch.nn.GroupNorm(1, c),  # per image: no batch statistics
}


def add_norm(model: torch.nn.Module, kind: str, where: str = "both") -> None:
    """A normalisation after every conv (or transposed conv) that a ReLU follows, as the VQ-VAE
    has, in the encoder, the decoder or both."""
    nets = {"encoder": (model.encoder.net,), "decoder": (model.decoder.net,), "both": (model.encoder.net, model.decoder.net)}
    for seq in nets[where]:
        layers = []
        for m in seq:
            if isinstance(m, torch.nn.ReLU) and isinstance(layers[-1], (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                layers.append(NORMS[kind](layers[-1].out_channels))
            layers.append(m)
        seq._modules.clear()
        for i, m in enumerate(layers):
            seq.add_module(str(i), m)


def background(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 shapes (N, 3, H, W) -> (mask (N, 1, H, W) float of background pixels, true
    background colour (N, 3) on [0, 255])."""
    mask = (x.amax(1, keepdim=True) < BACKGROUND_MAX).float()  # (N, 1, H, W)
    colour = (x.float() * mask).sum((2, 3)) / mask.sum((2, 3))  # (N, 3)
    return mask, colour


def colour_errors(true: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """Mean absolute errors on [0, 255] between two (N, 3) colours: per channel, of the
    luminance (channel mean) and of the chroma (channel minus channel mean)."""
    lum_t, lum_g = true.mean(1, keepdim=True), got.mean(1, keepdim=True)  # (N, 1)
    return {
        "per_channel": (got - true).abs().mean().item(),
        "luminance": (lum_g - lum_t).abs().mean().item(),
        "chroma": ((got - lum_g) - (true - lum_t)).abs().mean().item(),
    }


@torch.no_grad()
def posterior_means(model: VAE, x: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    mus, log_stds = zip(*(model.encode(x[i : i + batch]) for i in range(0, len(x), batch)))
    return torch.cat(mus), torch.cat(log_stds)  # (N, L) each


def decoder_chroma_fraction(model: VAE, z: torch.Tensor) -> float:
    """How much of what the decoder's output does when z moves is chroma: E ||chroma(J v)||^2 /
    E ||J v||^2 over random directions v at the points z (B, L). A decoder with no colour
    preference gives about 2/3 (two of the three colour axes); a grey decoder 0."""
    torch.manual_seed(0)
    v = torch.randn_like(z)
    was_training = model.training
    model.eval()  # BatchNorm (--norm batch) may not update its statistics inside jvp
    _, jv = torch.func.jvp(model.decode, (z,), (v,))  # (B, 3, H, W)
    model.train(was_training)
    chroma = jv - jv.mean(1, keepdim=True)
    return (chroma.pow(2).sum() / jv.pow(2).sum()).item()


@torch.no_grad()
def dead_units(model: VAE, x: torch.Tensor) -> dict[str, float]:
    """For every ReLU of the encoder and the decoder, the fraction of its channels (or units)
    that are zero for every test image at every position: features the net can no longer use."""
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.ReLU):
            def hook(mod, inp, out, name=name):
                alive = (out > 0).flatten(2).any(-1) if out.dim() == 4 else out > 0  # (B, C)
                acts[name] = acts.get(name, torch.zeros(out.shape[1], dtype=torch.bool)) | alive.any(0)
            hooks.append(module.register_forward_hook(hook))
    for i in range(0, len(x), 500):
        model.reconstruct(x[i : i + 500])
    for h in hooks:
        h.remove()
    return {name: round(1 - alive.float().mean().item(), 3) for name, alive in acts.items()}


def r2(pred: torch.Tensor, true: torch.Tensor) -> float:
    return (1 - (pred - true).pow(2).sum() / (true - true.mean(0)).pow(2).sum()).item()


@torch.no_grad()
def last_features_scale(model: VAE, x: torch.Tensor) -> dict[str, float]:
    """The decoder's last hidden features (the input of its output conv) when it reconstructs the
    test images `x` from their posterior means: how much they vary across images (std over images
    of each channel's mean over the background pixels, averaged over channels) against their size
    (the mean absolute value). The output conv can only make colour from that variation."""
    feats = {}

    def keep(module, inputs, output) -> None:  # returns None: the output stays as it is
        feats["h"] = inputs[0]

    hook = model.decoder.net[-1].register_forward_hook(keep)
    model.reconstruct(x)
    hook.remove()
    h = feats["h"].float()  # (N, D, 32, 32)
    mask, _ = background(x)
    per_image = (h * mask).sum((2, 3)) / mask.sum((2, 3))  # (N, D)
    return {"std_across_images": per_image.std(0).mean().item(), "mean_abs": h.abs().mean().item()}


@torch.no_grad()
def measure(model: VAE, train: torch.Tensor, test: torch.Tensor) -> dict:
    model.eval()
    mask, true = background(test)
    recon = torch.cat([from_unit(model.reconstruct(test[i : i + 500])) for i in range(0, len(test), 500)])
    recon = recon * 255  # (N, 3, H, W) on [0, 255]
    got = (recon * mask).sum((2, 3)) / mask.sum((2, 3))  # (N, 3)
    grey = true.mean(1, keepdim=True).expand_as(true)  # the true luminance, no chroma at all

    mu, log_std = posterior_means(model, test)  # (N, L)
    kl_per_dim = (0.5 * (mu.pow(2) + (2 * log_std).exp() - 1 - 2 * log_std)).mean(0)  # (L,)
    assert torch.allclose(kl_per_dim.sum(), gaussian_kl(mu, log_std).mean(), rtol=1e-4)
    activity = mu.var(0)  # (L,)

    # linear probe: posterior mean -> background luminance and chroma
    probe_x = train[:4000]
    mu_tr, _ = posterior_means(model, probe_x)
    _, col_tr = background(probe_x)

    def design(m: torch.Tensor) -> torch.Tensor:
        return torch.cat([m, torch.ones(len(m), 1)], 1).double()  # (N, L + 1)

    def split(c: torch.Tensor) -> torch.Tensor:
        lum = c.mean(1, keepdim=True)
        return torch.cat([lum, c - lum], 1).double()  # (N, 4): luminance, 3 chroma channels

    w = torch.linalg.lstsq(design(mu_tr), split(col_tr)).solution  # (L + 1, 4)
    pred, target = design(mu) @ w, split(true)
    return {
        "background_error": colour_errors(true, got),
        "background_error_if_grey": colour_errors(true, grey),
        "background_error_if_dataset_mean": colour_errors(true, torch.full_like(true, 45.0)),
        "kl_per_dim": [round(v, 3) for v in kl_per_dim.tolist()],
        "activity_per_dim": [round(v, 4) for v in activity.tolist()],
        "active_units": int((activity > 0.01).sum()),
        "decoder_chroma_fraction": decoder_chroma_fraction(model, mu[:200]),
        "last_hidden_features": last_features_scale(model, test[:500]),
        "dead_units": dead_units(model, test),
        "probe_r2": {"luminance": r2(pred[:, :1], target[:, :1]), "chroma": r2(pred[:, 1:], target[:, 1:])},
        "recon": recon,
    }


def cpu_flags() -> str:
    """The flags that decide CPU speed here, for the JSON (`lvm.engine.train.cpu_flags` reads them)."""
    flags = train.cpu_flags()
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags) or platform.machine()


def measure_checkpoint(checkpoint: Path, out: Path) -> None:
    """The colour numbers of a run of `lvm run vae|vlae --dataset shapes`, on its whole test set."""
    from lvm import load_model

    model, meta = load_model(checkpoint)
    data = load("shapes", download=False)
    m = measure(model, data.train, data.test)
    m.pop("recon")
    metrics = json.loads((checkpoint.parent / "metrics.json").read_text())
    result = {
        "what": "benchmarks/vae_colour.py --checkpoint: the background colour of a trained run's reconstructions",
        "command": f"python benchmarks/vae_colour.py --checkpoint {checkpoint} --out {out}",
        "run": {k: metrics[k] for k in ("model", "variant", "device", "epochs", "seconds", "test") if k in metrics},
        "config": meta["config"],
        "test_size": len(data.test),
        **m,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("run", "background_error", "probe_r2", "decoder_chroma_fraction",
                                             "last_hidden_features")}, indent=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="measure this trained run (a vae or vlae on shapes) instead of training")
    p.add_argument("--variant", choices=("course", "ae", "warmup"), default="course")
    p.add_argument("--centre", action="store_true", help="take the per-channel train mean off the input, add it to the output")
    p.add_argument("--init", choices=("default", "he"), default="default", help="he: He et al. 2015, biases 0")
    p.add_argument("--norm", choices=("none", *NORMS), default="none",
                   help="a normalisation before every hidden conv's ReLU: batch (BatchNorm), meanonly, group (GroupNorm, 1 group)")
    p.add_argument("--norm-where", choices=("both", "encoder", "decoder"), default="both")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--basis", choices=("rgb", "ycc", "ycc-out"), default="rgb")
    p.add_argument("--warmup", type=int, default=1000, help="warmup: steps for beta to reach 1")
    p.add_argument("--train-limit", type=int, default=8000)
    p.add_argument("--test-limit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    if args.checkpoint:
        return measure_checkpoint(args.checkpoint, args.out)
    data = load("shapes", train_limit=args.train_limit, test_limit=args.test_limit, download=False)
    torch.manual_seed(args.seed)
    centre = to_unit(data.train).mean((0, 2, 3)) if args.centre else None  # (3,)
    model = ScheduledVAE(VAEConfig(channels=3, latent_dim=args.latent_dim, norm="none"), args.variant, args.warmup,
                         args.basis, centre)
    if args.norm != "none":
        add_norm(model, args.norm, args.norm_where)
    if args.init == "he":
        he_init(model)
    at_init = decoder_chroma_fraction(model, torch.randn(200, model.cfg.latent_dim))
    cfg = TrainConfig(epochs=args.epochs, batch_size=128, lr=args.lr, seed=args.seed, device="cpu",
                      cpu_threads=args.threads, amp="off")
    start = time.perf_counter()
    history = fit(model, data.train, data.test, cfg)
    seconds = time.perf_counter() - start
    m = measure(model, data.train, data.test)
    recon = m.pop("recon")
    png = args.out.with_suffix(".png")
    save_reconstructions(data.test[:30].float() / 255, recon[:30] / 255, png,
                         f"vae ({args.variant}, {args.basis}) on shapes, {len(data.train)} x {args.epochs} epochs")
    result = {
        "what": "benchmarks/vae_colour.py: what the VAE's latent holds of the background colour",
        "command": "OMP_NUM_THREADS=1 python benchmarks/vae_colour.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if not isinstance(v, bool))
            + (" --centre" if args.centre else ""),
        "variant": args.variant,
        "basis": args.basis,
        "latent_dim": args.latent_dim,
        "centre": None if centre is None else [round(v, 4) for v in centre.tolist()],
        "decoder_chroma_fraction_at_init": at_init,
        "warmup_steps": args.warmup if args.variant == "warmup" else None,
        "train_size": len(data.train), "test_size": len(data.test), "epochs": args.epochs,
        "batch_size": 128, "lr": args.lr, "seed": args.seed, "precision": "float32",
        "device": f"cpu ({platform.machine()}, {args.threads} thread(s))", "init": args.init, "norm": args.norm, "norm_where": args.norm_where, "cpu_flags": cpu_flags(),
        "seconds": round(seconds, 1),
        "test": {"neg_elbo": history.test["loss"][-1], "recon_loss": history.test["recon_loss"][-1],
                 "kl_loss": history.test["kl_loss"][-1]},
        "test_neg_elbo_per_epoch": [round(v, 2) for v in history.test["loss"]],
        **m,
        "reconstructions_png": str(png),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("variant", "basis", "seconds", "test", "background_error",
                                             "active_units", "probe_r2", "decoder_chroma_fraction_at_init",
                                             "decoder_chroma_fraction", "last_hidden_features", "dead_units")}, indent=1))


if __name__ == "__main__":
    main()
