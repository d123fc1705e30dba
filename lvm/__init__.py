"""lvm: latent-variable models in PyTorch, for the latent-variable homework of a deep
unsupervised learning course. See README.md."""

__version__ = "0.1.0"


def load_model(path, map_location="cpu"):
    """Rebuild a trained model from its checkpoint: `model, meta = lvm.load_model(path)`."""
    from lvm.engine.pipeline import load_model as _load

    return _load(path, map_location)
