import hashlib
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
from lightning.pytorch import LightningDataModule, Trainer
from safetensors.torch import save_file
from timm.models import adapt_input_conv
from torch.utils.data import DataLoader, Dataset
from torchgeo.models import Swin_V2_B_Weights, ViTSmall16_Weights
from torchvision.models.swin_transformer import (
    PatchMergingV2,
    SwinTransformer,
    SwinTransformerBlockV2,
)

from geoct.classes import POTSDAM
from geoct.cli import main
from geoct.errors import ConfigError, InputError
from geoct.metadata import CHECKPOINT_KEY, ModelSpec
from geoct.models import build_segmenter
from geoct.models.weights import adapt_first_layer, check_enum_fits, resolve_enum
from geoct.tasks import ContrastiveSemanticSegmentationTask, load_model

SWIN = "swin_tiny_patch4_window7_224"
VIT = "vit_small_patch16_224"
TINY = {
    SWIN: {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4},
    VIT: {"embed_dim": 32, "depth": 4, "num_heads": 2},
    "poolformer_s12": {},
}
CONFIG = Path(__file__).parents[2] / "configs" / "synthetic_tiny.yaml"


def timm_name(key: str) -> str:
    """Name of a features_only tensor in the full timm model (see timm's feature wrappers)."""
    key = key.removeprefix("model.")
    for stage in ("layers_", "stages_"):
        if key.startswith(stage):
            key = key.replace("_", ".", 1)
    return key


def perturbed_state_dict(name: str, in_chans: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = timm.create_model(name, in_chans=in_chans, **TINY[name]).state_dict()
    return {k: v + torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}


def save(state: dict[str, torch.Tensor], path: Path) -> Path:
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


def first_conv(name: str) -> str:
    return {SWIN: "patch_embed.proj.weight", VIT: "patch_embed.proj.weight"}.get(
        name, "stem.conv.weight"
    )


@pytest.mark.parametrize(
    ("name", "suffix"), [(SWIN, ".pth"), (VIT, ".safetensors"), ("poolformer_s12", ".pt")]
)
def test_weights_file_initialises_the_backbone(name: str, suffix: str, tmp_path: Path) -> None:
    state = perturbed_state_dict(name)
    path = save(state, tmp_path / f"weights{suffix}")
    net = build_segmenter(
        name, 3, 4, "fpn", 16, backbone_kwargs=TINY[name], backbone_weights=str(path)
    )
    loaded = net.backbone.net.state_dict()
    assert loaded and all(torch.equal(v, state[timm_name(k)]) for k, v in loaded.items())
    record = net.weights_record
    assert record is not None and record.kind == "file" and record.source == str(path.resolve())
    assert record.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.in_channels == 3 and not record.adapted


@pytest.mark.parametrize("channels", [1, 2, 4, 5, 7])
def test_first_layer_rule_is_timms_for_rgb_weights(channels: int) -> None:
    rgb = torch.randn(8, 3, 4, 4)
    torch.testing.assert_close(adapt_first_layer(rgb, channels), adapt_input_conv(channels, rgb))
    assert adapt_first_layer(rgb, 3) is rgb


@pytest.mark.parametrize("name", [SWIN, VIT])
def test_rgb_weights_into_five_bands_adapt_the_first_layer(name: str, tmp_path: Path) -> None:
    state = perturbed_state_dict(name)
    path = save(state, tmp_path / "rgb.pth")
    net = build_segmenter(
        name, 5, 4, "fpn", 16, backbone_kwargs=TINY[name], backbone_weights=str(path)
    )
    key = first_conv(name)
    rgb = state[key]
    weight = net.backbone.net.state_dict()[("model." if name == VIT else "") + key]
    # R, G, B, IR, height get the R, G, B, R, G kernels, scaled by 3/5
    expected = torch.cat([rgb, rgb[:, :2]], dim=1) * 3 / 5
    assert weight.shape[1] == 5
    torch.testing.assert_close(weight, expected)
    torch.testing.assert_close(weight, adapt_input_conv(5, rgb))
    assert net.weights_record.adapted and net.weights_record.in_channels == 3


def test_weights_of_another_architecture_or_size(tmp_path: Path) -> None:
    vit = save(perturbed_state_dict(VIT), tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match="do not fit backbone 'swin_tiny") as e:
        build_segmenter(
            SWIN, 3, 4, "fpn", 16, backbone_kwargs=TINY[SWIN], backbone_weights=str(vit)
        )
    assert "tensors missing, e.g. patch_embed.norm.weight" in str(e.value)
    assert "\n" not in str(e.value)
    wider = dict(TINY[VIT], embed_dim=64)
    with pytest.raises(ConfigError, match=r"of another shape, e\.g\. cls_token \(1, 1, 32\)"):
        build_segmenter(VIT, 3, 4, "fpn", 16, backbone_kwargs=wider, backbone_weights=str(vit))


def test_missing_or_unreadable_weights_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="backbone weights file not found"):
        build_segmenter(
            VIT, 3, 4, backbone_kwargs=TINY[VIT], backbone_weights=str(tmp_path / "no.pth")
        )
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(InputError, match="not a readable weights file"):
        build_segmenter(
            VIT, 3, 4, backbone_kwargs=TINY[VIT], backbone_weights=str(tmp_path / "junk.pth")
        )
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(InputError, match="holds no state dict"):
        build_segmenter(
            VIT, 3, 4, backbone_kwargs=TINY[VIT], backbone_weights=str(tmp_path / "empty.pth")
        )
    with pytest.raises(ConfigError, match="either pretrained"):
        build_segmenter(VIT, 3, 4, pretrained=True, backbone_weights="x.pth")


