import math

import pytest
import torch

from geoct.classes import POTSDAM
from geoct.embeddings import centroid_accuracy, patch_embeddings, pure_patches, separability
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
    embeddings = patch_embeddings(network, batches, [0, 1], num_classes=6)
    assert network.training
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
