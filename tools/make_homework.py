"""Write the blank homework notebooks `homework/q*.ipynb` (no outputs: students run them).

    python tools/make_homework.py
"""

from __future__ import annotations

from pathlib import Path

from nbtools import code, md, write

ROOT = Path(__file__).resolve().parent.parent / "homework"

SETUP = code("""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lvm.homework import *  # the course's helpers: data, pictures, *_save_results
""")

DATA = md("""
The course's data files `svhn.pkl`, `cifar10.pkl` and `mnist.pkl` are read from the data folder
(`$LVM_DATA_DIR`, else `~/.cache/lvm`). The next cell lets you work without them: a missing file
is replaced by an offline stand-in (the generated colour `shapes` for SVHN and CIFAR-10,
binarised Fashion-MNIST for MNIST), with a note saying so. Where the files are there, they are used.
""")

STANDIN = code("use_standin()")

CHECK = """
## Check your work

Before you hand in, run the grader from the repository root. It reads only the imports and the
function definitions of this notebook (the cells that train or plot are skipped), calls your
functions on a small slice of data and checks what they return (shapes, value ranges, losses that
fall, one test loss per epoch plus one at initialisation):

```bash
lvm grade homework/{name}
```

Your functions run with their own budget there, each question in a process of its own with a
time limit (`--timeout`, default 600 s); `grading()` is True while the grader calls them, so
`epochs = 2 if grading() else 20` makes grading quick. Grading runs your code, as any grader must.
"""


# the arguments of every question on the colour images (Q2, Q3), as its docstring lists them
IMAGE_ARGS = """    train_data: uint8 array (n_train, 32, 32, 3), values 0..255
    test_data: uint8 array (n_test, 32, 32, 3)
    dset_id: 1 SVHN, 2 CIFAR-10
"""


def todo(definition: str) -> dict:
    """The cell where a student writes a function: its def line and docstring, then the stub."""
    return code(definition + "    # YOUR CODE HERE\n    raise NotImplementedError\n")


def saves(call: str) -> list[dict]:
    """One cell per dataset (1, 2) that saves a question's results: `call` with {} for the id."""
    return [code(call.format(dset_id)) for dset_id in (1, 2)]


def q1() -> list[dict]:
    return [
        md("""
# Question 1: a VAE on two-dimensional data

You will fit a variational autoencoder to four small 2-D datasets and look at **when the latent
variable gets used**.

Each dataset is a Gaussian blob with a diagonal covariance (part **b**) or the same blob rotated
by 45 degrees (part **a**). Both parts have two datasets (`dset_id` 1 and 2) that differ in which
axis is stretched. Training data: 10,000 points; test data: 2,500 points; both float32 arrays of
shape `(N, 2)`.

## What to build

- An encoder: a small MLP giving the mean and log standard deviation of a diagonal Gaussian
  q(z|x) over a **2-D** latent z.
- A decoder: a small MLP giving the mean and log standard deviation of a diagonal Gaussian
  p(x|z) (the decoder's variance is learned, not fixed).
- Train by maximising the evidence lower bound

  $$\\log p(x) \\ge \\mathbb{E}_{q(z|x)}[\\log p(x|z)] - \\mathrm{KL}(q(z|x)\\,\\|\\,\\mathcal N(0, I)),$$

  using the reparameterisation $z = \\mu + \\sigma \\odot \\varepsilon$, $\\varepsilon \\sim \\mathcal N(0, I)$.
  The KL term between two Gaussians has a closed form: use it.

Suggested budget: Adam with learning rate 1e-3, batch 128, about 20 epochs.

## Deliverables

For each of the four (part, dataset) pairs:
1. The training curve: -ELBO, reconstruction loss and KL loss for **every training minibatch**,
   and the same three on the **test set before training and after every epoch**.
2. The final test -ELBO, reconstruction and KL loss (printed by `q1_save_results`).
3. 1,000 samples from the model **with** decoder noise (z ~ p(z), then x ~ p(x|z)), and 1,000
   **without** it (the decoder means alone).
4. A few sentences: in which part does the model use its latent variable, and why? Compare the
   two kinds of samples.
"""),
        SETUP,
        md("## The data"),
        code("""
visualize_q1_data('a', 1)
visualize_q1_data('a', 2)
visualize_q1_data('b', 1)
visualize_q1_data('b', 2)
"""),
        md("""
## Your solution

Write `q1` below. You may add helper functions and classes in this cell or in new cells above it.
All losses are **averaged over the batch, summed over the two dimensions, in nats**.
"""),
        todo('''
def q1(train_data, test_data, part, dset_id):
    """
    train_data: float32 array (n_train, 2)
    test_data: float32 array (n_test, 2)
    part: 'a' or 'b'
    dset_id: 1 or 2

    Returns
    - train_losses: array (n_minibatches, 3): -ELBO, reconstruction loss, KL loss of every
      training minibatch, in the order they were trained on
    - test_losses: array (n_epochs + 1, 3): the same three on the whole test set, before
      training (row 0) and after every epoch
    - samples_noise: array (1000, 2): z ~ p(z), then x ~ p(x|z)
    - samples_nonoise: array (1000, 2): z ~ p(z), then the mean of p(x|z)
    """
'''),
        md("## Results"),
        *saves("q1_save_results('a', {}, q1)"),
        *saves("q1_save_results('b', {}, q1)"),
        md("""
## Your answers

*Where does the model use its latent variable (look at the final KL), and why there and not in
the other part? What do the samples without decoder noise look like, and why?*

YOUR ANSWER HERE
"""),
        md(CHECK.format(name="q1_vae2d.ipynb")),
    ]