def test_checkpoint_dicts_and_prefixes_are_unwrapped(tmp_path: Path) -> None:
    state = perturbed_state_dict(VIT)
    path = save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "c.pth")
    net = build_segmenter(VIT, 3, 4, backbone_kwargs=TINY[VIT], backbone_weights=str(path))
    assert torch.equal(net.backbone.net.model.cls_token, state["cls_token"])


def test_torchgeo_enum_resolves_and_fits_its_timm_model() -> None:
    weights = resolve_enum("ViTSmall16_Weights.SENTINEL2_ALL_MOCO")
    assert weights is ViTSmall16_Weights.SENTINEL2_ALL_MOCO
    assert resolve_enum("torchgeo.models.ViTSmall16_Weights.SENTINEL2_ALL_MOCO") is weights
    check_enum_fits(weights, VIT)
    with pytest.raises(ConfigError, match="weights of 'vit_small_patch16_224', not of backbone"):
        check_enum_fits(weights, SWIN)
    with pytest.raises(ConfigError, match="no such TorchGeo weights and no such file"):
        resolve_enum("ViTSmall16_Weights.NO_SUCH_WEIGHTS")
    with pytest.raises(ConfigError, match="no such TorchGeo weights"):
        build_segmenter(VIT, 3, 4, backbone_kwargs=TINY[VIT], backbone_weights="Nope_Weights.X")


def test_torchgeo_enum_state_dict_is_loaded_and_adapted(monkeypatch: pytest.MonkeyPatch) -> None:
    weights = ViTSmall16_Weights.SENTINEL2_ALL_MOCO
    state = perturbed_state_dict(VIT, in_chans=weights.meta["in_chans"])
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, **kwargs: state)
    net = build_segmenter(VIT, 4, 4, backbone_kwargs=TINY[VIT], backbone_weights=str(weights))
    weight = net.backbone.net.model.patch_embed.proj.weight
    torch.testing.assert_close(weight, state["patch_embed.proj.weight"][:, :4] * 13 / 4)
    record = net.weights_record
    assert record.kind == "torchgeo" and record.url == weights.url and record.in_channels == 13


