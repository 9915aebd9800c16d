"""geoct: Contrastive Transformer land-cover mapping on TorchGeo."""

__version__ = "0.1.0"
