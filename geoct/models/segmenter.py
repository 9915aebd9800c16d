"""Encoder-decoder segmentation network: normalised image in, logits out."""

from collections.abc import Sequence
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .backbone import Backbone, SimplePyramid
from .decoder import UPerNetDecoder
from .weights import WeightsRecord, load_backbone_weights

#: Decoders accepted by :func:`build_segmenter`.
DECODERS = ("upernet", "fpn")


class Segmenter(nn.Module):
    """Backbone, optional ViT pyramid, decoder and a 1x1 classifier.

    Inputs of any size work: they are padded (bottom/right, zeros) to a multiple of
    :attr:`pad_multiple`, the largest stride, and the logits are cropped back.
    """

    def __init__(
        self,
        backbone: Backbone,
        decoder: UPerNetDecoder,
        num_classes: int,
        neck: nn.Module | None = None,
        dropout: float = 0.1,
    ) -> None:
        """Initialise a new Segmenter.

        Args:
            backbone: Feature extractor.
            decoder: Fuses the (neck's) pyramid into one map.
            num_classes: Number of output classes.
            neck: Maps backbone features to the decoder's pyramid (plain ViTs).
            dropout: Dropout before the classifier.
        """
        super().__init__()
        self.backbone = backbone
        self.neck = neck if neck is not None else nn.Identity()
        self.decoder = decoder
        self.classifier = nn.Sequential(
            nn.Dropout2d(dropout), nn.Conv2d(decoder.out_channels, num_classes, 1)
        )
        strides = list(backbone.strides) + list(getattr(neck, "strides", ()))
        #: Input sides are padded to a multiple of this.
        self.pad_multiple: int = max(strides)
        self.num_classes = num_classes
        #: The pretrained backbone weights loaded by :func:`build_segmenter`, if any.
        self.weights_record: WeightsRecord | None = None

    def forward_features(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Compute logits and the backbone features used by the contrastive loss.

        Args:
            x: Normalised input of shape (B, C, H, W).

        Returns:
            Logits (B, K, H, W) and the backbone feature maps, computed on the
            input padded to a multiple of :attr:`pad_multiple`.
        """
        h, w = x.shape[-2:]
        m = self.pad_multiple
        pad_h, pad_w = -h % m, -w % m
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        features = self.backbone(x)
        logits = self.classifier(self.decoder(self.neck(features)))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits[..., :h, :w], features

    def forward(self, x: Tensor) -> Tensor:
        """Compute logits (B, K, H, W) for a normalised input (B, C, H, W)."""
        return self.forward_features(x)[0]


def build_segmenter(
    backbone: str,
    in_channels: int,
    num_classes: int,
    decoder: Literal["upernet", "fpn"] = "upernet",
    decoder_channels: int = 256,
    backbone_indices: Sequence[int] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    pretrained: bool = False,
    backbone_weights: str | None = None,
) -> Segmenter:
    """Build a :class:`Segmenter` from plain settings (as stored in hparams).

    Args:
        backbone: A timm model name supporting ``features_only``.
        in_channels: Number of input channels.
        num_classes: Number of classes.
        decoder: ``"upernet"`` (pyramid pooling + FPN) or ``"fpn"``.
        decoder_channels: Decoder width.
        backbone_indices: timm ``out_indices``; see :class:`Backbone`.
        backbone_kwargs: Extra :func:`timm.create_model` arguments.
        pretrained: Load timm's pretrained weights.
        backbone_weights: A local weights file or TorchGeo weights enum name to
            initialise the backbone from (see :mod:`geoct.models.weights`); the
            record of what was loaded is kept in ``weights_record``.

    Returns:
        The network.

    Raises:
        ConfigError: For an unknown decoder, an unusable backbone, both
            *pretrained* and *backbone_weights*, or weights that do not fit.
        InputError: If the *backbone_weights* file is missing or unreadable.
    """
    if decoder not in DECODERS:
        raise ConfigError(f"decoder {decoder!r}: expected one of {', '.join(DECODERS)}")
    if pretrained and backbone_weights:
        raise ConfigError("give either pretrained: true (timm's weights) or backbone_weights")
    encoder = Backbone(backbone, in_channels, pretrained, backbone_indices, backbone_kwargs)
    record = None
    if backbone_weights:
        record = load_backbone_weights(encoder.net, backbone, backbone_weights)
    neck = SimplePyramid(encoder.channels, encoder.strides[0]) if encoder.plain else None
    channels = neck.channels if neck is not None else encoder.channels
    pool_scales = (1, 2, 3, 6) if decoder == "upernet" else None
    head = UPerNetDecoder(channels, decoder_channels, pool_scales)
    network = Segmenter(encoder, head, num_classes, neck)
    network.weights_record = record
    return network