def test_satlas_swin_v2_enum_fits_timm_swinv2() -> None:
    weights = resolve_enum("Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS")
    check_enum_fits(weights, "swinv2_base_window8_256")
    check_enum_fits(weights, "swinv2_base_window16_256")
    with pytest.raises(ConfigError, match="use backbone: swinv2_base_window8_256"):
        check_enum_fits(weights, SWIN)
    with pytest.raises(ConfigError, match="not of backbone 'swinv2_tiny_window8_256'"):
        check_enum_fits(weights, "swinv2_tiny_window8_256")


def test_satlas_swin_v2_weights_give_torchvision_features(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    reference = SwinTransformer(
        patch_size=[4, 4],
        embed_dim=16,
        depths=[2, 2, 2, 2],
        num_heads=[1, 2, 2, 4],
        window_size=[8, 8],
        block=SwinTransformerBlockV2,
        downsample_layer=PatchMergingV2,
    ).eval()
    for p in reference.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    weights = Swin_V2_B_Weights.NAIP_RGB_SI_SATLAS
    monkeypatch.setattr(type(weights), "get_state_dict", lambda self, **kw: reference.state_dict())
    kwargs = {"embed_dim": 16, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 2, 4]}
    net = build_segmenter(
        "swinv2_base_window8_256", 3, 4, backbone_kwargs=kwargs, backbone_weights=str(weights)
    )
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        features = net.backbone.eval()(x)
        expected = []
        for i, layer in enumerate(reference.features):
            x = layer(x)
            if i % 2:
                expected.append(x.permute(0, 3, 1, 2))
    for f, e in zip(features, expected, strict=True):
        torch.testing.assert_close(f, e, rtol=1e-5, atol=1e-5)


class RandomBlocks(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        return {
            "image": torch.randn(5, 64, 64, generator=g),
            "mask": torch.randint(0, 6, (64, 64), generator=g),
        }


class RandomDataModule(LightningDataModule):
    model_spec = ModelSpec(
        ("R", "G", "B", "IR", "height"), (100.0,) * 5, (50.0,) * 5, 0.05, 64, POTSDAM
    )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomBlocks(), batch_size=2)

    val_dataloader = train_dataloader


def test_fit_records_the_weights_and_checkpoints_load_without_them(tmp_path: Path) -> None:
    path = save(perturbed_state_dict(SWIN), tmp_path / "rgb.safetensors")
    hparams: dict[str, Any] = {
        "backbone": SWIN,
        "backbone_kwargs": TINY[SWIN],
        "backbone_weights": str(path),
        "decoder": "fpn",
        "decoder_channels": 16,
        "in_channels": 5,
        "max_samples": 64,
    }
    task = ContrastiveSemanticSegmentationTask(**hparams)
    trainer = Trainer(
        fast_dev_run=True,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(task, RandomDataModule())
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    ckpt = torch.load(tmp_path / "model.ckpt", weights_only=True)
    expected = {
        "source": str(path.resolve()),
        "kind": "file",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "in_channels": 3,
        "adapted": True,
        "url": None,
    }
    assert ckpt["hyper_parameters"]["backbone_weights"] == str(path)
    assert ckpt["hyper_parameters"]["backbone_weights_record"] == expected
    assert ckpt[CHECKPOINT_KEY]["backbone_weights"] == expected
    path.unlink()
    model, spec = load_model(tmp_path / "model.ckpt")
    assert spec.in_channels == 5 and model.weights_record is None
    assert torch.equal(
        model.backbone.net.state_dict()["patch_embed.proj.weight"],
        ckpt["state_dict"]["model.backbone.net.patch_embed.proj.weight"],
    )


def test_fit_with_mismatching_weights_is_one_line_error(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    vit = save(perturbed_state_dict(VIT), tmp_path / "vit.pth")
    status = main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--data.root",
            str(synthetic_root),
            "--trainer.fast_dev_run=true",
            f"--model.backbone_weights={vit}",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2, err
    assert f"geoct: error: backbone_weights '{vit}': do not fit backbone 'swin_tiny" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
