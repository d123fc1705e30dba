"""The course's Q4b PixelVAE: a conv encoder, a 16-d Gaussian latent and a Gated PixelCNN decoder
conditioned on a spatial map of z, with free bits (see model.py). `lvm run pixelvae` is wired in
by the engine's registry."""

from lvm.pixelvae.model import Encoder, LatentMap, PixelDecoder, PixelVAE, PixelVAEConfig

__all__ = ["Encoder", "LatentMap", "PixelDecoder", "PixelVAE", "PixelVAEConfig"]
