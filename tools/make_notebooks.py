"""Write the course notebooks `notebooks/0*.ipynb` and execute them in place, so that the stored
outputs are those of a real run (`pytest --nbval notebooks/` re-runs them and compares).

    python tools/make_notebooks.py            # write and execute all
    python tools/make_notebooks.py 01 03      # only these
    python tools/make_notebooks.py --no-run   # write only
    python tools/make_notebooks.py --no-run --root=/tmp/nb 06   # write elsewhere, to compare

Cells whose output is random by nature (losses, pictures) are tagged nbval-ignore-output; the
others (data sizes, parameter counts, masks, a seeded KL) are compared.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nbtools import code, execute, md, write

ROOT = Path(__file__).resolve().parent.parent / "notebooks"

SETUP = """
import os
os.environ["TQDM_DISABLE"] = "1"  # no progress bars in stored outputs

import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's, in a kernel without widgets

import torch
from IPython.display import Image, display

import lvm
from lvm.blocks.scaling import from_unit
from lvm.engine import data as datasets
from lvm.engine import plotting
from lvm.engine.train import TrainConfig, fit

torch.manual_seed(0)
out = Path(tempfile.mkdtemp(prefix="lvm-notebook-"))  # figures go here, then are shown inline


def show(*paths):
    for p in paths:
        display(Image(filename=str(p)))


def n_params(model):
    return sum(p.numel() for p in model.parameters())
"""


def nb01() -> list[dict]:
    return [
        md("""
# 1. A VAE on two-dimensional data

The course's first latent-variable question: fit a **variational autoencoder** (Kingma & Welling,
2013) to 2-D Gaussian data and see *when the latent variable is used*. The model lives in
`lvm/vae2d/model.py`; this notebook only imports it.

**The model.** A latent $z \\in \\mathbb R^2$ with prior $p(z) = \\mathcal N(0, I)$, a decoder
$p_\\theta(x|z) = \\mathcal N(x; \\mu_\\theta(z), \\mathrm{diag}\\,\\sigma^2_\\theta(z))$ with a
*learned* variance, and an encoder $q_\\phi(z|x) = \\mathcal N(z; \\mu_\\phi(x), \\mathrm{diag}\\,\\sigma^2_\\phi(x))$.
Both are small MLPs.

**The ELBO.** For any $q$,

$$\\log p(x) \\;\\ge\\; \\mathbb E_{q(z|x)}[\\log p(x|z)] \\;-\\; \\mathrm{KL}(q(z|x)\\,\\|\\,p(z)) \\;=\\; \\mathrm{ELBO}(x),$$

with equality when $q(z|x)$ is the model's posterior $p_\\theta(z|x)$: the ELBO bounds the
**model's** log-likelihood. We minimise $-\\mathrm{ELBO}$ = reconstruction loss + KL loss, averaged
over the batch, in nats.

**Reparameterisation.** To backpropagate through the sample we write
$z = \\mu_\\phi(x) + \\sigma_\\phi(x) \\odot \\varepsilon$, $\\varepsilon \\sim \\mathcal N(0, I)$: the
randomness no longer depends on $\\phi$, so $\\nabla_\\phi$ passes through $z$.

**The KL in closed form.** For diagonal Gaussians,
$\\mathrm{KL}(\\mathcal N(\\mu, \\sigma^2) \\| \\mathcal N(0, 1)) = \\tfrac12(\\mu^2 + \\sigma^2 - 1) - \\log\\sigma$
per dimension.
"""),
        code(SETUP),
        md("""
## The data

The course's datasets: 10,000 training and 2,500 test points, each set drawn from a fresh
`RandomState(0)`. Part **b** is an axis-aligned Gaussian (`gaussians-b1`); part **a** the same
draws rotated by 45 degrees (`gaussians-a1`), so its two coordinates are correlated.
"""),
        code("""
data_a = datasets.load("gaussians-a1")
data_b = datasets.load("gaussians-b1")
print(data_a.info)
print("train", tuple(data_a.train.shape), data_a.train.dtype, " test", tuple(data_a.test.shape))
for part, d in (("a", data_a), ("b", data_b)):
    corr = torch.corrcoef(d.train.T)[0, 1].item()
    print(f"part {part}: std {[round(v, 1) for v in d.train.std(0).tolist()]}, correlation {round(corr, 2) + 0.0}")
"""),
        md("""
**The "test" set is training data.** Both sets start from the same seed, so the 2,500 test points
are the first 2,500 training points, in each of the course's four Q1 datasets (checked below on
`q1_sample_data`, the data the homework hands out). Every Q1 "test" number, here and in the
course, is measured on points the model was trained on: it cannot reveal overfitting.
"""),
        code("""
import numpy as np
from lvm.homework.helpers import q1_sample_data

for part in "ab":
    for dset_id in (1, 2):
        train, test = q1_sample_data(part, dset_id)
        print(f"part {part}, dataset {dset_id}: np.array_equal(train[:2500], test) =",
              np.array_equal(train[:2500], test))
"""),
        md("""
**The true density is known.** Part a's is $\\mathcal N\\big((1, 2),\\, R^\\top \\mathrm{diag}(25, 1)\\, R\\big)$,
$R$ the course's 45-degree rotation. Its NLL on the 2,500 test points (with the standard error of
that mean), and its entropy, the NLL it gives on average over fresh points:
"""),
        code("""
s = 2 ** 0.5 / 2
R = torch.tensor([[s, s], [-s, s]], dtype=torch.float64)              # the course's x.dot(R)
cov = R.T @ torch.diag(torch.tensor([25.0, 1.0], dtype=torch.float64)) @ R
true_a = torch.distributions.MultivariateNormal(torch.tensor([1.0, 2.0], dtype=torch.float64), cov)
nll = -true_a.log_prob(data_a.test.double())                          # (2500,)
true_nll, true_se = nll.mean().item(), (nll.std() / len(nll) ** 0.5).item()
print(f"true density: NLL on the test points {true_nll:.4f} nats (standard error {true_se:.4f}), "
      f"entropy {true_a.entropy().item():.4f} nats")
"""),
        md("""
Part a's coordinates are strongly correlated; part b's are not. A Gaussian decoder with a *diagonal*
variance can model part b **without using z at all**: it only needs a constant mean and the right
variance per axis. Part a's correlation can only come through z.

## The KL term: closed form against Monte Carlo

`lvm.blocks.distributions.gaussian_kl` is the closed form; it should equal the average of
$\\log q(z) - \\log p(z)$ over many draws $z \\sim q$.
"""),
        code("""
from lvm.blocks.distributions import gaussian_kl, gaussian_log_prob, reparameterize, standard_normal_log_prob

mu = torch.tensor([[0.5, -1.0]])
log_std = torch.tensor([[0.1, -0.7]])
g = torch.Generator().manual_seed(0)
z = mu + log_std.exp() * torch.randn(200_000, 2, generator=g)          # draws from q
mc = (gaussian_log_prob(z, mu, log_std) - standard_normal_log_prob(z)).sum(-1).mean()
print(f"closed form KL: {gaussian_kl(mu, log_std).item():.4f} nats")
print(f"Monte Carlo   : {mc.item():.2f} nats")
"""),
        md("## The model"),
        code("""
from lvm.vae2d import VAE2d, VAE2dConfig

