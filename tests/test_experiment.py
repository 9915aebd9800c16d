import math
from pathlib import Path
from typing import Any

import pytest
import torch

from geoct.experiment import compare, gradient_agreement, variant_tasks

MODEL: dict[str, Any] = {
    "backbone": "swin_tiny_patch4_window7_224",
    "backbone_kwargs": {"embed_dim": 16, "depths": [1] * 4, "num_heads": [1] * 4, "window_size": 4},
    "decoder": "fpn",
    "decoder_channels": 16,
    "max_samples": 64,
    "clip": None,
}


def test_variants_start_from_the_baseline_weights() -> None:
    tasks = variant_tasks(
        MODEL, {"w0.1": {"contrastive_weight": 0.1}, "shallow": {"contrastive_stages": [0]}}, 3
    )
    assert list(tasks) == ["baseline", "w0.1", "shallow"]
    assert tasks["baseline"].patch_loss is None
    assert tasks["w0.1"].hparams["contrastive_weight"] == 0.1
    assert list(tasks["shallow"].patch_loss.heads) == ["0"]
    reference = tasks["baseline"].model.state_dict()
    for task in tasks.values():
        for key, value in task.model.state_dict().items():
            assert torch.equal(value, reference[key]), key


def test_a_zero_weight_variant_trains_exactly_like_the_baseline(
    synthetic_root: Path, tmp_path: Path
) -> None:
    data = {
        "root": synthetic_root,
        "bands": ["R", "G", "B", "IR"],
        "batch_size": 2,
        "patch_size": 32,
        "length": 4,
    }
    runs = compare(
        MODEL,
        data,
        seed=5,
        max_epochs=1,
        root_dir=tmp_path,
        accelerator="cpu",
        variants={"zero": {"contrastive_weight": 0.0}},
    )
    base, zero = runs["baseline"], runs["zero"]
    assert base.test["test_mIoU"] == zero.test["test_mIoU"]
    assert zero.separability == pytest.approx(base.separability, nan_ok=True)
    for key, value in base.task.model.state_dict().items():
        assert torch.equal(value, zero.task.model.state_dict()[key]), key
    assert len(base.history) == 1 and "val_mIoU" in base.history[0]
    assert base.step_seconds > 0 and base.peak_memory_mb > 0
    assert not math.isnan(base.separability["stage0_centroid"])
    assert set(base.coverage) == {
        f"stride{p}_{k}" for p in (4, 8, 16, 32) for k in ("pixels", "errors")
    }
    assert 0 < base.coverage["stride4_pixels"] <= 1
    assert base.coverage["stride4_pixels"] >= base.coverage["stride8_pixels"]
    assert 0 <= base.gradients["clipped_fraction"] <= 1 and base.gradients["norm_mean"] > 0
    assert "start_cosine" not in base.gradients
    assert zero.gradients["start_ratio"] == 0 and zero.gradients["end_ratio"] == 0


def test_gradient_agreement_measures_without_changing_the_task() -> None:
    tasks = variant_tasks(MODEL, {"w1": {}, "w2": {"contrastive_weight": 2.0}}, 0)
    g = torch.Generator().manual_seed(0)
    image = torch.randn(4, 4, 64, 64, generator=g)
    mask = (
        torch.randint(0, 6, (4, 4, 4), generator=g)
        .repeat_interleave(16, 1)
        .repeat_interleave(16, 2)
    )
    assert gradient_agreement(tasks["baseline"], image, mask) == {}
    one, two = (gradient_agreement(tasks[k], image, mask) for k in ("w1", "w2"))
    assert -1 <= one["cosine"] <= 1 and one["ratio"] > 0
    assert two["ratio"] == pytest.approx(2 * one["ratio"], rel=1e-4)
    assert two["cosine"] == pytest.approx(one["cosine"], abs=1e-4)
    assert tasks["w1"].training
    assert all(p.grad is None for p in tasks["w1"].parameters())
