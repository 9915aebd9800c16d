import itertools
import json
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import Affine

from geoct.datasets import PotsdamDataModule
from geoct.datasets.layout import DatasetInfo
from geoct.datasets.recipes import SpatialSplitOptions, prepare_rasters
from geoct.datasets.splits import (
    SPLITS,
    BlockGrid,
    SpatialSplit,
    assign_blocks,
    default_block_px,
    gap,
    make_spatial_split,
    separate,
)
from geoct.errors import ConfigError, InputError
from geoct.geodesy import ground_pixel_size

PATCH = 64


def prepare(own_data: ModuleType, root: Path, **options: object) -> DatasetInfo:
    src = own_data.make(root / "src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return prepare_rasters(
            str(src["image"]), str(src["labels"]), None, root / "out", label_field="class",
            bands=["R", "G", "B"], split_options=SpatialSplitOptions(**options),
        )  # fmt: skip


@pytest.fixture(scope="module")
def own_root(own_data: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The own-data orthophoto prepared with the default spatial split for 64 px patches."""
    root = tmp_path_factory.mktemp("own_split")
    prepare(own_data, root, patch_size=PATCH)
    return root / "out"


def test_block_grid_on_the_pixel_grid() -> None:
    grid = BlockGrid.over((100.0, 0.0, 100.0 + 250 * 0.5, 300 * 0.5), (0.5, 0.5), 64)
    assert grid.shape == (4, 3)
    widths = np.diff(grid.x_edges) / 0.5
    assert set(widths.tolist()) <= {83.0, 84.0} and grid.x_edges[-1] == 225.0
    assert all(float(v / 0.5).is_integer() for v in grid.x_edges + grid.y_edges)
    assert grid.boxes[0] == (100.0, grid.y_edges[1], grid.x_edges[1], 150.0)


def test_block_counts_by_pixel_centre() -> None:
    transform = Affine(0.5, 0, 100.0, 0, -0.5, 150.0)
    grid = BlockGrid.over((100.0, 0.0, 225.0, 150.0), (0.5, 0.5), 64)
    mask = np.random.default_rng(0).random((300, 250)) < 0.3
    counts = grid.count(transform, mask)
    rows, cols = np.mgrid[0:300, 0:250]
    x, y = transform @ (cols + 0.5, rows + 0.5)
    for i, (minx, miny, maxx, maxy) in enumerate(grid.boxes):
        inside = (x >= minx) & (x < maxx) & (y <= maxy) & (y > miny)
        assert counts[i] == mask[inside].sum()
    assert counts.sum() == mask.sum()


def test_default_block_size() -> None:
    assert default_block_px(10_000, 10_000, 512) == 4 * 512
    assert default_block_px(40_000, 40_000, 512) == 8 * 512
    assert default_block_px(256, 256, 64) == 2 * 64
    assert default_block_px(256, 256, 32) == 4 * 32


def test_assign_blocks_is_reproducible() -> None:
    a = assign_blocks(20, (0.6, 0.2, 0.2), seed=1)
    assert a == assign_blocks(20, (0.6, 0.2, 0.2), seed=1)
    assert a != assign_blocks(20, (0.6, 0.2, 0.2), seed=2)
    assert [a.count(s) for s in SPLITS] == [12, 4, 4]
    assert [assign_blocks(3, (0.8, 0.1, 0.1), 0).count(s) for s in SPLITS] == [1, 1, 1]
    assert assign_blocks(4, (0.7, 0.3, 0.0), 0).count("test") == 0
    with pytest.raises(ValueError, match="2 block"):
        assign_blocks(2, (0.6, 0.2, 0.2), 0)
    with pytest.raises(ValueError, match="sum to 1"):
        assign_blocks(10, (0.6, 0.2, 0.1), 0)


@pytest.mark.parametrize("seed", range(20))
def test_separated_regions_keep_the_buffer(seed: int) -> None:
    grid = BlockGrid.over((0.0, 0.0, 80.0, 60.0), (1.0, 1.0), 10)
    rng = np.random.default_rng(seed)
    assigned = [str(s) if s != "none" else None for s in rng.choice([*SPLITS, "none"], 48)]
    regions = separate(grid.boxes, assigned, buffer=3.0)
    for (a, sa), (b, sb) in itertools.combinations(zip(regions, assigned, strict=True), 2):
        if sa and sb and sa != sb and a[2] > a[0] and b[2] > b[0]:
            assert gap(a, b) >= 3.0
    for block, region, split in zip(grid.boxes, regions, assigned, strict=True):
        assert block[0] <= region[0] and region[2] <= block[2]
        assert block[1] <= region[1] and region[3] <= block[3]
        if split == "train":
            assert region == block


def test_spatial_split_round_trips_through_dataset_json(own_root: Path) -> None:
    d = json.loads((own_root / "dataset.json").read_text())
    split = SpatialSplit.from_dict(d["spatial_split"])
    assert split.to_dict() == d["spatial_split"]
    assert DatasetInfo.from_dict(d).spatial_split == split
    assert d["splits"] == {"train": ["ortho"], "val": ["ortho"], "test": ["ortho"]}
    assert split.patch_size == PATCH and split.buffer == PATCH * 0.5
    assert split.blocks == {"train": 2, "val": 1, "test": 1, "unlabelled": 0}


def sampled(sampler) -> list[tuple[float, float, float, float]]:
    return [(x.start, y.start, x.stop, y.stop) for x, y in sampler]


def test_patches_of_different_splits_keep_the_buffer(own_root: Path) -> None:
    dm = PotsdamDataModule(own_root, bands=("R", "G", "B"), patch_size=PATCH, length=2000, seed=0)
    dm.setup("fit")
    dm.setup("test")
    patches = {
        "train": sampled(dm.train_sampler),
        "val": sampled(dm.val_sampler),
        "test": sampled(dm.test_sampler),
    }
    assert len(patches["train"]) == 2000 and patches["val"] and patches["test"]
    buffer = dm.info.spatial_split.buffer
    for a, b in itertools.combinations(SPLITS, 2):
        closest = min(gap(p, q) for p in patches[a] for q in patches[b])
        assert closest >= buffer, (a, b, closest)
    for split, boxes in patches.items():
        roi = dm.info.spatial_split.roi(split)
        assert all(roi.covers(shapely.box(*p)) for p in boxes), split
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape[1:] == (3, PATCH, PATCH)
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_stats_come_from_the_training_regions(own_root: Path) -> None:
    info = DatasetInfo.from_dict(json.loads((own_root / "dataset.json").read_text()))
    with rasterio.open(own_root / info.tiles["ortho"]["image"]) as src:
        image = src.read()
        rows, cols = np.mgrid[0 : src.height, 0 : src.width]
        x, y = src.transform @ (cols + 0.5, rows + 0.5)
    inside = np.zeros(x.shape, dtype=bool)
    for minx, miny, maxx, maxy in info.spatial_split.boxes("train"):
        inside |= (x > minx) & (x < maxx) & (y > miny) & (y < maxy)
    assert info.stats["R"]["mean"] == pytest.approx(image[0][inside].mean())
    assert info.stats["G"]["max"] == image[1][inside].max()


def test_split_is_reproducible_with_a_seed(own_data: ModuleType, tmp_path: Path) -> None:
    options = {"patch_size": 16, "block": 32.0, "buffer": 8.0}
    a = prepare(own_data, tmp_path / "a", seed=3, **options).spatial_split
    b = prepare(own_data, tmp_path / "b", seed=3, **options).spatial_split
    c = prepare(own_data, tmp_path / "c", seed=4, **options).spatial_split
    assert a.regions == b.regions and a.regions != c.regions
    assert a.block_size == 32.0 and a.buffer == 8.0
    assert sum(a.blocks.values()) == 16 and a.blocks["unlabelled"] == 0


def test_split_options_are_checked(own_data: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="less than one patch"):
        prepare(own_data, tmp_path / "a", patch_size=64, buffer=10.0)
    with pytest.raises(InputError, match="cannot make a spatial split: 1 block"):
        prepare(own_data, tmp_path / "b", patch_size=64, block=128.0)
    with pytest.raises(ConfigError, match="--split-fractions: split fractions must sum to 1"):
        prepare(own_data, tmp_path / "c", patch_size=64, fractions=(0.5, 0.2, 0.2))
    assert not (tmp_path / "c" / "out").exists()


def test_datamodule_refuses_val_tiles_with_a_spatial_split(own_root: Path) -> None:
    with pytest.raises(ConfigError, match="val_tiles cannot be used"):
        PotsdamDataModule(own_root, bands=("R", "G", "B"), patch_size=PATCH, val_tiles=["ortho"])
    with pytest.warns(UserWarning, match="buffer is less than a patch"):
        dm = PotsdamDataModule(own_root, bands=("R", "G", "B"), patch_size=2 * PATCH)
    with pytest.raises(ConfigError, match="too narrow for random 128 px patches"):
        dm.setup("fit")
    with pytest.raises(ConfigError, match="no val region of the spatial split holds a 128 px"):
        dm.setup("validate")


def test_make_spatial_split_leaves_out_unlabelled_blocks() -> None:
    grid = BlockGrid.over((0.0, 0.0, 40.0, 40.0), (1.0, 1.0), 10)
    labelled = np.ones(16, dtype=int)
    labelled[[0, 5]] = 0
    split = make_spatial_split(grid, labelled, 10.0, 2.0, 2.0, 4, 4.0, seed=0)
    assert split.blocks["unlabelled"] == 2
    for region in (r for s in SPLITS for r in split.regions[s]):
        for minx, miny, maxx, maxy in (grid.boxes[0], grid.boxes[5]):
            assert not (minx <= region[0] < maxx and miny <= region[1] < maxy)
    assert split.describe().startswith("blocks of 10 m (")


def test_geographic_image_blocks_in_ground_metres(own_data: ModuleType, tmp_path: Path) -> None:
    src = own_data.make(tmp_path / "src")
    transform = Affine(9e-6, 0, 14.9999, 0, -5.5e-6, 52.3504)
    with rasterio.open(src["image"]) as ortho:
        pixels = ortho.read()
    image = tmp_path / "lonlat.tif"
    with rasterio.open(
        image, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
        crs="EPSG:4326", transform=transform,
    ) as dst:  # fmt: skip
        dst.write(pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        info = prepare_rasters(
            str(image), str(src["labels"]), None, tmp_path / "out", label_field="class",
            split_options=SpatialSplitOptions(patch_size=32),
        )  # fmt: skip
    split = info.spatial_split
    lon_m, _ = ground_pixel_size("EPSG:4326", transform, 256, 256)
    assert split.buffer == pytest.approx(32 * lon_m, rel=1e-3)  # a patch, along the shorter side
    assert all(
        gap(a, b) >= 32 * 9e-6 - 1e-12 for a in split.boxes("train") for b in split.boxes("val")
    )
