import math

import pytest
import torch

from geoct.classes import POTSDAM
from geoct.embeddings import (
    centroid_accuracy,
    network_outputs,
    patch_embeddings,
    pure_coverage,
    pure_patches,
    separability,
)
from geoct.models import build_segmenter


def blocks(size: int = 32, block: int = 8, seed: int = 0) -> torch.Tensor:
    """A (1, size, size) mask of random class blocks."""
    g = torch.Generator().manual_seed(seed)
    n = size // block
    ids = torch.randint(0, 6, (1, n, n), generator=g)
    return ids.repeat_interleave(block, 1).repeat_interleave(block, 2)


def test_pure_patches_label_and_flag() -> None:
    mask = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 2], [3, 3, 255, 255], [3, 3, 255, 255]]])
    labels, pure = pure_patches(mask, 2, num_classes=6)
    assert labels.tolist() == [[[0, 1], [3, 255]]]
    assert pure.tolist() == [[[True, False], [True, False]]]


def test_centroid_accuracy_of_separated_and_identical_classes() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 10
    labels = torch.arange(3).repeat(50)
    separated = centres[labels] + torch.randn(150, 3, generator=g)
    assert centroid_accuracy(separated, labels) == pytest.approx(1.0)
    identical = torch.ones(150, 3)
    assert centroid_accuracy(identical, labels) == pytest.approx(1 / 3)
    assert centroid_accuracy(separated, labels, classes=(0, 1)) == pytest.approx(1.0)
    assert math.isnan(centroid_accuracy(separated, labels, classes=(0, 5)))


def test_patch_embeddings_collect_pure_tokens_per_stage() -> None:
    network = build_segmenter(
        "swin_tiny_patch4_window7_224",
        in_channels=4,
        num_classes=6,
        decoder="fpn",
        decoder_channels=16,
        backbone_kwargs={
            "embed_dim": 16,
            "depths": [1] * 4,
            "num_heads": [1] * 4,
            "window_size": 4,
        },
    )
    network.train()
    masks = [blocks(seed=i) for i in range(2)]
    batches = [(torch.randn(1, 4, 32, 32), m) for m in masks]
    outputs = network_outputs(network, batches)
    assert network.training
    assert [o[0].shape for o in outputs] == [(1, 32, 32)] * 2
    embeddings = patch_embeddings(outputs, [0, 1], num_classes=6)
    for stage, stride in ((0, 4), (1, 8)):
        features, labels = embeddings[stage]
        expected = torch.cat(
            [pure_patches(m, stride, 6)[0][pure_patches(m, stride, 6)[1]] for m in masks]
        )
        assert features.shape == (len(expected), network.backbone.channels[stage])
        assert torch.equal(labels, expected)
    scores = separability(embeddings, POTSDAM.names)
    assert set(scores) == {
        f"stage{s}_{k}"
        for s in (0, 1)
        for k in ("centroid", "tree_vs_low_vegetation", "building_vs_impervious_surfaces")
    }
    assert 0 <= scores["stage0_centroid"] <= 1


def test_pure_coverage_counts_pixels_and_errors_in_pure_patches() -> None:
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :4, 4:] = 1
    mask[0, 4:, 4:] = 2
    mask[0, 7, 7] = 3
    mask[0, 0, 0] = 255
    prediction = mask.clamp(max=5).clone()
    prediction[0, 7, 7] = 2
    prediction[0, 1, 5] = 0
    shares = pure_coverage([(prediction, [], mask)], [4, 8], 6)
    labelled = 63
    assert shares["stride4_pixels"] == pytest.approx(32 / labelled)
    assert shares["stride4_errors"] == pytest.approx(1 / 2)
    assert shares["stride8_pixels"] == 0 and shares["stride8_errors"] == 0