cfg = VAE2dConfig()
print(cfg)
# standardise_with: the networks read (x - mean) / std of the training set, the likelihood stays
# that of raw x; five epochs then suffice (`lvm run vae2d` reads raw x, standardise=False, 20 epochs)
model_a = VAE2d(cfg).standardise_with(data_a.train)
print(model_a.encoder)
print("parameters:", n_params(model_a))
"""),
        md("""
## Training, part a

The one trainer (`lvm.engine.train.fit`) records every loss term for each training minibatch and on the
test set before training and after every epoch. The course trains 20 epochs; five are enough to
see the picture here (a few seconds).
"""),
        code("""
train_cfg = TrainConfig(epochs=5, batch_size=128, lr=1e-3, lr_schedule="cosine", device="cpu")
hist_a = fit(model_a, data_a.train, data_a.test, train_cfg)
final = {k: v[-1] for k, v in hist_a.test.items()}
print(f"Final -ELBO: {final['loss']:.4f}, Recon Loss: {final['recon_loss']:.4f}, KL Loss: {final['kl_loss']:.4f}")
gap = final["loss"] - true_nll
print(f"-ELBO minus the true density's NLL on the same points: {gap:+.4f} nats ({gap / true_se:+.1f} standard errors)")
labels = {"loss": "-ELBO", "recon_loss": "reconstruction", "kl_loss": "KL"}
show(plotting.plot_training(hist_a.train, hist_a.test, out / "a_curves.png", "vae2d on gaussians-a1", labels))
""", ignore=True),
        md("""
**What bounds what.** The -ELBO bounds the *model's* NLL $-\\log p_\\theta(x)$ from above, not the
true density's. The true density is a floor only on average over fresh points: there no model's
expected NLL, hence no expected -ELBO, can go below its entropy (Gibbs' inequality). On a given
set of points it is no hard floor: a model's -ELBO can come out a little below the true density's
NLL on them, the more easily when, as here, they are points the model was trained on. The last
line above says by how much, in standard errors of the test mean; a -ELBO many standard errors
below the true density's NLL is not luck but a bug (a KL term left out, or a log-std read as a
log-variance).

The KL is well above zero: the model **uses** its latent to carry the correlation.

## Samples, with and without decoder noise

Two ways to sample: $z \\sim p(z)$ then $x \\sim p(x|z)$ (with noise), or only the decoder mean
$\\mu_\\theta(z)$ (without). In part a the means alone already trace the blob's long, rotated axis:
z carries the correlated direction, the decoder noise adds the spread across it.
"""),
        code("""
model_a.eval()
show(plotting.save_scatter({"data": data_a.test, "samples with noise": model_a.sample(1000, noise=True)},
                           out / "a_noise.png", "part a: samples with decoder noise"),
     plotting.save_scatter({"data": data_a.test, "decoder means": model_a.sample(1000, noise=False)},
                           out / "a_nonoise.png", "part a: samples without decoder noise"))
""", ignore=True),
        md("""
## Part b: the latent collapses

Now the axis-aligned data. The decoder's learned diagonal variance fits it on its own, so the
cheapest ELBO sets $q(z|x) = p(z)$: the KL goes to ~0 ("posterior collapse") and z carries nothing.
"""),
        code("""
model_b = VAE2d(VAE2dConfig()).standardise_with(data_b.train)
hist_b = fit(model_b, data_b.train, data_b.test, train_cfg)
final = {k: v[-1] for k, v in hist_b.test.items()}
print(f"Final -ELBO: {final['loss']:.4f}, Recon Loss: {final['recon_loss']:.4f}, KL Loss: {final['kl_loss']:.4f}")
model_b.eval()
with_noise, means = model_b.sample(1000, noise=True), model_b.sample(1000, noise=False)
print("std per axis: data", [round(v, 2) for v in data_b.test.std(0).tolist()],
      " samples with noise", [round(v, 2) for v in with_noise.std(0).tolist()],
      " decoder means", [round(v, 2) for v in means.std(0).tolist()])
show(plotting.save_scatter({"data": data_b.test, "samples with noise": with_noise},
                           out / "b_noise.png", "part b: samples with decoder noise"),
     plotting.save_scatter({"data": data_b.test, "decoder means": means},
                           out / "b_nonoise.png", "part b: samples without decoder noise"))
""", ignore=True),
        md("""
With noise, part b's samples match the data; without it, they shrink to a small cluster around the
data's mean (the spreads above: the decoder means' is a fraction of the data's): every z decodes
to nearly the same mean, because z is almost unused. `lvm run vae2d --dataset gaussians-b1`
trains the course's 20 epochs (on raw inputs) and writes both kinds of samples, each in its own
figure.
"""),
    ]


IMAGE_SETUP = """
# Fashion-MNIST when it is on disk, else the generated shapes (always there); what this prints
# depends on the disk, so the tests do not compare it
name = "fashion-mnist" if datasets.on_disk("fashion-mnist") else "shapes"
data = datasets.load(name, train_limit=LIMIT, test_limit=300)
print(name, data.info.kind, data.info.shape, "train", tuple(data.train.shape), data.train.dtype,
      "test", tuple(data.test.shape))
"""


# samples, reconstructions and interpolations of a trained image VAE (notebooks 2 and 3)
VAE_PICTURES = """
model.eval()
show(plotting.save_image_grid(from_unit(model.sample(100)), out / "samples.png", "100 samples"))
x = data.test[:20]                                          # uint8, as stored: what the models take
show(plotting.save_reconstructions(x.float() / 255, from_unit(model.reconstruct(x)),
                                   out / "recon.png", "test images (left) and reconstructions"))
rows = model.interpolate(data.test[20:25], data.test[25:30], steps=10)   # (5, 10, C, 32, 32) in [-1, 1]
show(plotting.save_interpolations(from_unit(rows), out / "interp.png", "interpolations"))
"""


def nb02() -> list[dict]:
    return [
        md("""
# 2. A convolutional VAE on images

The course's Q2a: the VAE of notebook 1 with a convolutional encoder and decoder and a 16-d
latent (`lvm/vae/model.py`).

- Encoder: four convolutions (the last three with stride 2, 32 -> 4 pixels), then a linear layer
  to $(\\mu, \\log\\sigma)$ of $q(z|x)$, 16-d.
- Decoder: a linear layer to a 4x4x128 map, three transposed convolutions back to 32x32, a final
  convolution to the image's channels.
- Images are scaled to $[-1, 1]$. The reconstruction loss is the **squared error summed over
  pixels**, i.e. $-\\log$ of a Gaussian decoder with the fixed variance $\\tfrac12$,
  $-\\log \\mathcal N(x;\\, \\mathrm{dec}(z),\\, \\tfrac12 I)$, constants dropped (the course's
  convention); the KL to $\\mathcal N(0, I)$ is in closed form.
