"""Lightning tasks: contrastive semantic segmentation and checkpoint loading."""

from .checkpoint import load_model
from .segmentation import ContrastiveSemanticSegmentationTask, network_from_hparams

__all__ = ("ContrastiveSemanticSegmentationTask", "load_model", "network_from_hparams")
