"""Timm feature extractors as multi-scale encoders for segmentation.

Any timm model that can be built with ``features_only=True`` works. Hierarchical
backbones (Swin, PoolFormer, ConvNeXt, ResNet, ...) return their stage outputs.
Plain vision transformers (all features at the patch stride) return the outputs of
four evenly spaced blocks; :class:`SimplePyramid` turns those into a pyramid for
the decoder, as in ViTDet.

Input sizes: backbones that accept ``dynamic_img_size`` (ViT, Swin) are built with
it, so any input whose sides are a multiple of the largest stride works; Swin pads
its token grid to the attention window internally. Other backbones (PoolFormer,
CNNs) are size agnostic. :class:`~geoct.models.segmenter.Segmenter` pads inputs to
a multiple of the largest stride and crops the logits back.
"""

import math
from collections.abc import Sequence
from typing import Any

import timm
from torch import Tensor, nn

from ..errors import ConfigError


def _create(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """Build a timm feature extractor, with ``dynamic_img_size`` where supported."""
    try:
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:
        pass
    try:
        return timm.create_model(name, **kwargs)
    except TypeError as e:
        raise ConfigError(f"backbone {name!r}: invalid backbone_kwargs ({e})") from None
    except (AssertionError, AttributeError, RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(
            f"backbone {name!r}: timm cannot build it with features_only=True, "
            f"so it has no feature maps ({type(e).__name__}: {e})"
        ) from None


def _check_strides(name: str, strides: Sequence[int]) -> None:
    """Require a regular pyramid: power-of-two strides that never decrease."""
    regular = all(s > 0 and s & (s - 1) == 0 for s in strides)
    if not strides or not regular or list(strides) != sorted(strides):
        raise ConfigError(
            f"backbone {name!r}: feature strides {list(strides)} are not a regular "
            "power-of-two pyramid, so it has no usable feature maps"
        )


def _evenly_spaced(depth: int, n: int = 4) -> tuple[int, ...]:
    """Indices of *n* evenly spaced blocks ending with the last one."""
    return tuple(sorted({max(0, math.ceil(depth * (i + 1) / n) - 1) for i in range(n)}))


class Backbone(nn.Module):
    """A timm ``features_only`` model returning NCHW feature maps.

    Attributes:
        channels: Channels of each returned feature map.
        strides: Stride (reduction factor) of each returned feature map.
        plain: True when every feature map has the same stride (a plain ViT).
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        pretrained: bool = False,
        indices: Sequence[int] | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Initialise a new Backbone.

        Args:
            name: A timm model name.
            in_channels: Number of input channels.
            pretrained: Load timm's pretrained weights (needs network access).
            indices: Which stages/blocks to return (timm ``out_indices``). Plain ViTs
                default to four evenly spaced blocks.
            kwargs: Extra keyword arguments for :func:`timm.create_model`, e.g. to
                shrink a model for tests (``embed_dim``, ``depths``, ...).

        Raises:
            ConfigError: If timm does not know *name*, cannot build it with feature
                maps, or the feature strides are irregular.
        """
        super().__init__()
        if not timm.is_model(name):
            raise ConfigError(f"backbone {name!r}: not a timm model name")
        create_kwargs = {
            "pretrained": pretrained,
            "features_only": True,
            "in_chans": in_channels,
            **(kwargs or {}),
        }
        if indices is not None:
            create_kwargs["out_indices"] = tuple(indices)
        net = _create(name, create_kwargs)
        strides = tuple(int(s) for s in net.feature_info.reduction())
        plain = len(set(strides)) == 1
        if plain and indices is None and hasattr(getattr(net, "model", None), "blocks"):
            create_kwargs["out_indices"] = _evenly_spaced(len(net.model.blocks))
            net = _create(name, create_kwargs)
            strides = tuple(int(s) for s in net.feature_info.reduction())
        _check_strides(name, strides)
        self.net = net
        self.channels: tuple[int, ...] = tuple(int(c) for c in net.feature_info.channels())
        self.strides: tuple[int, ...] = strides
        self.plain = plain
        self._nhwc = str(getattr(net, "output_fmt", "NCHW")).endswith("NHWC")

    def forward(self, x: Tensor) -> list[Tensor]:
        """Compute the feature maps.

        Args:
            x: Input of shape (B, C, H, W), H and W multiples of ``max(strides)``.

        Returns:
            One (B, C_s, H / stride_s, W / stride_s) tensor per returned stage.
        """
        features = self.net(x)
        if self._nhwc:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return [f.contiguous() for f in features]


def norm(channels: int) -> nn.GroupNorm:
    """Group normalisation (at most 32 groups of at least 2 channels).

    Unlike batch normalisation it works for any batch size, also on 1x1 maps, and
    needs no synchronisation under DDP.
    """
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels)


class SimplePyramid(nn.Module):
    """ViTDet-style pyramid from four same-stride ViT feature maps.

    Maps stride r features to strides r/4, r/2, r and 2r (4, 8, 16, 32 for a
    16 px patch) with transposed convolutions and max pooling.
    """

    def __init__(self, channels: Sequence[int], stride: int) -> None:
        """Initialise a new SimplePyramid.

        Args:
            channels: Channels of the four input feature maps.
            stride: Their common stride; at least 4.

        Raises:
            ConfigError: Unless there are exactly four inputs and stride >= 4.
        """
        super().__init__()
        if len(channels) != 4 or stride < 4:
            raise ConfigError(
                "plain ViT backbones need 4 feature blocks (backbone_indices) and a "
                f"patch size >= 4, got {len(channels)} blocks at stride {stride}"
            )
        c0, c1, c2, c3 = channels
        self.levels = nn.ModuleList(
            [
                nn.Sequential(
                    nn.ConvTranspose2d(c0, c0 // 2, 2, stride=2),
                    norm(c0 // 2),
                    nn.GELU(),
                    nn.ConvTranspose2d(c0 // 2, c0 // 4, 2, stride=2),
                ),
                nn.ConvTranspose2d(c1, c1 // 2, 2, stride=2),
                nn.Identity(),
                nn.MaxPool2d(2),
            ]
        )
        self.channels: tuple[int, ...] = (c0 // 4, c1 // 2, c2, c3)
        self.strides: tuple[int, ...] = (stride // 4, stride // 2, stride, stride * 2)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        """Rescale each feature map to its pyramid level."""
        return [level(f) for level, f in zip(self.levels, features, strict=True)]
