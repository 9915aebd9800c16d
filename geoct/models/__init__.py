"""Networks: timm backbones, decoders, segmenter and the patch contrastive loss."""

from .backbone import Backbone, SimplePyramid
from .contrastive import ContrastiveOutput, PatchContrastiveLoss, patch_class_counts
from .decoder import UPerNetDecoder
from .projection import ProjectionHead
from .segmenter import DECODERS, Segmenter, build_segmenter
from .weights import WeightsRecord, load_backbone_weights

__all__ = (
    "DECODERS",
    "Backbone",
    "ContrastiveOutput",
    "PatchContrastiveLoss",
    "ProjectionHead",
    "Segmenter",
    "SimplePyramid",
    "UPerNetDecoder",
    "WeightsRecord",
    "build_segmenter",
    "load_backbone_weights",
    "patch_class_counts",
)