- One change from the course: a **BatchNorm** before every hidden convolution's ReLU
  (`VAEConfig.norm = "batch"`). Without it the course's network, trained on `shapes`, learns
  outlines and brightness but reconstructs every colour as grey, even after its full budget (the
  README's *Colour* entry has the experiment). `VAEConfig(norm="none")` is the course's
  network exactly.

$$-\\mathrm{ELBO}(x) = \\mathbb E_{q(z|x)}\\,\\|x - \\mathrm{dec}(z)\\|^2 + \\mathrm{KL}(q(z|x)\\,\\|\\,\\mathcal N(0, I))$$
"""),
        code(SETUP),
        code("""
from lvm.vae import VAE, VAEConfig

vae = VAE(VAEConfig())                                # ours, for 3-channel images
print(VAEConfig())
print("parameters:", n_params(vae), " the course's network (norm='none'):", n_params(VAE(VAEConfig(norm="none"))))
x = torch.zeros(8, 3, 32, 32, dtype=torch.uint8)      # a batch of images as stored (0..255)
mu, log_std = vae.encode(x)
z = mu + log_std.exp() * torch.randn_like(mu)         # reparameterisation
print("q(z|x) mean and log std:", tuple(mu.shape), tuple(log_std.shape), " decoder output:", tuple(vae.decode(z).shape))
"""),
        md("""
## Data and a model small enough for a CPU

The data depends on what is on disk, so the outputs of the next cells are not compared by the
tests (they carry the `nbval-ignore-output` tag).
"""),
        code(IMAGE_SETUP.replace("LIMIT", "3000"), ignore=True),
        code("""
# the course's architecture at half its widths, so that a CPU trains it in seconds
cfg = VAEConfig(channels=data.info.channels, enc_widths=(16, 32, 64, 128), dec_widths=(64, 64, 32, 16))
model = VAE(cfg)
print("parameters:", n_params(model))
""", ignore=True),
        md("""
## Training

The course trains 20 epochs on SVHN or CIFAR-10 (73k / 50k images) at full width. Here: half
the widths, 3,000 images, 3 epochs (the cell prints how long that took), enough to see the model
learn; `lvm run vae --dataset shapes` runs the full budget.
"""),
        code("""
import time
start = time.perf_counter()
hist = fit(model, data.train, data.test, TrainConfig(epochs=3, batch_size=32, lr=2e-3, device="cpu"))
print(f"trained in {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} CPU thread(s)")
final = {k: v[-1] for k, v in hist.test.items()}
print(f"Final -ELBO: {final['loss']:.2f}, Recon Loss: {final['recon_loss']:.2f}, KL Loss: {final['kl_loss']:.2f}")
show(plotting.plot_training(hist.train, hist.test, out / "curves.png", f"vae on {name}",
                            {"loss": "-ELBO", "recon_loss": "reconstruction", "kl_loss": "KL"}))
""", ignore=True),
        md("""
## Samples, reconstructions, interpolations

Samples decode $z \\sim \\mathcal N(0, I)$ (the decoder mean, as the course shows). Reconstructions
decode the posterior mean of a test image. Interpolations decode evenly spaced points on the line
between the posterior means of two test images: a smooth latent space gives a smooth morph.
"""),
        code(VAE_PICTURES, ignore=True),
        md("""
With this tiny budget the reconstructions keep each image's outline and brightness but lose its
details (on `shapes`, the fallback dataset, the position and size of the shape come before its
colour), and the samples are blurry, plausible silhouettes: a squared-error decoder averages over
what it is unsure of. Longer training sharpens them; blur is the known weakness of a
Gaussian-decoder VAE.
"""),
    ]


def nb03() -> list[dict]:
    return [
        md("""
# 3. VLAE: a VAE with an autoregressive-flow prior

The course's Q2b (`lvm/vlae/model.py`): the VAE of notebook 2 with its $\\mathcal N(0, I)$ prior
replaced by a **learned** prior, an affine autoregressive flow. The KL term
$\\mathbb E_q[\\log q(z|x) - \\log p(z)]$ pulls the posteriors towards the prior; a prior that can
move its mass to where the posteriors are makes that term cheaper for the same reconstructions.

**The flow.** A MADE network reads $z$ and gives, for every dimension $i$, a shift
$\\mu_i(z_{<i})$ and a log-scale $s_i(z_{<i})$:

$$\\varepsilon_i = z_i\\, e^{s_i(z_{<i})} + \\mu_i(z_{<i}), \\qquad \\varepsilon \\sim \\mathcal N(0, I).$$

**The log-determinant.** $\\partial\\varepsilon_i/\\partial z_j = 0$ for $j > i$ (the MADE never lets
$i$ see $z_{\\ge i}$), so the Jacobian is triangular and its determinant is the product of its
diagonal $e^{s_i}$:

$$\\log p(z) = \\log \\mathcal N(\\varepsilon; 0, I) + \\sum_i s_i(z_{<i}).$$

The KL has no closed form any more: it is estimated with the reparameterised sample,
$\\log q(z|x) - \\log p(z)$. Sampling inverts the flow one dimension at a time.
"""),
        code(SETUP),
        md("""
## MADE: which input can each output see?

The gradient of output $i$ with respect to input $j$ is nonzero only for $j < i$: a strictly
lower-triangular pattern (`1` = depends).
"""),
        code("""
from lvm.blocks.made import MADE

made = MADE(dim=6, hidden=(32, 32), n_out=2)
z = torch.randn(1, 6, requires_grad=True)
depends = torch.stack([torch.autograd.grad(made(z)[0, i].sum(), z)[0][0] != 0 for i in range(6)]).int()
print(depends)   # row i: the inputs output i depends on
"""),
        md("""
## The flow's log-determinant, checked against autograd

The flow returns $\\log|\\det \\partial\\varepsilon/\\partial z|$ from the log-scales alone; compare
it with the log-determinant of the full Jacobian computed by autograd, and check that `inverse`
undoes the flow.
"""),
        code("""
from lvm.vlae import AutoregressiveFlowPrior

flow = AutoregressiveFlowPrior(dim=4, hidden=(32, 32), max_log_scale=3.0).double()
z = torch.randn(1, 4, dtype=torch.float64)
eps, log_det = flow(z)
J = torch.autograd.functional.jacobian(lambda v: flow(v)[0], z)[0, :, 0, :]   # (4, 4)
print("Jacobian upper triangle is zero:", bool((J.triu(1) == 0).all()))
print("log-det from the flow equals autograd's:", torch.allclose(log_det[0], torch.linalg.slogdet(J)[1]))
print("inverse(flow(z)) == z:", torch.allclose(flow.inverse(eps), z))
"""),
        code(IMAGE_SETUP.replace("LIMIT", "3000"), ignore=True),
        code("""
from lvm.vlae import VLAE, VLAEConfig

# the VAE of notebook 2 (half the course's widths) with the course's MADE prior
cfg = VLAEConfig(channels=data.info.channels, enc_widths=(16, 32, 64, 128), dec_widths=(64, 64, 32, 16))
model = VLAE(cfg)
print("parameters:", n_params(model), " of which the prior:", n_params(model.prior))
""", ignore=True),
        md("Training: 3,000 images, 3 epochs, as in notebook 2 (the course: 20 epochs on SVHN/CIFAR-10)."),
        code("""
hist = fit(model, data.train, data.test, TrainConfig(epochs=3, batch_size=32, lr=2e-3, device="cpu"))
final = {k: v[-1] for k, v in hist.test.items()}
print(f"Final -ELBO: {final['loss']:.2f}, Recon Loss: {final['recon_loss']:.2f}, KL Loss: {final['kl_loss']:.2f}")
show(plotting.plot_training(hist.train, hist.test, out / "curves.png", f"vlae on {name}",
                            {"loss": "-ELBO", "recon_loss": "reconstruction", "kl_loss": "KL (Monte Carlo)"}))
""", ignore=True),
        md("""
The KL is no longer the closed form: it is estimated from one draw of $z$ per image, so every
value of it, on a minibatch or on the test set, carries that draw's noise too. Samples draw
$\\varepsilon \\sim \\mathcal N(0, I)$, invert the flow to $z$ (one MADE pass per latent
dimension, 16), and decode.
"""),
        code(VAE_PICTURES, ignore=True),
        md("""
At the course's budget the VLAE reaches a lower -ELBO than the VAE through a smaller KL: in the
course's official solution on SVHN, -ELBO 102.57 against 104.04, KL 22.31 against 24.66, with a
slightly worse reconstruction, 80.25 against 79.38 (`lvm run vlae` and `lvm run vae` train both).
Compare the `Final` line above with notebook 2's (same data, same budget, same encoder and
decoder): here too the learned prior buys a smaller KL.
"""),
    ]


def nb04() -> list[dict]:
    return [
        md("""
