"""lvm: latent-variable models in PyTorch, for the latent-variable homework of a deep
unsupervised learning course. See README.md."""

__version__ = "0.1.0"


def read_trained(path, map_location="cpu"):
    """A checkpoint written by `lvm run`, read once: `(spec, state)`, the spec of the model it
    holds (looked up in `lvm.registry`) and the checkpoint's state, for the engine's functions
    that take both (`lvm.engine.pipeline.load_model(spec, path, state=state)`)."""
    from lvm import registry
    from lvm.engine.pipeline import read_checkpoint

    state = read_checkpoint(path, map_location)
    return registry.get(state["meta"]["model"]), state


def load_model(path, map_location="cpu"):
    """Rebuild a trained model from its checkpoint: `model, meta = lvm.load_model(path)`."""
    from lvm.engine.pipeline import load_model as _load

    spec, state = read_trained(path, map_location)
    return _load(spec, path, map_location, state=state)