def q2() -> list[dict]:
    return [
        md("""
# Question 2: VAEs on images, with a plain and a learned prior

You will train two VAEs on 32x32 colour images:

- **(a)** a convolutional VAE with a 16-dimensional latent and a standard normal prior;
- **(b)** the same VAE whose prior is an **autoregressive flow** (the VLAE): a MADE network reads
  z and gives, for every dimension i, a shift $\\mu_i(z_{<i})$ and a log-scale $s_i(z_{<i})$, and
  $\\varepsilon_i = z_i\\, e^{s_i} + \\mu_i$. Because the Jacobian of z -> eps is triangular,

  $$\\log p(z) = \\log \\mathcal N(\\varepsilon; 0, I) + \\sum_i s_i(z_{<i}).$$

  The KL term no longer has a closed form: estimate it with the reparameterised sample,
  $\\log q(z|x) - \\log p(z)$. To sample, invert the flow one dimension at a time.

Data: uint8 arrays `(N, 32, 32, 3)`, values 0..255, channels last: SVHN (`dset_id` 1) and
CIFAR-10 (`dset_id` 2), or their stand-in (see below). Scale them to [-1, 1].

## Architecture that works (the course's)

- Encoder: conv(3, 32, 3, 1, 1) relu conv(32, 64, 3, 2, 1) relu conv(64, 128, 3, 2, 1) relu
  conv(128, 256, 3, 2, 1) relu, flatten, linear(4*4*256, 2*16).
- Decoder: linear(16, 4*4*128) relu, reshape, convT(128, 128, 4, 2, 1) relu convT(128, 64, 4, 2, 1)
  relu convT(64, 32, 4, 2, 1) relu conv(32, 3, 3, 1, 1).
- Reconstruction loss: squared error **summed over pixels and channels** on the [-1, 1] scale,
  averaged over the batch. MADE for (b): two hidden layers of 512.
- Adam 1e-3, batch 128, 20 epochs.
- A tip beyond the course: if your reconstructions come back grey (as this network's do on the
  `shapes` stand-in, even after 20 epochs), put a `nn.BatchNorm2d` between every hidden conv and
  its ReLU, and call `model.eval()` before drawing pictures. The reference solution does; the
  README's *Colour* section has the experiment.

## Deliverables (for each part and each dataset you use)

1. Training curve (every minibatch) and test curve (before training and after every epoch) of
   -ELBO, reconstruction and KL; the final test numbers.
2. 100 samples (decoder means of z ~ p(z)).
3. 50 test images, each followed by its reconstruction (100 images).
4. 10 interpolations of 10 steps: decode evenly spaced points between the latent means of two
   test images (100 images).
5. A few sentences: how do (a) and (b) differ in KL, reconstruction and samples?
"""),
        SETUP,
        DATA,
        STANDIN,
        md("## The data"),
        code("visualize_svhn()"),
        code("visualize_cifar10()"),
        md("## Part (a): VAE"),
        todo('''
def q2_a(train_data, test_data, dset_id):
    """
''' + IMAGE_ARGS + '''
    Returns
    - train_losses: array (n_minibatches, 3): -ELBO, reconstruction loss, KL loss per minibatch
    - test_losses: array (n_epochs + 1, 3): the same on the test set, before training and after every epoch
    - samples: float array (100, 32, 32, 3) with values in [0, 255]
    - reconstructions: float array (100, 32, 32, 3) in [0, 255]: 50 pairs, each a test image then its reconstruction
    - interpolations: float array (100, 32, 32, 3) in [0, 255]: 10 rows of 10 steps
    """
'''),
        *saves("q2_save_results('a', {}, q2_a)"),
        md("## Part (b): VLAE, a VAE with an autoregressive-flow prior"),
        todo('''
def q2_b(train_data, test_data, dset_id):
    """Same arguments and return values as q2_a."""
'''),
        *saves("q2_save_results('b', {}, q2_b)"),
        md("""
## Your answers

*Compare the final KL and reconstruction losses of (a) and (b). Why can a learned prior lower the
KL term? Do the samples differ?*

YOUR ANSWER HERE
"""),
        md(CHECK.format(name="q2_vae_vlae.ipynb")),
    ]