# 4. VQ-VAE, with PixelCNN and Gated PixelCNN priors

The course's Q3 and Q4a (`lvm/vqvae/`, `lvm/pixelcnn/`). A VQ-VAE (van den Oord et al., 2017)
has a **discrete** latent: the encoder maps a 32x32 image to an 8x8 map of D-dimensional vectors
$z_e$, and each vector is replaced by its nearest **codebook** entry,

$$z_q = e_k,\\qquad k = \\arg\\min_j \\|z_e - e_j\\|^2 .$$

**The loss** (images on $[-1, 1]$), every term a mean over its elements:

$$\\mathcal L = \\underbrace{\\tfrac{1}{n_x}\\|x - \\mathrm{dec}(z_q)\\|^2}_{\\text{reconstruction}}
 + \\underbrace{\\tfrac{1}{n_z}\\|\\mathrm{sg}(z_e) - z_q\\|^2}_{\\text{codebook}}
 + \\beta\\,\\underbrace{\\tfrac{1}{n_z}\\|z_e - \\mathrm{sg}(z_q)\\|^2}_{\\text{commitment}},$$

where $n_x$ is the number of pixel values in the batch ($B \\cdot C \\cdot 32 \\cdot 32$), $n_z$ the
number of latent entries ($B \\cdot D \\cdot 8 \\cdot 8$), and sg stops gradients (each term is one
`F.mse_loss` in `lvm/vqvae`). The codebook term moves codes towards the encoder's outputs, the
commitment term keeps the encoder from drifting away from its codes ($\\beta = 1$ in the course).

**The straight-through estimator.** $\\arg\\min$ has no gradient. The forward pass uses $z_q$; the
backward pass copies the decoder's gradient onto $z_e$ unchanged:
`z_q = z_e + (z_q - z_e).detach()`.

**The prior.** The VQ-VAE has none of its own: after training, the training images are encoded
to 8x8 grids of code indices and an autoregressive PixelCNN learns
$p(k) = \\prod_i p(k_i \\mid k_{<i})$ over them. Sampling draws a grid position by position and
decodes it.
"""),
        code(SETUP),
        md("""
## The quantiser on a tiny example

Four codes in 2-D, three vectors to quantise. The indices are the nearest codes; the gradient of
the quantised output flows straight through to the input (all ones); the loss is codebook +
commitment (beta = 1, so both are the same number in the forward pass).
"""),
        code("""
from lvm.vqvae import VectorQuantizer, codebook_usage

vq = VectorQuantizer(num_codes=4, code_dim=2, beta=1.0)      # the course's quantiser: no EMA
with torch.no_grad():
    vq.codebook.copy_(torch.tensor([[0., 0.], [1., 0.], [0., 1.], [1., 1.]]))
z = torch.tensor([[0.9, 0.2], [0.1, 0.8], [0.6, 0.7]]).T.reshape(1, 2, 3, 1).requires_grad_()  # (B, D, H, W)
quantized, indices, loss = vq(z)
print("nearest codes:", indices.flatten().tolist())
print("quantised vectors:", quantized.detach().reshape(2, 3).T.tolist())
print(f"codebook + commitment loss: {loss.item():.4f}")
quantized.sum().backward()
print("gradient reaching z (straight through):", z.grad.flatten().tolist())
"""),
        code(IMAGE_SETUP.replace("LIMIT", "2000"), ignore=True),
        md("""
## The VQ-VAE

The course's model has K = 128 codes of D = 256 and 256-wide layers; for a CPU notebook we shrink
the codebook (K = 64 codes of D = 64) and the layers (64 wide) through the config, same
architecture. The default quantiser of this repository uses EMA codebook updates and restarts dead
codes (see `VQVAEConfig`): codes then move as running means of the encoder outputs assigned to
them, and the codebook term, which has no gradient left to give, is kept only so that the loss is
the same number as the course's. The course's plain quantiser is
`ema_decay=None, restart_dead=False`.
"""),
        code("""
from lvm.vqvae import VQVAE, VQVAEConfig, encode_all
from lvm.vqvae.figures import save_code_maps

cfg = VQVAEConfig(channels=data.info.channels, num_codes=64, code_dim=64, width=64)
model = VQVAE(cfg)
print(cfg)
print("parameters:", n_params(model))
x_hat, idx, _ = model(data.train[:4])
print("reconstruction", tuple(x_hat.shape), " code grid", tuple(idx.shape))
""", ignore=True),
        code("""
hist = fit(model, data.train, data.test, TrainConfig(epochs=2, batch_size=64, lr=1e-3, grad_clip=1.0, device="cpu"))
print(f"VQ-VAE test loss: {hist.test['loss'][-1]:.4f} (reconstruction {hist.test['recon_loss'][-1]:.4f})")
show(plotting.plot_training(hist.train, hist.test, out / "vq_curves.png", f"vqvae on {name}",
                            {"loss": "VQ-VAE loss", "recon_loss": "reconstruction (MSE)", "vq_loss": "codebook + commitment"}))
model.eval()
train_codes, test_codes = encode_all(model, data.train), encode_all(model, data.test)   # (N, 8, 8)
usage = codebook_usage(test_codes, cfg.num_codes)
print(f"codes used on the test set: {usage['codes_used']} of {cfg.num_codes} (perplexity {usage['perplexity']:.1f})")
x = data.test[:20]
show(plotting.save_reconstructions(x.float() / 255, from_unit(model.reconstruct(x)),
                                   out / "vq_recon.png", "test images (left) and reconstructions"))
""", ignore=True),
        md("""
Each image is now 64 integers, one per 4x4 patch. The code maps below colour every position of
the 8x8 grid by its code. Then a count: the patches of one plain colour (on Fashion-MNIST, the
black background), how many codes they take, and how often a plain patch takes the code most
common at its grid position.
"""),
        code("""
show(save_code_maps(x.float() / 255, test_codes[:20], cfg.num_codes, out / "codes.png",
                    "test images and their 8x8 code maps"))
patches = data.test.unfold(2, 4, 4).unfold(3, 4, 4)                  # (N, C, 8, 8, 4, 4): each code's patch
plain = patches.amax((1, 4, 5)) == patches.amin((1, 4, 5))           # (N, 8, 8): one colour throughout
n_plain = plain.sum().item()
at_mode = sum(torch.bincount(test_codes[:, i, j][plain[:, i, j]]).max().item()
              for i in range(8) for j in range(8) if plain[:, i, j].any())
print(f"plain patches: {n_plain} of {plain.numel()}, taking {test_codes[plain].unique().numel()} distinct codes; "
      f"{at_mode / max(n_plain, 1):.0%} of them take the code most common at their grid position")
""", ignore=True),
        md("""
So plain background is not one code: it takes several, and which one depends mostly on where the
patch lies. The encoder sees past its patch, up to the image's border, and its zero padding
differs from black (-1 on $[-1, 1]$), so a background code can also say where the patch lies. The
prior has to learn that layout along with the objects.
"""),
        md("""
