"""UPerNet and FPN decoders over a multi-scale feature pyramid."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import norm


class ConvNormAct(nn.Sequential):
    """Convolution, group normalisation and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1) -> None:
        """Initialise a new ConvNormAct with 'same' padding."""
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class PyramidPooling(nn.Module):
    """PSPNet pyramid pooling module on the coarsest feature map."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int]) -> None:
        """Initialise a new PyramidPooling.

        Args:
            in_channels: Input channels.
            channels: Output channels of each branch and of the bottleneck.
            scales: Output sizes of the adaptive average pools.
        """
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvNormAct(in_channels, channels))
            for s in scales
        )
        self.bottleneck = ConvNormAct(in_channels + len(scales) * channels, channels, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Pool at several scales, upsample and fuse."""
        size = x.shape[-2:]
        pooled = [
            F.interpolate(b(x), size=size, mode="bilinear", align_corners=False)
            for b in self.branches
        ]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))


class UPerNetDecoder(nn.Module):
    """UPerNet (Xiao et al., 2018) feature fusion, or a plain FPN without pooling.

    Returns a fused map at the stride of the finest input level.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int = 256,
        pool_scales: Sequence[int] | None = (1, 2, 3, 6),
    ) -> None:
        """Initialise a new UPerNetDecoder.

        Args:
            in_channels: Channels of each pyramid level, finest first.
            channels: Width of the decoder.
            pool_scales: Pyramid pooling sizes on the coarsest level; None gives an
                FPN (a 1x1 lateral convolution instead).
        """
        super().__init__()
        *fine, coarse = in_channels
        self.top = (
            PyramidPooling(coarse, channels, pool_scales)
            if pool_scales
            else ConvNormAct(coarse, channels)
        )
        self.laterals = nn.ModuleList(ConvNormAct(c, channels) for c in fine)
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3) for _ in fine)
        self.fuse = ConvNormAct(len(in_channels) * channels, channels, 3)
        self.out_channels = channels

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Fuse the pyramid, finest level first."""
        *fine, coarse = features
        maps = [self.top(coarse)]
        for lateral, f in zip(reversed(self.laterals), reversed(fine), strict=True):
            up = F.interpolate(maps[0], size=f.shape[-2:], mode="bilinear", align_corners=False)
            maps.insert(0, lateral(f) + up)
        outs = [s(m) for s, m in zip(self.smooth, maps[:-1], strict=True)] + [maps[-1]]
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [
            F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]
        ]
        return self.fuse(torch.cat(outs, dim=1))
