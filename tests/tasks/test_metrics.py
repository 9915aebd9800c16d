import math

import torch

from geoct.tasks.losses import SegmentationLoss
from geoct.tasks.metrics import SegmentationScores


def test_scores_from_confusion() -> None:
    scores = SegmentationScores(
        3, ["a", "b", "clutter"], ignore_index=255, exclude_from_mean=["clutter"]
    )
    target = torch.tensor([[0, 0, 1, 1, 2, 255]])
    preds = torch.tensor([[0, 1, 1, 1, 0, 2]])
    scores.update(preds, target)
    out = scores.compute()
    iou = [1 / 3, 2 / 3, 0.0]
    f1 = [1 / 2, 4 / 5, 0.0]
    assert math.isclose(out["OA"], 3 / 5, rel_tol=1e-6)
    assert math.isclose(out["IoU_b"], iou[1], rel_tol=1e-6) and math.isclose(
        out["F1_a"], f1[0], rel_tol=1e-6
    )
    assert math.isclose(out["mIoU"], (iou[0] + iou[1]) / 2, rel_tol=1e-6)
    assert math.isclose(out["mIoU_all"], sum(iou) / 3, rel_tol=1e-6)
    assert math.isclose(out["mF1"], (f1[0] + f1[1]) / 2, rel_tol=1e-6)


def test_absent_class_is_left_out_of_the_mean() -> None:
    scores = SegmentationScores(3)
    scores.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    out = scores.compute()
    assert math.isnan(out["IoU_class_2"]) and out["mIoU"] == 1.0 and "mIoU_all" not in out


def test_segmentation_loss_ignores_label() -> None:
    loss = SegmentationLoss(ignore_index=255)
    logits = torch.randn(2, 3, 8, 8)
    mask = torch.randint(0, 3, (2, 8, 8))
    other = mask.clone()
    other[:, :4] = 255
    logits2 = logits.clone()
    logits2[:, :, :4] = torch.randn(2, 3, 4, 8) * 10
    torch.testing.assert_close(loss(logits, other), loss(logits2, other))
    assert loss(logits, mask) > 0