def q3() -> list[dict]:
    return [
        md("""
# Question 3: VQ-VAE with a PixelCNN prior

A VQ-VAE replaces the continuous latent of a VAE by a grid of **discrete codes**. The encoder
maps a 32x32 image to an 8x8 map of D-dimensional vectors $z_e$; each vector is replaced by its
nearest entry of a codebook $\\{e_1, \\dots, e_K\\}$; the decoder maps the quantised map back to an
image. Training minimises

$$\\|x - \\hat x\\|^2 + \\|\\mathrm{sg}(z_e) - e\\|^2 + \\beta\\, \\|z_e - \\mathrm{sg}(e)\\|^2,$$

where sg stops the gradient: the second term (codebook) moves codes towards the encoder's
outputs, the third (commitment, beta = 1) keeps the encoder near its codes. The nearest-code
lookup has no gradient; the **straight-through estimator** copies the decoder's gradient with
respect to the quantised vectors onto the encoder's outputs (`z_q = z_e + (e - z_e).detach()`).

The VQ-VAE has no prior of its own. Once it is trained, encode the training set to 8x8 grids of
code indices and fit an autoregressive **PixelCNN** over them (a type-A masked 7x7 convolution,
residual blocks of type-B masked convolutions, a 1x1 head to K logits). To sample, draw a grid
position by position from the PixelCNN and decode it.

## Architecture that works (the course's)

- K = 128 codes of D = 256, initialised uniformly in [-1/K, 1/K].
- Encoder: conv(3, 256, 4, 2, 1) BN relu conv(256, 256, 4, 2, 1) resblock resblock.
- Decoder: resblock resblock BN relu convT(256, 256, 4, 2, 1) BN relu convT(256, 3, 4, 2, 1).
- resblock(x) = x + [BN relu conv(3x3) BN relu conv(1x1)](x).
- Reconstruction loss: **mean** squared error per pixel on [-1, 1]. Adam 1e-3, batch 128,
  gradient clipping at 1, 20 epochs; the prior 15 epochs, losses in nats per code.

## Deliverables (per dataset)

1. VQ-VAE training curve (per minibatch) and test curve (initialisation and every epoch), and
   the same for the PixelCNN prior; the final test losses.
2. 100 samples; 50 test images each followed by its reconstruction.
3. A few sentences: how many codes does your VQ-VAE use? How do samples compare with Q2's?
"""),
        SETUP,
        DATA,
        STANDIN,
        todo('''
def q3(train_data, test_data, dset_id):
    """
''' + IMAGE_ARGS + '''
    Returns
    - vqvae_train_losses: array (n_minibatches,): the VQ-VAE loss of every training minibatch
    - vqvae_test_losses: array (n_epochs + 1,): on the test set, before training and after every epoch
    - prior_train_losses: array (n_prior_minibatches,): the PixelCNN's NLL per code, per minibatch
    - prior_test_losses: array (n_prior_epochs + 1,)
    - samples: float array (100, 32, 32, 3) with values in [0, 255]
    - reconstructions: float array (100, 32, 32, 3) in [0, 255]: 50 pairs (test image, reconstruction)
    """
'''),
        *saves("q3_save_results({}, q3)"),
        md("""
## Your answers

*How many of the K codes does your model use on the test set? What happens to unused codes, and
what could revive them? How do the samples compare with the VAE's of Q2?*

YOUR ANSWER HERE
"""),
        md(CHECK.format(name="q3_vqvae.ipynb")),
    ]


