import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from geoct.classes import POTSDAM, ClassTable
from geoct.datasets.layout import (
    DatasetInfo,
    Grid,
    RunningStats,
    canonical_tile_id,
    check_aligned,
    check_ids,
    colors_to_ids,
    ids_to_colors,
    padded_tile_id,
    potsdam_tile_paths,
    read_dataset_json,
    split_train_val,
    write_dataset_json,
    write_raster,
)
from geoct.errors import AlignmentError, InputError, OutputExistsError

GRID = Grid(CRS.from_epsg(32633), Affine(0.05, 0, 366000, 0, -0.05, 5808000), 40, 30)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2_10", "2_10"),
        ("02_10", "2_10"),
        ("dsm_potsdam_02_10_normalized_lastools.jpg", "2_10"),
        ("top_potsdam_7_9_RGBIR.tif", "7_9"),
    ],
)
def test_canonical_tile_id(text: str, expected: str) -> None:
    assert canonical_tile_id(text) == expected


def test_padded_tile_id_and_official_names() -> None:
    assert padded_tile_id("2_9") == "02_09"
    paths = potsdam_tile_paths("02_10")
    assert paths["image"] == "images/top_potsdam_2_10_RGBIR.tif"
    assert paths["dsm"] == "dsm/dsm_potsdam_02_10.tif"
    assert paths["ndsm"] == "ndsm/dsm_potsdam_02_10_normalized_lastools.tif"
    assert paths["label"] == "labels/top_potsdam_2_10_label.tif"
    with pytest.raises(ValueError, match="no tile id"):
        canonical_tile_id("potsdam.tif")


def test_colour_round_trip() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 6, (20, 30)).astype(np.uint8)
    ids[0, :5] = 255
    colours = ids_to_colors(ids, POTSDAM)
    assert tuple(colours[:, 0, 0]) == (0, 0, 0)
    np.testing.assert_array_equal(colors_to_ids(colours, POTSDAM, "x.tif"), ids)


def test_unknown_colours_are_reported_with_counts() -> None:
    colours = ids_to_colors(np.zeros((10, 10), dtype=np.uint8), POTSDAM)
    colours[:, :2, :3] = np.array([12, 34, 56])[:, None, None]
    colours[:, 5, 5] = (1, 2, 3)
    with pytest.raises(InputError) as info:
        colors_to_ids(colours, POTSDAM, "label.tif")
    message = str(info.value)
    assert message.startswith("label.tif: 2 unknown label colour(s)")
    assert "(12,34,56): 6 px" in message and "(1,2,3): 1 px" in message
    ids = colors_to_ids(colours, POTSDAM, "label.tif", unknown_as_ignore=True)
    assert (ids == 255).sum() == 7


def test_check_ids_reports_unknown_ids() -> None:
    ids = np.array([[0, 5, 255, 9]], dtype=np.uint8)
    with pytest.raises(InputError, match=r"unknown class id.*9: 1 px"):
        check_ids(ids, POTSDAM, "l.tif")
    assert check_ids(ids, POTSDAM, "l.tif", unknown_as_ignore=True).tolist() == [[0, 5, 255, 255]]


def test_check_aligned() -> None:
    check_aligned(GRID, GRID, "a.tif", "orthophoto")
    with pytest.raises(AlignmentError, match="shape 30x41 differs"):
        check_aligned(GRID, Grid(GRID.crs, GRID.transform, 41, 30), "a.tif", "orthophoto")
    with pytest.raises(AlignmentError, match="CRS EPSG:4326 differs"):
        check_aligned(GRID, Grid(CRS.from_epsg(4326), GRID.transform, 40, 30), "a.tif", "x")
    shifted = Grid(GRID.crs, GRID.transform @ Affine.translation(1, 0), 40, 30)
    with pytest.raises(AlignmentError, match=r"^a\.tif: grid"):
        check_aligned(GRID, shifted, "a.tif", "orthophoto")


def test_running_stats_match_numpy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(5, 2, (50, 50)), rng.normal(7, 1, (30, 30))
    stats = RunningStats()
    stats.update("dsm", a)
    b[0, 0] = -9999
    stats.update("dsm", b, nodata=-9999)
    values = np.concatenate([a.ravel(), b.ravel()[1:]])
    result = stats.result()["dsm"]
    assert result["mean"] == pytest.approx(values.mean())
    assert result["std"] == pytest.approx(values.std())


def test_split_train_val() -> None:
    train, val = split_train_val([f"t{i}" for i in range(12)])
    assert len(val) == 2 and not set(val) & set(train) and len(train) == 10
    assert split_train_val(["a", "b"], ["b"]) == (["a"], ["b"])
    with pytest.raises(ValueError, match="not training tiles"):
        split_train_val(["a"], ["z"])


def test_write_raster_is_tiled_deflate_on_grid(tmp_path: Path) -> None:
    data = np.arange(2 * 30 * 40, dtype=np.uint8).reshape(2, 30, 40)
    write_raster(tmp_path / "x.tif", data, GRID, block_size=16, descriptions=["a", "b"])
    with rasterio.open(tmp_path / "x.tif") as src:
        assert src.profile["tiled"] and src.block_shapes[0] == (16, 16)
        assert src.compression.name == "deflate"
        assert src.crs == GRID.crs and src.transform == GRID.transform
        assert src.descriptions == ("a", "b")
        np.testing.assert_array_equal(src.read(), data)
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


def test_dataset_json_round_trip(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.tif").touch()
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "a.tif").touch()
    info = DatasetInfo(
        name="x", crs="EPSG:32633", gsd=0.05, bands=["R"], classes=POTSDAM, height=[],
        splits={"train": ["a"], "val": [], "test": []}, stats={"R": {"mean": 1, "std": 2}},
        tiles={"a": {"image": "images/a.tif", "label": "labels/a.tif"}},
    )  # fmt: skip
    write_dataset_json(tmp_path, info)
    assert json.loads((tmp_path / "dataset.json").read_text())["height"] is None
    assert read_dataset_json(tmp_path) == info
    (tmp_path / "labels" / "a.tif").unlink()
    with pytest.raises(InputError, match=r"listed in dataset\.json but missing"):
        read_dataset_json(tmp_path)
    with pytest.raises(InputError, match=r"dataset\.json: not found"):
        read_dataset_json(tmp_path / "nowhere")


def test_class_table_dict_in_dataset_json_accepts_lists() -> None:
    classes = ClassTable.from_dict([{"name": "a", "color": [1, 2, 3]}])
    d = DatasetInfo("x", "EPSG:4326", 1.0, ["B1"], classes).to_dict()
    assert DatasetInfo.from_dict(d).classes == classes


def test_prepare_output_refuses_existing(tmp_path: Path) -> None:
    from geoct.datasets.layout import prepare_output

    (tmp_path / "dataset.json").write_text("{}")
    with pytest.raises(OutputExistsError):
        prepare_output(tmp_path, overwrite=False)
    assert prepare_output(tmp_path, overwrite=True) == tmp_path
