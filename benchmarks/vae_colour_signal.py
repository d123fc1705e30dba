"""Where the course's VAE loses colour (issue 12): trained as a plain autoencoder (z = mu, squared
error) on images of one uniform colour each (the shapes' backgrounds, no shapes), it learns the
brightness and never the colour. This prints, every 25 steps, how well luminance (L) and chroma (C)
can be read linearly (R^2) from every layer's features, and at the end the least-squares best last
layer: the features carry the colour, but at a tiny scale.

    OMP_NUM_THREADS=1 python benchmarks/vae_colour_signal.py 100 > figures/colour/signal-scale.txt
"""
import sys, torch
from lvm.blocks.scaling import to_unit
from lvm.engine.data import load
from lvm.vae.model import VAE, VAEConfig
torch.manual_seed(0); torch.set_num_threads(1)
steps = int(sys.argv[1])
d = load("shapes", train_limit=8000, test_limit=1000)
tr = d.train[:, :, :1, :1].expand_as(d.train).contiguous(); te = d.test[:, :, :1, :1].expand_as(d.test).contiguous()
model = VAE(VAEConfig(norm="none"))  # the course's network
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
xt = to_unit(te)
chroma = xt[:, :, 0, 0] - xt[:, :, 0, 0].mean(1, keepdim=True)
lum = xt[:, :, 0, 0].mean(1, keepdim=True)
def r2(feat, y):
    X = torch.cat([feat, torch.ones(len(feat), 1)], 1).double()
    sol = torch.linalg.lstsq(X, y.double()).solution
    res = y.double() - X @ sol
    return 1 - (res.pow(2).sum() / (y.double() - y.double().mean(0)).pow(2).sum()).item()
def report(s):
    with torch.no_grad():
        feats = {}
        h = xt
        for i, layer in enumerate(model.encoder.net):
            h = layer(h)
            if isinstance(layer, torch.nn.ReLU):
                feats[f"enc{i}"] = h.mean((2, 3)) if h.dim() == 4 else h
        mu, _ = model.encoder(xt)
        feats["mu"] = mu
        g = model.decoder.fc(mu).view(-1, model.decoder.d0, 4, 4)
        feats["dec.fc"] = g.mean((2, 3))
        for i, layer in enumerate(model.decoder.net):
            g = layer(g)
            if isinstance(layer, torch.nn.ReLU):
                feats[f"dec{i}"] = g.mean((2, 3))
        W = model.decoder.net[-1].weight.sum((2, 3))  # (3, 32)
        rowdiff = (W - W.mean(0)).norm() / W.norm()
    print(s, " ".join(f"{k}:L{r2(v, lum):.2f}/C{r2(v, chroma):.2f}" for k, v in feats.items()), f"Wchroma {rowdiff:.3f}", flush=True)
for s in range(steps + 1):
    if s % 25 == 0:
        report(s)
    x = to_unit(tr[torch.randint(0, len(tr), (128,))])
    mu, _ = model.encoder(x)
    loss = (model.decode(mu) - x).pow(2).flatten(1).sum(1).mean()
    opt.zero_grad(); loss.backward(); opt.step()
# least squares on the last layer: can the final conv's input features make the colour?
with torch.no_grad():
    g = model.decoder.fc(model.encoder(xt)[0]).view(-1, model.decoder.d0, 4, 4)
    for layer in list(model.decoder.net)[:-1]:
        g = layer(g)
    H = g.mean((2, 3))  # (N, 32): uniform images, the centre behaves as the mean
    target = xt[:, :, 0, 0]
    X = torch.cat([H, torch.ones(len(H), 1)], 1).double()
    sol = torch.linalg.lstsq(X, target.double()).solution
    pred = X @ sol
    cur = model.decode(model.encoder(xt)[0]).mean((2, 3))
    ch = lambda c: c - c.mean(1, keepdim=True)
    print("chroma error (0..255) now %.2f, with the best last layer %.2f" % ((ch(cur) - ch(target)).abs().mean() * 127.5, (ch(pred) - ch(target.double())).abs().mean() * 127.5))
    print("feature std", H.std(0).mean().item(), "readout weight norm", sol[:-1].norm().item(), "current W norm", model.decoder.net[-1].weight.sum((2,3)).norm().item())
