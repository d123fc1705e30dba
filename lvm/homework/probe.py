"""The causality probe of `lvm grade` (run in the child, `lvm.homework.runner`): does a prior over
code grids read the code it predicts?

While the question function runs, two global module hooks note the first integer grid,
(B, H, W) or (B, 1, H, W), that each outermost module is called on (a prior's forward takes the
codes; `nn.Embedding` is left out, as its output at a position is that position's own code).
After it returns, each noted module is called again in eval mode, once on the grid as it was
and once for each position with that one code changed: an autoregressive model's output at a
position, and at every position before it in raster order, must not change. A PixelCNN whose
first mask is type B (or off by one) fails at every position, whatever its training budget.

What is probed is reported as plain numbers; the parent (`lvm.homework.grade`) decides.
"""

from __future__ import annotations

from typing import Any

MAX_MODULES = 4  # modules noted per question
MAX_POSITIONS = 64  # positions probed per module, spread over the grid
SKIP_GRIDS = ((32, 32), (28, 28))  # the images themselves (a VQ-VAE fed uint8 pixels is no prior)


def watch() -> tuple[dict, list]:
    """Start noting (module, grid) pairs; returns the notes and the hook handles (to remove)."""
    import torch
    from torch.nn.modules import module as hooks

    noted: dict[int, tuple[Any, Any]] = {}
    depth = [0]

    def before(mod, args) -> None:
        x = args[0] if args else None
        if (depth[0] == 0 and torch.is_tensor(x) and x.dim() in (3, 4) and x.dtype in (torch.int64, torch.int32,
                torch.int16, torch.uint8) and (x.dim() == 3 or x.shape[1] == 1) and tuple(x.shape[-2:]) not in
                SKIP_GRIDS and not isinstance(mod, torch.nn.Embedding) and id(mod) not in noted
                and len(noted) < MAX_MODULES):
            noted[id(mod)] = (mod, x[:8].detach().clone())
        depth[0] += 1

    def after(mod, args, out) -> None:
        depth[0] -= 1

    return noted, [hooks.register_module_forward_pre_hook(before),
                   hooks.register_module_forward_hook(after, always_call=True)]


def _changed(diff, H: int, W: int):
    """(H, W) bool: where an output (B, ..., H, W) or (B, H, W, ...) changed; None if neither."""
    d = diff.abs().float()
    if d.shape[-2:] == (H, W):
        return d.flatten(0, -3).amax(0) if d.dim() > 2 else d
    if d.dim() >= 3 and tuple(d.shape[1:3]) == (H, W):
        return d.movedim((1, 2), (0, 1)).flatten(2).amax(2)
    return None


def probe(mod, x) -> dict | None:
    """Positions of grid x whose output changes with their own code ("self") or with a later code
    ("earlier"), out of "positions" probed; None when the module's output is not a grid of x's size."""
    import torch

    H, W = x.shape[-2:]
    top = int(x.max())
    if top < 1:
        return None
    first = lambda out: out if torch.is_tensor(out) else next((o for o in out if torch.is_tensor(o)), None)  # noqa: E731
    step = max(1, (H * W) // MAX_POSITIONS)
    was = mod.training
    mod.eval()
    try:
        with torch.no_grad():
            base = first(mod(x)).float()
            tol = 1e-5 * max(1.0, float(base.abs().max()))
            seen_self = seen_earlier = probed = 0
            for p in range(0, H * W, step):
                i, j = divmod(p, W)
                y = x.clone()
                y[..., i, j] = (y[..., i, j] + 1) % (top + 1)
                changed = _changed(first(mod(y)).float() - base, H, W)
                if changed is None:
                    return None
                changed = changed > tol
                seen_self += bool(changed[i, j])
                seen_earlier += bool(changed.flatten()[:p].any())
                probed += 1
    finally:
        mod.train(was)
    return {"module": type(mod).__name__[:60], "positions": probed, "self": seen_self, "earlier": seen_earlier}


def report(noted: dict) -> list[dict]:
    """Probe every noted module; one that cannot be probed is left out."""
    found = []
    for mod, x in noted.values():
        try:
            result = probe(mod, x)
        except Exception:  # noqa: BLE001 - a module that does not take a changed grid: nothing to say
            result = None
        if result is not None:
            found.append(result)
    return found
