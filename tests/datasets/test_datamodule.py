from pathlib import Path

import pytest
import rasterio
import torch
from lightning.pytorch import Trainer

from geoct.datasets import PotsdamDataModule, TileGriddedPatchSampler, read_dataset_json
from geoct.errors import ConfigError, InputError
from geoct.metadata import HEIGHT_BAND


def test_model_spec_from_dataset_json(synthetic_root: Path) -> None:
    dm = PotsdamDataModule(synthetic_root, bands=("IR", "R", "G"), height="ndsm", patch_size=64)
    stats = read_dataset_json(synthetic_root).stats
    spec = dm.model_spec
    assert spec.bands == ("IR", "R", "G", HEIGHT_BAND)
    assert spec.mean == tuple(stats[b]["mean"] for b in ("IR", "R", "G", "ndsm"))
    assert spec.std[-1] == stats["ndsm"]["std"]
    assert spec.gsd == pytest.approx(0.05, rel=1e-3) and spec.patch_size == 64
    assert spec.height_source == "ndsm" and spec.classes.num_classes == 6


def test_train_batches(synthetic_root: Path) -> None:
    dm = PotsdamDataModule(synthetic_root, height="dsm", batch_size=3, patch_size=64, length=6)
    dm.setup("fit")
    assert dm.train_dataset.crs.to_epsg() == 32633
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 5, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 64, 64) and batch["mask"].dtype == torch.int64
    batch = dm.train_aug(batch)
    assert batch["image"].shape == (3, 5, 64, 64)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    assert batch["image"].abs().mean() < 5  # normalised


def test_seeded_sampler_ignores_global_random_state(synthetic_root: Path) -> None:
    def first_bounds() -> torch.Tensor:
        dm = PotsdamDataModule(synthetic_root, patch_size=32, length=4, augment=False, seed=7)
        dm.setup("fit")
        torch.rand(100)
        return list(dm.train_sampler)

    torch.manual_seed(1)
    first = first_bounds()
    torch.manual_seed(2)
    assert first_bounds() == first


def test_train_uses_only_train_tiles(synthetic_root: Path) -> None:
    dm = PotsdamDataModule(synthetic_root, patch_size=64, length=4)
    dm.setup("fit")
    info = read_dataset_json(synthetic_root)
    files = {Path(p).name for p in dm.train_dataset.datasets[0].index.filepath}
    assert files == {Path(info.tiles[t]["image"]).name for t in info.splits["train"]}
    assert len(dm.val_dataset) == len(info.splits["val"])


def test_grid_covers_every_val_tile(synthetic_root: Path) -> None:
    dm = PotsdamDataModule(synthetic_root, height="ndsm", batch_size=4, patch_size=48)
    dm.setup("validate")
    sampler = dm.val_sampler
    assert isinstance(sampler, TileGriddedPatchSampler)
    info = read_dataset_json(synthetic_root)
    path = synthetic_root / info.tiles[info.splits["val"][0]]["label"]
    with rasterio.open(path) as src:
        truth, transform = src.read(1), src.transform
    covered = torch.zeros(truth.shape, dtype=torch.int64)
    n = 0
    for batch in dm.val_dataloader():
        for bounds, mask in zip(batch["bounds"], batch["mask"], strict=True):
            col = round((float(bounds[0]) - transform.c) / transform.a)
            row = round((transform.f - float(bounds[4])) / -transform.e)
            covered[row : row + 48, col : col + 48] += 1
            assert torch.equal(mask, torch.from_numpy(truth[row : row + 48, col : col + 48]).long())
            n += 1
    assert n == len(sampler) == 9  # 3 x 3 patches of 48 px cover 128 px
    assert (covered > 0).all()


def test_test_stage_and_val_tiles_override(synthetic_root: Path) -> None:
    info = read_dataset_json(synthetic_root)
    train = info.splits["train"]
    dm = PotsdamDataModule(synthetic_root, patch_size=64, val_tiles=train[:1])
    assert dm.splits["val"] == train[:1] and train[:1][0] not in dm.splits["train"]
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape[1:] == (4, 64, 64)


def test_lightning_applies_normalisation(synthetic_root: Path) -> None:
    dm = PotsdamDataModule(synthetic_root, batch_size=2, patch_size=64, augment=False)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    raw = batch["image"].clone()
    dm.trainer = Trainer(logger=False, enable_checkpointing=False)
    dm.trainer.state.stage = "validate"
    dm.trainer.state.fn = "validate"
    out = dm.on_after_batch_transfer(batch, 0)
    spec = dm.model_spec
    mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(spec.std).view(1, -1, 1, 1)
    assert torch.allclose(out["image"], (raw - mean) / std, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"bands": ("R", "NIR")}, "bands \\['NIR'\\] not in"),
        ({"height": "lidar"}, "height 'lidar' not in"),
        ({"val_tiles": ["9_9"]}, "not training tiles"),
    ],
)
def test_bad_options(synthetic_root: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        PotsdamDataModule(synthetic_root, **kwargs)


def test_missing_dataset_json(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"dataset\.json: not found"):
        PotsdamDataModule(tmp_path)


def test_teardown_closes_file_handles(synthetic_root: Path) -> None:
    dm = PotsdamDataModule(synthetic_root, height="dsm", batch_size=2, patch_size=32, length=2)
    dm.setup("fit")
    next(iter(dm.train_dataloader()))
    image = dm.train_dataset.datasets[0].datasets[0]
    handles = list(image._handles.values())
    assert handles and not any(src.closed for src in handles)
    dm.teardown("fit")
    assert all(src.closed for src in handles)
    assert next(iter(dm.train_dataloader()))["image"].shape[1] == 5
