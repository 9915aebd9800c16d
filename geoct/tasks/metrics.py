"""Potsdam-style segmentation scores from an accumulated confusion matrix."""

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric


class SegmentationScores(Metric):
    """Overall accuracy, per-class IoU and F1, and their macro means.

    Pixels labelled *ignore_index* (or outside ``[0, num_classes)``) are skipped.
    A class with no pixel in the labels nor the predictions has NaN IoU/F1 and is
    left out of the means. Classes named in *exclude_from_mean* (e.g. clutter, as
    Potsdam papers do) are left out of ``mIoU``/``mF1``; ``mIoU_all`` and
    ``mF1_all`` then report the mean over every class. The confusion matrix is
    summed across DDP processes.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(
        self,
        num_classes: int,
        names: Sequence[str] | None = None,
        ignore_index: int = 255,
        exclude_from_mean: Sequence[str] = (),
    ) -> None:
        """Initialise a new SegmentationScores.

        Args:
            num_classes: Number of classes K.
            names: Class names used in the metric keys; ``class_<i>`` by default.
            ignore_index: Label of pixels to skip.
            exclude_from_mean: Class names left out of ``mIoU`` and ``mF1``.
        """
        super().__init__()
        self.num_classes = num_classes
        self.names = list(names) if names else [f"class_{i}" for i in range(num_classes)]
        self.ignore_index = ignore_index
        self.exclude_from_mean = list(exclude_from_mean)
        self.add_state("confmat", torch.zeros(num_classes, num_classes, dtype=torch.long), "sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Accumulate predicted labels (B, H, W) against true labels (B, H, W)."""
        k = self.num_classes
        valid = (target >= 0) & (target < k)
        idx = target[valid] * k + preds[valid]
        self.confmat += torch.bincount(idx, minlength=k * k).view(k, k)

    def compute(self) -> dict[str, Tensor]:
        """Return ``OA``, ``mIoU``, ``mF1`` and ``IoU_<name>``/``F1_<name>`` per class."""
        cm = self.confmat.double()
        tp = cm.diagonal()
        fp = cm.sum(0) - tp
        fn = cm.sum(1) - tp
        iou = tp / (tp + fp + fn)
        f1 = 2 * tp / (2 * tp + fp + fn)
        keep = torch.tensor([n not in self.exclude_from_mean for n in self.names])
        scores = {"OA": tp.sum() / cm.sum(), "mIoU": iou[keep].nanmean(), "mF1": f1[keep].nanmean()}
        if not keep.all():
            scores |= {"mIoU_all": iou.nanmean(), "mF1_all": f1.nanmean()}
        for i, name in enumerate(self.names):
            scores |= {f"IoU_{name}": iou[i], f"F1_{name}": f1[i]}
        return {key: value.float() for key, value in scores.items()}
