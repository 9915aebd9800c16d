from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningDataModule, Trainer
from torch.utils.data import DataLoader, Dataset

from geoct.classes import POTSDAM
from geoct.errors import CheckpointError, ConfigError
from geoct.metadata import CHECKPOINT_KEY, ModelSpec
from geoct.models import Segmenter
from geoct.tasks import ContrastiveSemanticSegmentationTask, load_model

TINY_SWIN: dict[str, Any] = {
    "backbone": "swin_tiny_patch4_window7_224",
    "backbone_kwargs": {
        "embed_dim": 16,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "window_size": 4,
    },
    "decoder": "fpn",
    "decoder_channels": 16,
    "max_samples": 64,
}


class RandomBlocks(Dataset):
    """Images of noise with masks made of 16 px class blocks."""

    def __init__(self, channels: int = 4, size: int = 64, labels: int = 6) -> None:
        self.channels, self.size, self.labels = channels, size, labels

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(i)
        n = self.size // 16
        mask = (
            torch.randint(0, self.labels, (n, n), generator=g)
            .repeat_interleave(16, 0)
            .repeat_interleave(16, 1)
        )
        mask[0, 0] = 255
        return {
            "image": torch.randn(self.channels, self.size, self.size, generator=g),
            "mask": mask,
        }


class RandomDataModule(LightningDataModule):
    def __init__(self, channels: int = 4, labels: int = 6, spec: bool = True) -> None:
        super().__init__()
        self.channels, self.labels = channels, labels
        if spec:
            self.model_spec = ModelSpec(
                ("R", "G", "B", "IR"), (100.0,) * 4, (50.0,) * 4, 0.05, 64, POTSDAM
            )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(RandomBlocks(self.channels, labels=self.labels), batch_size=2)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(RandomBlocks(self.channels, labels=self.labels), batch_size=2)

    test_dataloader = val_dataloader


@pytest.fixture
def tiny_swin() -> dict[str, Any]:
    return dict(TINY_SWIN)


def trainer(tmp_path: Path, **kwargs: Any) -> Trainer:
    defaults = dict(
        max_epochs=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    return Trainer(**(defaults | kwargs))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("ckpt")
    task = ContrastiveSemanticSegmentationTask(**TINY_SWIN, exclude_from_mean=["clutter"])
    t = trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    t.fit(task, RandomDataModule())
    logged = t.logged_metrics
    for key in (
        "train_seg_loss",
        "train_contrastive_loss",
        "train_contrastive_clip_fraction",
        "val_mIoU",
        "val_mIoU_all",
        "val_OA",
        "val_IoU_car",
        "val_F1_clutter",
    ):
        assert key in logged, key
    return Path(t.checkpoint_callback.best_model_path)


def test_checkpoint_is_self_describing(checkpoint: Path) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    spec = ckpt[CHECKPOINT_KEY]
    assert spec["bands"] == ["R", "G", "B", "IR"] and spec["patch_size"] == 64
    assert spec["classes"]["names"][5] == "clutter" and spec["mean"] == [100.0] * 4
    assert ckpt["hyper_parameters"]["model_spec"] == spec
    assert any(k.startswith("patch_loss.heads.") for k in ckpt["state_dict"])


def test_load_model_for_prediction(checkpoint: Path) -> None:
    model, spec = load_model(checkpoint)
    assert isinstance(model, Segmenter) and not model.training
    assert spec.in_channels == 4 and spec.gsd == pytest.approx(0.05, rel=1e-3)
    assert not any("patch_loss" in name or "heads" in name for name, _ in model.named_modules())
    with torch.no_grad():
        for size in (64, 128, 80):
            assert model(torch.randn(1, 4, size, size)).shape == (1, 6, size, size)


def test_load_model_errors(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "junk.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a geoct checkpoint"):
        load_model(tmp_path / "other.ckpt")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["hyper_parameters"]["decoder_channels"] = 8
    torch.save(ckpt, tmp_path / "mismatch.ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "mismatch.ckpt")


def test_forward_and_predict_never_run_the_heads(tiny_swin: dict) -> None:
    task = ContrastiveSemanticSegmentationTask(**tiny_swin)
    calls = []
    for head in task.patch_loss.heads.values():
        head.register_forward_hook(lambda *_: calls.append(1))
    task.eval()
    with torch.no_grad():
        out = task.predict_step({"image": torch.randn(1, 4, 64, 64)}, 0)
        task(torch.randn(1, 4, 64, 64))
    assert out["probabilities"].shape == (1, 6, 64, 64) and not calls


def test_baseline_has_no_heads(tiny_swin: dict, tmp_path: Path) -> None:
    task = ContrastiveSemanticSegmentationTask(**tiny_swin, contrastive=False)
    assert task.patch_loss is None
    t = trainer(tmp_path, fast_dev_run=True)
    t.fit(task, RandomDataModule())
    assert "train_contrastive_loss" not in t.logged_metrics


def test_stages_by_index(tiny_swin: dict) -> None:
    task = ContrastiveSemanticSegmentationTask(**tiny_swin, contrastive_stages=[1, 3])
    assert sorted(task.patch_loss.heads) == ["1", "3"]
    assert task.patch_loss.strides == {1: 8, 3: 32}
    with pytest.raises(ConfigError, match="contrastive_stages"):
        ContrastiveSemanticSegmentationTask(**tiny_swin, contrastive_stages=[0, 4])
    with pytest.raises(ConfigError, match="contrastive_loss"):
        ContrastiveSemanticSegmentationTask(**tiny_swin, contrastive_loss="triplet")


def test_bad_backbone_names() -> None:
    with pytest.raises(ConfigError, match="not a timm model"):
        ContrastiveSemanticSegmentationTask(backbone="no_such_net")


@pytest.mark.parametrize(
    ("datamodule", "kwargs", "match"),
    [
        (RandomDataModule(channels=3, spec=False), {"model_spec": None}, "no model spec"),
        (RandomDataModule(), {"in_channels": 3}, "in_channels=3 but the data has 4 bands"),
        (
            RandomDataModule(channels=3, spec=False),
            {"model_spec": "spec"},
            r"in_channels=4 but the train images",
        ),
        (RandomDataModule(labels=8), {}, r"labels \[6, 7\] outside the classes 0..5"),
        (RandomDataModule(), {"num_classes": 5}, "num_classes=5 but the data has 6 classes"),
        (RandomDataModule(), {"exclude_from_mean": ["shrubs"]}, "exclude_from_mean"),
    ],
)
def test_bad_input_is_reported_at_setup_or_first_batch(
    datamodule: RandomDataModule, kwargs: dict, match: str, tiny_swin: dict, tmp_path: Path
) -> None:
    if kwargs.get("model_spec") == "spec":
        kwargs["model_spec"] = RandomDataModule().model_spec.to_dict()
        kwargs["in_channels"] = 4
        kwargs["model_spec"]["bands"] = ["R", "G", "B", "IR"]
    task = ContrastiveSemanticSegmentationTask(**(tiny_swin | kwargs))
    with pytest.raises(ConfigError, match=match):
        trainer(tmp_path, fast_dev_run=True, num_sanity_val_steps=0).fit(task, datamodule)