def q4() -> list[dict]:
    return [
        md("""
# Question 4: a Gated PixelCNN prior, and the PixelVAE

## Part (a): a Gated PixelCNN prior for the VQ-VAE

A PixelCNN built from masked 3x3 convolutions never sees part of the past: the receptive field of
a stack of such layers grows up and to the left but leaves a **blind spot** above and to the right
of each pixel. The **Gated PixelCNN** splits every layer into two stacks:

- a **vertical** stack that sees every pixel of the rows above (to both sides);
- a **horizontal** stack that sees the pixels to the left in the current row, and receives the
  vertical stack's features (shifted down by one row, so that it never sees the current row
  through them).

Both use the gated activation $\\tanh(W_f * x) \\odot \\sigma(W_g * x)$; the horizontal stack has
a residual connection. The union of the two receptive fields is the whole past, with no blind spot.

Repeat Q3 with a Gated PixelCNN prior (15 gated layers of 128 channels) in place of the
PixelCNN. Same data, same contract, same deliverables. Compare the prior's test NLL with Q3's.
(The course notebook `notebooks/05_pixelcnn.ipynb` trains a Gated PixelCNN directly on binary
images, and shows the blind spot.)

## Part (b): the PixelVAE

A VAE with a factorised decoder must put every detail of an image into its latent; a PixelCNN
models the details but learns no latent. The **PixelVAE** joins them: its decoder is a PixelCNN
over the pixels, **conditioned on z**,

$$p(x \\mid z) = \\prod_i p(x_i \\mid x_{<i}, z),$$

so z can carry the global structure (which digit, its slant) and the PixelCNN the local
texture. A decoder this strong may learn to ignore z (the KL term falls to 0: posterior
collapse). **Free bits** prevent it: the KL term counts only above a floor of lambda nats,
$\\max(\\lambda, \\mathrm{KL})$, so the first lambda nats of information in z cost nothing.

Data: binarised MNIST, uint8 arrays `(N, 28, 28, 1)` of 0/1 (the course's `mnist.pkl`,
thresholded at 127.5 by the helper; or its stand-in, binarised Fashion-MNIST).

## Architecture that works (the course's)

- Encoder: convolutions down to a 16-dimensional diagonal Gaussian q(z|x).
- Decoder: map z to a feature map the size of the image (a linear layer and transposed
  convolutions) and add it into every masked convolution of a PixelCNN (a type-A 7x7 layer, then
  type-B layers), ending in one logit per pixel: a Bernoulli p(x_i | x_<i, z).
- Free bits lambda = 10 nats (on the KL of the whole latent). Adam 1e-3, batch 128, 10 epochs.
- Report -ELBO = reconstruction + KL **with the true KL** (not the free-bits floor), in nats per
  image, averaged over the batch. The course's solution reached a test -ELBO of 85.93 (recon
  60.12, KL 25.81).

## Deliverables (part b)

1. Training curve (every minibatch) and test curve (before training and after every epoch) of
   -ELBO, reconstruction and KL; the final test numbers.
2. 100 samples `(100, 28, 28, 1)` of 0/1: z ~ p(z), then the pixels one at a time.
3. 50 test images, each followed by its reconstruction `(100, 28, 28, 1)` of 0/1.
4. A few sentences: how much of the ELBO does the KL carry, and what does z control in the samples?
"""),
        SETUP,
        DATA,
        STANDIN,
        md("## Part (a)"),
        todo('''
def q4_a(train_data, test_data, dset_id):
    """Same arguments and return values as q3 in Question 3, with a Gated PixelCNN prior."""
'''),
        *saves("q4_a_save_results({}, q4_a)"),
        md("## Part (b)"),
        todo('''
def q4_b(train_data, test_data):
    """
    train_data: uint8 array (n_train, 28, 28, 1) of 0/1: binarised MNIST
    test_data: uint8 array (n_test, 28, 28, 1) of 0/1

    Returns
    - train_losses: array (n_minibatches, 3): -ELBO, reconstruction loss E[-log p(x|z)] and KL term
      KL(q(z|x) || p(z)) of every training minibatch, in nats per image
    - test_losses: array (n_epochs + 1, 3): the same on the test set, before training and after every epoch
    - samples: array (100, 28, 28, 1) of 0/1
    - reconstructions: array (100, 28, 28, 1) of 0/1: 50 pairs, each a test image then its reconstruction
    """
'''),
        code("q4_b_save_results(q4_b)"),
        md("""
## Your answers

*Does the gated prior reach a lower test NLL than Q3's PixelCNN? In the PixelVAE, how many nats
does the KL term carry, against the free-bits floor? Sample several images from one z: what
stays the same and what changes?*

YOUR ANSWER HERE
"""),
        md(CHECK.format(name="q4_pixelcnn_pixelvae.ipynb")),
    ]


if __name__ == "__main__":
    for name, cells in (("q1_vae2d", q1()), ("q2_vae_vlae", q2()), ("q3_vqvae", q3()), ("q4_pixelcnn_pixelvae", q4())):
        write(ROOT / f"{name}.ipynb", cells)
        print(f"wrote {ROOT / name}.ipynb")
