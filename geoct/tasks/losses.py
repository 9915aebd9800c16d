"""Segmentation loss: label-smoothed cross-entropy plus Dice (as in GeoSeg)."""

from segmentation_models_pytorch.losses import DiceLoss
from torch import Tensor, nn


class SegmentationLoss(nn.Module):
    """Cross-entropy with label smoothing plus multiclass soft Dice, both ignoring a label."""

    def __init__(
        self,
        ignore_index: int = 255,
        label_smoothing: float = 0.05,
        dice_smooth: float = 0.05,
        dice_weight: float = 1.0,
    ) -> None:
        """Initialise a new SegmentationLoss.

        Args:
            ignore_index: Label excluded from both terms.
            label_smoothing: Cross-entropy label smoothing.
            dice_smooth: Additive smoothing of the Dice ratio.
            dice_weight: Weight of the Dice term (0 disables it).
        """
        super().__init__()
        self.ce = nn.CrossEntropyLoss(ignore_index=ignore_index, label_smoothing=label_smoothing)
        self.dice = DiceLoss("multiclass", smooth=dice_smooth, ignore_index=ignore_index)
        self.dice_weight = dice_weight

    def forward(self, logits: Tensor, mask: Tensor) -> Tensor:
        """Compute the loss of logits (B, K, H, W) against labels (B, H, W)."""
        loss = self.ce(logits, mask)
        if self.dice_weight:
            loss = loss + self.dice_weight * self.dice(logits, mask)
        return loss
