"""(Run before the loss reported under EMA included the codebook term: its "ema" loss is recon + commitment.)
Codebook usage of the course quantizer vs dead-code restarts vs EMA: course VQ-VAE on shapes,
2000 training images, 3 epochs (48 steps), batch 128, Adam 1e-3, clip 1."""
import sys, time, torch
from lvm import data as D
from lvm.train import TrainConfig, fit
from lvm.vqvae.model import VQVAE, VQVAEConfig
from lvm.vqvae import encode_all, codebook_usage
d = D.load("shapes", train_limit=2000, test_limit=500)
for name, kw in [("course", dict(restart_dead=False)), ("restart", dict(restart_dead=True)),
                 ("ema", dict(restart_dead=False, ema_decay=0.99))]:
    torch.manual_seed(0)
    m = VQVAE(VQVAEConfig(channels=3, **kw))
    t = time.time()
    h = fit(m, d.train, d.test, TrainConfig(epochs=3, grad_clip=1.0))
    use = codebook_usage(encode_all(m, d.test), 128)
    print(name, round(time.time() - t), {k: [round(v, 4) for v in vs] for k, vs in h.test.items()}, use, flush=True)