## Three priors over the codes: PixelCNN, Gated PixelCNN, transformer

All three model the 8x8 grid in raster order with a categorical over the K codes at each position,
and all three are trained with the same loss, cross-entropy in nats per code (a uniform guess
costs $\\log K$). They differ in how position $i$ sees the codes before it:

- **PixelCNN** (the course's Q3): masked convolutions; its receptive field grows by one cell each
  way per 3x3 layer and has a blind spot (notebook 5).
- **Gated PixelCNN** (Q4a): a vertical and a horizontal stack, no blind spot, but still a local
  window per layer.
- **Transformer** (`lvm/vqvae/transformer.py`; the prior of VQGAN and DALL-E): causal
  self-attention, so every position sees *every* earlier code in one layer, with learned position
  embeddings to say where a code sits. Sampling keeps a key/value cache: each new code costs one
  token's pass, where a PixelCNN reruns its convolutions for every code, on the window of codes
  that code can see.
  `lvm run vqvae -o prior=transformer` trains it; the committed comparison on the same codes is
  `figures/vqvae/priors-*.json`.
"""),
        code("""
from lvm.vqvae import make_prior
import math, time

print(f"uniform guess: {math.log(cfg.num_codes):.4f} nats per code")
priors = {
    "pixelcnn": make_prior("pixelcnn", levels=cfg.num_codes, embed_dim=32, channels=48, layers=3, head_channels=96),
    "gated": make_prior("gated", levels=cfg.num_codes, embed_dim=32, channels=48, layers=4, head_channels=96),
    "transformer": make_prior("transformer", levels=cfg.num_codes, n_layer=2, n_head=4, d_model=64),
}
for kind, prior in priors.items():
    print(kind, "parameters:", n_params(prior))
"""),
        code("""
for kind, prior in priors.items():
    h = fit(prior, train_codes, test_codes, TrainConfig(epochs=2, batch_size=64, lr=2e-3, device="cpu"))
    prior.eval()
    start = time.perf_counter()
    codes = prior.sample(50)                                    # (50, 8, 8) code indices
    print(f"{kind}: prior test NLL {h.test['loss'][0]:.4f} -> {h.test['loss'][-1]:.4f} nats per code; "
          f"50 grids sampled in {time.perf_counter() - start:.1f} s")
    show(plotting.save_image_grid(from_unit(model.decode(codes)), out / f"{kind}_samples.png",
                                  f"VQ-VAE + {kind} prior: 50 samples"))
""", ignore=True),
        md("""
The samples decode code grids the prior invented: whole objects on a plain background where the
prior has learned how codes follow each other, a patchwork where it has not (two epochs on 2,000
images is very little). At these tiny widths and budgets the three NLLs are close; the committed
comparison at the course's sizes (about 5.6 M parameters for the gated and the transformer prior)
is in the README. The full runs: `lvm run vqvae --dataset shapes` (the course's Q3; `-o
prior=gated` for Q4a; `-o prior=transformer` for ours).
"""),
    ]


def nb05() -> list[dict]:
    return [
        md("""
# 5. PixelCNN and Gated PixelCNN on binary images

An autoregressive image model writes $p(x) = \\prod_i p(x_i \\mid x_{<i})$ in raster order (row by
row, left to right) and predicts every conditional at once with a convolutional network whose
output at position $i$ must never depend on $x_{\\ge i}$ (`lvm/pixelcnn/`).

**Masked convolutions** (van den Oord et al., 2016). The kernel is multiplied by a mask that
zeroes the taps after the centre in raster order: type **A** (first layer) zeroes the centre too,
type **B** (later layers) keeps it, since there the centre holds features of strictly earlier
pixels.

**The blind spot.** Each masked 3x3 layer widens the receptive field by one row up and one column
to either side, but to the up-right only along the diagonal: $r$ rows above the centre, the stack
sees at most $r$ columns to the right. The wedge beyond that diagonal, the pixels whose column
offset to the right exceeds their row offset above, is past the model may not see and cannot,
however deep (measured below). The **Gated PixelCNN** (van den Oord et al., 2016b) fixes it
with two stacks: a vertical one that sees the rows above, to both sides, and a horizontal one
that sees the current row to the left; gated activations $\\tanh(a) \\odot \\sigma(b)$ join them.
"""),
        code(SETUP),
        md("## The masks (1 = the tap is used)"),
        code("""
from lvm.blocks.masked import MaskedConv2d

for kind in "AB":
    print(f"type {kind}:")
    print(MaskedConv2d(kind, 1, 1, 5).mask[0, 0].int())
"""),
        md("""
## The blind spot, measured with gradients

Take a small PixelCNN and a small Gated PixelCNN, and compute which input positions the logits
at the centre of an 11x11 grid depend on (`X`; `o` is the centre; `.` = no dependence): a
nonzero gradient for any of 8 random inputs (one input alone can leave holes where a ReLU is
off). Then, for each row above the centre, the columns it reaches (offsets from the centre's).
"""),
        code("""
from lvm.pixelcnn import PixelCNNConfig, build

def receptive_field(model, size=11, draws=8):  # (size, size) bool: what the centre's logits depend on
    c = size // 2
    e = torch.randn(draws, model.embed.embedding_dim, size, size, requires_grad=True)
    model.stack(e)[:, :, c, c].sum().backward()
    return e.grad.abs().sum((0, 1)) > 0

def report(seen):
    size = seen.shape[0]
    c = size // 2
    print("\\n".join(" ".join("o" if (i, j) == (c, c) else "X" if seen[i, j] else "." for j in range(size))
                    for i in range(size)))
    for r in range(1, c + 1):
        cols = seen[c - r].nonzero().flatten() - c
        print(f"{r} row(s) up: " + (f"columns {cols.min():+d} to {cols.max():+d}" if len(cols) else "none"))

torch.manual_seed(0)
tiny = dict(levels=2, embed_dim=4, channels=8, layers=3, first_kernel=3, head_channels=8)
plain = build(PixelCNNConfig(**tiny))
gated = build(PixelCNNConfig(**{**tiny, "layers": 4}, gated=True))
print("PixelCNN (a 3x3 type-A layer, then 3 blocks with a 3x3 type-B):")
report(receptive_field(plain))
print("\\nGated PixelCNN (4 layers of 3x3):")
report(receptive_field(gated))
"""),
        md("""
The plain stack reaches 4 rows up and 4 columns left (its four 3x3 layers), but $r$ rows up it
reaches only $r$ columns to the right: the positions above it and to its right where the column
offset exceeds the row offset (1 row up, columns +2 to +4; 2 rows up, +3 and +4; 3 rows up, +4)
are the blind spot, a wedge beside the diagonal. The gated stack sees a plain rectangle of every
row above (to both sides, as far as its reach) and the current row to the left, and nothing from
the centre on.
"""),
        md("""
## Training on binarised images

Binarised Fashion-MNIST (thresholded at 128) when it is installed, else binarised shapes. Every
pixel is a token of two values; the loss is the cross-entropy in nats per pixel ($\\log 2 = 0.693$
for a coin flip).
"""),
        code("""
if datasets.on_disk("fashion-mnist-binary"):
    name = "fashion-mnist-binary"
    data = datasets.load(name, train_limit=1000, test_limit=200)
    train, test = data.train, data.test
else:  # the shapes' grey level, thresholded: needs no files
    from lvm.homework.helpers import binary_data, from_hwc
    name = "shapes-binary"
    train, test = (from_hwc(a) for a in binary_data(name, train_limit=1000, test_limit=200))
print(name, "train", tuple(train.shape), train.dtype, "values", train.unique().tolist())
""", ignore=True),
        code("""
model = build(PixelCNNConfig(levels=2, gated=True, embed_dim=8, channels=16, layers=4, head_channels=32))
print("parameters:", n_params(model))
"""),
        code("""
hist = fit(model, train, test, TrainConfig(epochs=2, batch_size=32, lr=2e-3, grad_clip=1.0, device="cpu"))
print(f"test NLL: {hist.test['loss'][0]:.3f} -> {hist.test['loss'][-1]:.3f} nats per pixel")
show(plotting.plot_training(hist.train, hist.test, out / "curves.png", f"gated pixelcnn on {name}",
                            {"loss": "NLL (nats per pixel)"}))
""", ignore=True),
        md("""
Sampling is sequential, one pixel at a time in raster order, at the training images' size: H x W
steps, each predicting one pixel for all samples at once. Each step computes only what that pixel
can see (the gated model: the vertical stack once per row, then the horizontal stack along the
row so far), which gives exactly the logits of a pass over the whole image.
"""),
        code("""
model.eval()
H, W = train.shape[-2:]
print(f"{H} x {W} = {H * W} sampling steps")
samples = model.sample(25, (H, W))                              # (25, H, W) tokens 0/1
show(plotting.save_image_grid(samples[:, None].float(), out / "samples.png", "25 samples", nrow=5),
     plotting.save_image_grid(train[:25].float(), out / "data.png", "25 training images", nrow=5))
""", ignore=True),
        md("""
After two short epochs of a small model the samples are white patches on a black background: the
data's local texture, not yet its garments. A PixelCNN over a whole image needs far more training;
`lvm run pixelcnn -o gated=true` trains a Gated PixelCNN of the course's Q4a size (15 layers of
128 channels) for 10 epochs on binarised Fashion-MNIST.
"""),
    ]


def nb06() -> list[dict]:
    return [
        md("""
# 6. PixelVAE: a VAE with an autoregressive decoder

The course's Q4b (`lvm/pixelvae/model.py`; Gulrajani et al., 2017). A VAE whose decoder is a
PixelCNN: $p(x|z) = \\prod_i p(x_i \\mid x_{<i}, z)$, each pixel a Bernoulli variable of a binarised
image, in raster order.

- Encoder: three convolutions and a linear layer to $(\\mu, \\log\\sigma)$ of a 16-d Gaussian $q(z|x)$.
- Decoder: $z$ goes through a transposed-convolution net (the shape of the VAE's decoder) to a
  **spatial map** $m(z)$ of the image's size; a Gated PixelCNN (notebook 5) reads the pixels, and
  every one of its layers adds its own 1x1 projection of $m(z)$ before the gate. A map rather than
  one global vector: it can tell each pixel where the garment's outline runs, which a
  translation-invariant stack could hardly work out from a vector.
- Loss, in nats per image: the reconstruction $-\\log p(x|z)$ summed over pixels, plus the KL to
  $\\mathcal N(0, I)$ **with free bits**.

**Posterior collapse.** $-\\mathrm{ELBO}(x) = -\\log p(x) + \\mathrm{KL}(q(z|x)\\,\\|\\,p(z|x))$. A
PixelCNN can model $p(x)$ well on its own, so there is an optimum where the decoder ignores $z$,
$q(z|x) = p(z)$ and the KL is 0: the latent is unused. Training tends to fall into it: early on $z$
is noise, the pixels to the left and above say more about the next pixel, and from the very first
step the KL's gradient pulls every $q(z|x)$ towards the prior. Once $z$ carries nothing, the
decoder learns to ignore it, and nothing pushes information back in.

**Free bits.** Charge the KL only above a floor $\\lambda$. In Kingma et al. (2016), who named
the idea, the latents are split into groups $z_j$ and the floor applies to each group's KL
*averaged over the minibatch* $M$: the loss uses
$\\sum_j \\max\\big(\\lambda,\\ \\mathbb E_{x \\in M}\\,\\mathrm{KL}(q(z_j|x)\\,\\|\\,p(z_j))\\big)$.
The course's solution (rll/deepul, `homeworks/solutions/hw3_solutions.ipynb`,
`PixelVAE(free_bits=10)`) makes its own choice, and `lvm` follows its formula: one group, and the
floor on **each image's** total KL (summed over the 16 dimensions), $\\max(\\mathrm{KL}(x), \\lambda)$
with $\\lambda$ = **10 nats**, then the mean over the batch. Below $\\lambda$ nats an image's KL
costs nothing and has no gradient, so the encoder may put $\\lambda$ nats into $z$ for free and the
decoder has a reason to read them. We report the true KL as `kl_loss`, and -ELBO = recon + KL.

`lvm`'s default floor is 0, the plain ELBO; the course's is `-o free_bits=10` (the homework's Q4b
keeps it). At the results row's budget (20,000 images x 3 epochs) $z$ carries about 4.4 nats with
no floor, and the course's floor only pins the KL on 10 nats, at the same -ELBO and with worse
samples (`figures/pixelvae/variants-20000x3-*.json`). The small runs below show the other side:
at a budget this small, with no floor $z$ carries almost nothing.
"""),
        code(SETUP),
        code("""
torch.set_num_threads(1)  # sampling is H x W tiny passes: a second thread only waits on a shared CPU
from lvm.pixelvae import PixelVAE, PixelVAEConfig

print(PixelVAEConfig())
print("parameters, PixelVAE:", n_params(PixelVAE(PixelVAEConfig())))
print("parameters, the same VAE with a factorised decoder:", n_params(PixelVAE(PixelVAEConfig(autoregressive=False))))
"""),
        md("""
## Autoregressive given $z$, and $z$ everywhere

Which inputs does the logit of the centre pixel of a 9x9 image depend on? Gradients tell: `X` =
it depends on that pixel, `.` = it does not, `o` = the centre itself. Every earlier pixel in raster
order, nothing from the centre on. And every pixel's logit depends on $z$.
"""),
        code("""
torch.manual_seed(0)
small = PixelVAE(PixelVAEConfig(shape=(1, 9, 9), latent_dim=4, enc_widths=(4, 8, 8), map_widths=(8, 8, 4),
                                channels=8, n_layers=5, first_kernel=3)).double()
x = torch.randn(1, 1, 9, 9, dtype=torch.double, requires_grad=True)     # a continuous stand-in for the pixels
z = torch.randn(1, 4, dtype=torch.double, requires_grad=True)
logits = small.decoder(x, small.latent_map(z))                           # (1, 1, 9, 9)
logits[0, 0, 4, 4].backward()
seen = x.grad[0, 0] != 0
print("\\n".join(" ".join("o" if (i, j) == (4, 4) else "X" if seen[i, j] else "." for j in range(9)) for i in range(9)))

def z_grad(i, j):
    z.grad = None
    small.decoder(x.detach(), small.latent_map(z))[0, 0, i, j].backward()
    return z.grad.abs().sum().item()
print("pixels whose logit has a zero gradient in z:", sum(z_grad(i, j) == 0 for i in range(9) for j in range(9)))
"""),
        md("""
## Free bits, as a gradient

Two posteriors of 4 dimensions, one carrying 2 nats, one 18. Under the floor of 10 nats, the
clamped KL gives $\\mu$ no gradient; above it, the gradient of the plain KL, $\\mu$ itself.
"""),
        code("""
from lvm.blocks.distributions import gaussian_kl

mu = torch.tensor([[2.0, 0.0, 0.0, 0.0], [3.0, 3.0, 3.0, 3.0]], requires_grad=True)
log_std = torch.zeros(2, 4)
kl = gaussian_kl(mu, log_std)                 # (2,): 2 and 18 nats
kl.clamp(min=10.0).sum().backward()
for k, g in zip(kl.tolist(), mu.grad.tolist()):
    print(f"KL {k:5.2f} nats -> d loss / d mu = {g}")
"""),
        md("""
## With and without free bits, on binarised images

Binarised Fashion-MNIST at its native 28x28 when it is installed (thresholded at 128), else
binarised shapes. Two small PixelVAEs, identical but for the floor (0 = the plain ELBO, 10 = the
course's), the same data, seed and budget. Their outputs depend on the data found, so they are
not compared by the tests.
"""),
        code("""
if datasets.on_disk("fashion-mnist-binary"):
    name = "fashion-mnist-binary"
    data = datasets.load(name, train_limit=2000, test_limit=500)
    train, test = data.train, data.test
    if train.shape[-1] == 32:                  # zero-padded to 32 x 32 by the loader: back to 28 x 28
        train, test = train[..., 2:-2, 2:-2].contiguous(), test[..., 2:-2, 2:-2].contiguous()
else:  # the shapes' grey level, thresholded: needs no files
    from lvm.homework.helpers import binary_data, from_hwc
    name = "shapes-binary"
    train, test = (from_hwc(a) for a in binary_data(name, train_limit=2000, test_limit=500))
print(name, "train", tuple(train.shape), train.dtype, "values", train.unique().tolist())
""", ignore=True),
        code("""
small_cfg = dict(shape=tuple(train.shape[1:]), enc_widths=(16, 32, 32), map_widths=(32, 16, 16),
                 channels=16, n_layers=3)
runs = {}
for floor in (0.0, 10.0):
    torch.manual_seed(0)
    model = PixelVAE(PixelVAEConfig(**small_cfg, free_bits=floor))
    hist = fit(model, train, test, TrainConfig(epochs=3, batch_size=64, lr=1e-3, device="cpu", seed=0))
    runs[floor] = (model, hist)
    t = {k: v[-1] for k, v in hist.test.items()}
    print(f"free bits {floor:4.1f}: -ELBO {t['recon_loss'] + t['kl_loss']:7.2f}  recon {t['recon_loss']:7.2f}  KL {t['kl_loss']:5.2f}")
show(plotting.plot_training(runs[10.0][1].train, runs[10.0][1].test, out / "curves.png",
                            f"pixelvae (free bits 10) on {name}",
                            {"loss": "recon + max(KL, 10)", "recon_loss": "recon", "kl_loss": "KL"}))
""", ignore=True),
        code("""
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 3))
for floor, (_, hist) in runs.items():
    ax.plot(hist.train["kl_loss"], label=f"free bits {floor:g}")
ax.set_xlabel("training step"); ax.set_ylabel("KL (nats per image)"); ax.legend(); ax.grid(alpha=0.3)
fig.savefig(out / "kl.png", dpi=100, bbox_inches="tight"); plt.close(fig)
show(out / "kl.png")
""", ignore=True),
        md("""
Without the floor, z carries little: its KL stays near 0 through the first steps and ends low.
With the floor, the encoder fills z towards 10 nats, which cost it nothing. At this budget those
nats do not pay yet: the run with the floor ends with the higher -ELBO (the two lines printed
above), its decoder not having learnt to read them.
"""),
        md("""
Samples draw $z \\sim \\mathcal N(0, I)$, then the pixels one by one from the decoder (one pass
per pixel, H x W of them). Reconstructions draw from $p(x|z)$ at the posterior mean $z = \\mu(x)$,
as the course's solution does: a draw, not a copy. The cell also prints the share of white
pixels in each.
"""),
        code("""
model = runs[10.0][0].eval()
torch.manual_seed(0)
samples = model.sample(25)                                  # (25, 1, H, W) of 0/1
x = test[:10]
recon = model.reconstruct(x)                                # (10, 1, H, W) of 0/1
print(f"share of white pixels: test images {x.float().mean():.2f}, their draws {recon.mean():.2f}, "
      f"samples {samples.mean():.2f}")
show(plotting.save_image_grid(samples, out / "samples.png", "25 samples (free bits 10)", nrow=5))
show(plotting.save_reconstructions(x.float(), recon, out / "recon.png",
                                   "test images (left) and draws from p(x | z = mu(x))"))
""", ignore=True),
        md("""
Three epochs of a small model are not enough: samples and draws are mostly black, with far
fewer white pixels than the data (the shares above). The decoder has learnt the black background
but not yet what z says about the outline. The longer run below, on six times the images with a
larger model, gets the outlines back.
"""),
        md("""
## The longer run: PixelVAE against a plain VAE

`benchmarks/pixelvae_vs_vae.py` trains the PixelVAE and the same model with a factorised
Bernoulli decoder (one logit per pixel from the same map of $z$: a plain VAE) on binarised
Fashion-MNIST, 28x28, for the same images and epochs, and stores its numbers and figures under
`figures/pixelvae/`.
"""),
        code("""
import json
figs = Path("..") / "figures" / "pixelvae"
result_file = figs / "vs_vae-fashion-mnist-binary.json"
if result_file.exists():
    result = json.loads(result_file.read_text())
    print(f"budget: {result['train_size']} images x {result['epochs']} epochs, batch {result['batch_size']}, "
          f"{result['device']} ({result['cpu_flags']})")
    for name, run in result["runs"].items():
        t = run["test"]
        print(f"{name:9s} -ELBO {t['neg_elbo']:7.2f}  recon {t['recon_loss']:7.2f}  KL {t['kl_loss']:6.2f}  "
              f"({run['train_seconds']:.0f} s)")
    show(figs / "pixelvae_samples.png", figs / "pixelvae_reconstructions.png")
else:
    print("no", result_file, "yet: run benchmarks/pixelvae_vs_vae.py")
""", ignore=True),
    ]


def nb07() -> list[dict]:
    return [
        md("""
# 7. Evaluation: likelihood a researcher can trust, and what it cannot see

Every number the other notebooks print is a training objective. This one computes what the
literature reports, with `lvm eval`'s own functions (`lvm/engine/evaluate.py`,
`lvm/engine/quality.py`; the reference is `docs/evaluation.md`):

1. why the ELBO is only a **bound** on $\\log p(x)$;
2. how the **importance-sampled** estimate (IWAE, Burda et al. 2015) tightens as the number of
   samples $k$ grows, on vae2d, whose 2-D latent lets us compute $\\log p(x)$ *exactly*;
3. what **Fréchet distance** and **precision/recall** see in samples that the likelihood does not.

## Why the ELBO is a bound

For any $q(z|x)$, $\\;p(x) = \\mathbb E_{q}\\big[\\,p(x, z) / q(z|x)\\,\\big]$, and the log of an average is
at least the average of the logs (Jensen):

$$\\log p(x) \\;\\ge\\; \\mathbb E_q\\big[\\log p(x,z) - \\log q(z|x)\\big] = \\mathrm{ELBO}(x),
\\qquad \\log p(x) - \\mathrm{ELBO}(x) = \\mathrm{KL}\\big(q(z|x)\\,\\|\\,p(z|x)\\big) \\ge 0.$$

The **IWAE** estimate moves the average of $k$ weights $w_j = p(x, z_j)/q(z_j|x)$, $z_j \\sim q$,
inside the log: $\\;\\mathcal L_k = \\log \\frac1k \\sum_j w_j$. Its expectation is still a lower
bound, $\\mathcal L_1$ is the ELBO, and $\\mathbb E\\,\\mathcal L_k$ rises with $k$ to $\\log p(x)$.
Models implement `log_weights(x, k)` (the $\\log w_j$); the engine takes their log-mean-exp in float64.
"""),
        code(SETUP),
        code("""
from lvm.engine.evaluate import importance_sampled
from lvm.vae2d import VAE2d, VAE2dConfig

data = datasets.load("gaussians-a1")
torch.manual_seed(0)
model = VAE2d(VAE2dConfig(hidden=(64, 64))).standardise_with(data.train)
fit(model, data.train, data.test, TrainConfig(epochs=3, batch_size=128, lr=1e-3, device="cpu"))
model.eval()
x = data.test[:300]
exact = model.log_prob_by_quadrature(x)  # log p(x) summed over a 601 x 601 grid of z
print(f"exact test NLL of these 300 points: {-exact.mean().item():.4f} nats")
""", ignore=True),
        md("""
The exact value comes from the midpoint rule over a grid of $z$: $p(x) = \\int p(x|z)\\,p(z)\\,dz$.
Only a 2-D latent allows this; for the image models the estimate is all there is.
Now the estimate for growing $k$, each averaged over 10 independent repeats so that what we see
is the bound's expectation, not one noisy draw:
"""),
        code("""
import matplotlib.pyplot as plt

ks, gaps, elbos = [1, 3, 10, 30, 100, 300, 1000], [], []
torch.manual_seed(1)
for k in ks:
    log_p, elbo = importance_sampled(model, x.repeat(10, 1), k, units=20_000)
    gaps.append((exact.repeat(10) - log_p).mean().item())
    elbos.append(-elbo.mean().item())
    print(f"k = {k:5d}   -log p estimate {-log_p.mean().item():.4f}   gap to exact {gaps[-1]:.5f} nats")
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.loglog(ks, [max(g, 1e-6) for g in gaps], "o-")
ax.set_xlabel("k (importance samples)"); ax.set_ylabel("exact log p(x) - IWAE estimate (nats)")
ax.set_title("vae2d: the IWAE bound tightens with k")
fig.tight_layout(); fig.savefig(out / "iwae.png", dpi=100); plt.close(fig)
show(out / "iwae.png")
""", ignore=True),
        md("""
At $k = 1$ the gap is the KL between $q(z|x)$ and the true posterior, averaged over the points; it
falls roughly as $1/k$ until it is smaller than the estimate's own noise (about $10^{-3}$ nats
here; the bias of the IWAE estimator is about $\\mathrm{Var}[w] / (2k\\,\\mathbb E[w]^2)$).
`lvm eval` reports both: `elbo` (the mean of the log weights) and `nll` (their log-mean-exp). The
tests (`tests/test_evaluate.py`) assert what this shows: at $k = 1000$ the estimate is within 0.003
nats of the exact value.

For 8-bit images the likelihood must be a *probability* of the 256 levels of each value, not a
density, or bits/dim are meaningless: `docs/evaluation.md` says how each decoder becomes one.

## What the likelihood cannot see

Theis, van den Oord & Bethge (2016) give the classic example: mix a good model with weight 1% and
pure noise with weight 99%. Every log-likelihood drops by at most $\\log 100 \\approx 4.6$ nats, per
image, whatever its size, while 99 samples in 100 are noise:
"""),
        code("""
import math

D = 3 * 32 * 32
print(f"at most {math.log(100):.2f} nats per image = {math.log(100) / (D * math.log(2)):.4f} bits/dim on 3x32x32 images")
"""),
        md("""
Sample metrics look at the samples themselves, in the feature space of a classifier lvm trains on
the dataset's labels (`lvm.engine.quality`; here a narrow one on 3,000 generated shapes, a few
seconds):

- **Fréchet distance**: Gaussians fitted to the features of samples and of real images, compared;
- **precision**: the fraction of samples inside the real images' k-NN balls (are they realistic?);
- **recall**: the fraction of real images inside the samples' balls (is the data's variety covered?).
"""),
        code("""
from lvm.engine.quality import sample_quality, train_classifier

def nchw(a):
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()

xs, ys = datasets.make_shapes(3000, seed=0, labels=True)
xt, yt = datasets.make_shapes(1000, seed=1, labels=True)
torch.manual_seed(0)
clf, acc = train_classifier(nchw(xs), torch.from_numpy(ys), nchw(xt), torch.from_numpy(yt), "image", epochs=3, width=16)
print(f"classifier test accuracy {acc:.2f} on 6 classes")
""", ignore=True),
        code("""
real, held_out, classes = nchw(xt)[:500], nchw(xt)[500:], torch.from_numpy(yt)[500:]
g = torch.Generator().manual_seed(0)
noise = torch.randint(0, 256, held_out.shape, generator=g, dtype=torch.uint8)
mixture = torch.where((torch.rand(len(held_out), generator=g) < 0.01)[:, None, None, None], held_out, noise)
one_class = held_out[classes == 0]
cases = {"real images (other half)": held_out, "1% real, 99% noise": mixture,
         "one class only (lone circles)": one_class, "as many of every class": held_out[: len(one_class)]}
for name, fake in cases.items():
    q = sample_quality(clf, fake, real)
    print(f"{name:30s} N {q['samples']:3d}  fd {q['fd']:9.2f}  precision {q['precision']:.2f}  recall {q['recall']:.2f}")
""", ignore=True),
        md("""
The noisy mixture, at most 0.002 bits/dim worse in likelihood, has an enormous FD and almost no
precision. (Its recall is high, and wrongly so: the noise images lie far apart in feature space,
so their k-NN balls are huge and swallow the real images. A known weakness of k-NN recall, and one
reason to read all three numbers together.) The single-class samples are every bit as realistic (precision stays high) but cover
one class: recall collapses, and the FD (compare at equal N: it grows as N shrinks) is far above
that of as many varied images. The NLL, an average over test images, would not tell these apart
from a good model with a few nats to spare; the sample metrics do, and the NLL in turn catches
what samples hide (a model that memorises its training set has perfect samples and a poor test
likelihood). `lvm eval` reports both, and the classifier's accuracy beside every FD: features of a
classifier that cannot tell the classes apart measure nothing.
"""),
    ]


NOTEBOOKS = {"01": ("01_vae2d", nb01), "02": ("02_vae", nb02), "03": ("03_vlae", nb03),
             "04": ("04_vqvae", nb04), "05": ("05_pixelcnn", nb05), "06": ("06_pixelvae", nb06),
             "07": ("07_evaluation", nb07)}

if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    unknown = [a for a in flags if a != "--no-run" and not a.startswith("--root=")]
    unknown += [a for a in args if a not in NOTEBOOKS]
    if unknown:  # anything else (--help included) would rewrite and run every notebook in place
        sys.exit(f"make_notebooks: unknown {' '.join(unknown)}; usage:\n{__doc__}")
    root = Path(next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--root=")), ROOT))
    for key in args or list(NOTEBOOKS):
        stem, make = NOTEBOOKS[key]
        path = root / f"{stem}.ipynb"
        write(path, make())
        if "--no-run" not in sys.argv:
            print(f"{path}: executed in {execute(path):.1f} s", flush=True)
        else:
            print(f"wrote {path}")
