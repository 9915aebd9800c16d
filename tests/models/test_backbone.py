import pytest
import torch

from geoct.errors import ConfigError
from geoct.models import Backbone, build_segmenter

TINY_SWIN = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4}
TINY_VIT = {"embed_dim": 32, "depth": 4, "num_heads": 2}


def test_swin_features_are_nchw_at_strides_4_to_32() -> None:
    backbone = Backbone("swin_tiny_patch4_window7_224", 5, kwargs=TINY_SWIN)
    assert backbone.strides == (4, 8, 16, 32) and not backbone.plain
    features = backbone(torch.randn(1, 5, 96, 64))
    for f, c, s in zip(features, backbone.channels, backbone.strides, strict=True):
        assert f.shape == (1, c, 96 // s, 64 // s)


def test_vit_uses_evenly_spaced_blocks_and_a_pyramid() -> None:
    net = build_segmenter(
        "vit_small_patch16_224", 3, 4, decoder_channels=16, backbone_kwargs=TINY_VIT
    )
    assert net.backbone.plain and net.backbone.strides == (16,) * 4
    assert net.neck.strides == (4, 8, 16, 32) and net.pad_multiple == 32
    x = torch.randn(1, 3, 64, 96)
    logits, features = net.forward_features(x)
    assert logits.shape == (1, 4, 64, 96)
    assert [f.shape[-2:] for f in features] == [(4, 6)] * 4


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_segmenter_pads_and_crops(size: tuple[int, int]) -> None:
    net = build_segmenter(
        "swin_tiny_patch4_window7_224", 3, 4, "fpn", 16, backbone_kwargs=TINY_SWIN
    ).eval()
    with torch.no_grad():
        logits = net(torch.randn(2, 3, *size))
    assert logits.shape == (2, 4, *size)


def test_unknown_backbone() -> None:
    with pytest.raises(ConfigError, match="not a timm model"):
        Backbone("swin_tinyy", 3)


def test_backbone_without_usable_feature_maps() -> None:
    # CrossViT's two branches have strides 12 and 17: no feature pyramid
    with pytest.raises(ConfigError, match="no usable feature maps"):
        Backbone("crossvit_tiny_240", 3, kwargs={"depth": [[1, 1, 0]] * 1})


def test_bad_backbone_kwargs_and_decoder() -> None:
    with pytest.raises(ConfigError, match="backbone_kwargs"):
        Backbone("poolformer_s12", 3, kwargs={"no_such_option": 1})
    with pytest.raises(ConfigError, match="decoder"):
        build_segmenter("poolformer_s12", 3, 2, decoder="deeplab")
