"""Projection heads of the contrastive objective (training only)."""

import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Sequential):
    """Linear -> GELU -> Linear, then L2 normalisation (the reference ProjectionLayer)."""

    def __init__(self, in_channels: int, dim: int = 128) -> None:
        """Initialise a new ProjectionHead.

        Args:
            in_channels: Token (feature) dimension of the stage.
            dim: Hidden and output dimension.
        """
        super().__init__(nn.Linear(in_channels, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Project tokens (..., C) to unit vectors (..., dim), in float32."""
        return F.normalize(super().forward(x).float(), dim=-1)
