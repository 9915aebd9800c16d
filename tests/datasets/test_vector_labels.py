import json
import warnings
from pathlib import Path
from types import ModuleType

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio.features import rasterize

from geoct.classes import ClassTable
from geoct.datasets.layout import Grid
from geoct.datasets.recipes import SpatialSplitOptions, prepare_rasters
from geoct.datasets.vector_labels import (
    AreaOfInterest,
    class_ids,
    distinct_colors,
    read_vector_labels,
)
from geoct.errors import InputError

#: Row of the orthophoto between the grass and the road: no polygon covers it.
GAP_ROW = 130


@pytest.fixture
def own(own_data: ModuleType, tmp_path: Path) -> dict[str, Path]:
    return own_data.make(tmp_path / "src")


def prepare(own: dict[str, Path], out: Path, labels: Path | None = None, **kwargs) -> np.ndarray:
    """Prepare the orthophoto with vector labels; return the label raster written."""
    kwargs.setdefault("label_field", "class")
    classes = kwargs.pop("classes", ClassTable.from_json(own["classes"]))
    split = SpatialSplitOptions(patch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        info = prepare_rasters(
            str(own["image"]), str(labels or own["labels"]), classes, out, split_options=split,
            **kwargs,
        )  # fmt: skip
    with rasterio.open(out / info.tiles["ortho"]["label"]) as src:
        return src.read(1)


def reference(own_data: ModuleType, path: Path, classes: ClassTable) -> np.ndarray:
    """Direct rasterisation: repaired polygons reprojected, large ones first, pixel centres."""
    frame = gpd.read_file(path)
    frame = frame[~frame.geometry.is_empty]
    frame = frame.set_geometry(frame.geometry.make_valid()).to_crs(own_data.IMAGE_CRS)
    frame = frame.iloc[np.argsort(-frame.geometry.area.to_numpy(), kind="stable")]
    values = [classes.names.index(c) for c in frame["class"]]
    return rasterize(
        zip(frame.geometry, values, strict=True),
        out_shape=(own_data.SIZE, own_data.SIZE),
        transform=own_data.TRANSFORM,
        fill=classes.ignore_index,
        all_touched=False,
        dtype=np.uint8,
    )


def test_labels_equal_a_direct_rasterisation(
    own_data: ModuleType, own: dict[str, Path], tmp_path: Path
) -> None:
    classes = ClassTable.from_json(own["classes"])
    with pytest.warns(UserWarning) as record:
        info = prepare_rasters(
            str(own["image"]), str(own["labels"]), classes, tmp_path / "out",
            label_field="class", split_options=SpatialSplitOptions(patch_size=64),
        )  # fmt: skip
    messages = [str(w.message) for w in record]
    assert any("1 feature with an empty geometry skipped (feature 5)" in m for m in messages)
    assert any("1 invalid geometry repaired with make_valid (feature 4" in m for m in messages)
    with rasterio.open(tmp_path / "out" / info.tiles["ortho"]["label"]) as src:
        labels = src.read(1)
        assert src.nodata == 255 and src.crs.to_epsg() == 32633
    expected = reference(own_data, own["labels"], classes)
    np.testing.assert_array_equal(labels, expected)
    names = classes.names
    assert (labels[GAP_ROW] == 255).all() and (labels[:5] == 255).all()
    assert labels[50, 45] == names.index("building")  # small building drawn over the grass
    assert labels[55, 65] == names.index("grass")  # its courtyard (a hole) shows the grass
    assert labels[200, 160] == names.index("tree") and labels[200, 225] == names.index("tree")
    assert labels[185, 190] == 255  # between the bow-tie's two triangles
    assert info.classes == classes
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4, 255}


def test_class_table_from_field_values(own: dict[str, Path], tmp_path: Path) -> None:
    labels = prepare(own, tmp_path / "out", classes=None)
    written = json.loads((tmp_path / "out" / "dataset.json").read_text())["classes"]
    assert written["names"] == ["building", "grass", "road", "tree", "water"]
    assert len({tuple(c) for c in written["colors"]}) == 5
    assert labels[50, 45] == 0 and labels[55, 65] == 1 and written["ignore_index"] == 255


def test_id_field_gives_the_same_labels(own: dict[str, Path], tmp_path: Path) -> None:
    by_name = prepare(own, tmp_path / "a")
    by_id = prepare(own, tmp_path / "b", label_field="code")
    np.testing.assert_array_equal(by_name, by_id)


def test_priority_field_overrides_size(own: dict[str, Path], tmp_path: Path) -> None:
    frame = gpd.read_file(own["labels"])
    frame.loc[frame["class"] == "grass", "priority"] = 10
    path = tmp_path / "priority.gpkg"
    frame.to_file(path)
    labels = prepare(own, tmp_path / "out", labels=path, label_priority="priority")
    assert labels[50, 45] == 0  # grass (priority 10) now covers the building
    assert labels[150, 100] == 2  # the road is still a road


def test_aoi_ignores_labels_outside(
    own_data: ModuleType, own: dict[str, Path], tmp_path: Path
) -> None:
    full = prepare(own, tmp_path / "full")
    half = own_data.to_map(shapely.box(-10, -10, 128, 266))
    aoi = tmp_path / "aoi.geojson"
    gpd.GeoDataFrame(geometry=[half], crs=own_data.IMAGE_CRS).to_crs(3857).to_file(aoi)
    labels = prepare(own, tmp_path / "aoi", aoi=aoi, spatial_split=False)
    assert (labels[:, 128:] == 255).all()
    np.testing.assert_array_equal(labels[:, :128], full[:, :128])


@pytest.mark.parametrize(
    ("suffix", "driver"),
    [
        (".geojson", "GeoJSON"),
        (".shp", "ESRI Shapefile"),
        (".fgb", "FlatGeobuf"),
        (".parquet", None),
    ],
)
def test_vector_formats(own: dict[str, Path], tmp_path: Path, suffix: str, driver: str) -> None:
    frame = gpd.read_file(own["labels"])
    path = tmp_path / f"labels{suffix}"
    if driver is None:
        try:
            frame.to_parquet(path)
        except ImportError:
            path.write_bytes(b"PAR1")
            with pytest.raises(InputError, match="reading GeoParquet needs pyarrow"):
                read_vector_labels(path, "class")
            return
    else:  # FlatGeobuf stores the empty geometry only without a spatial index
        options = {"SPATIAL_INDEX": "NO"} if driver == "FlatGeobuf" else {}
        frame.to_file(path, driver=driver, layer_options=options)
    np.testing.assert_array_equal(
        prepare(own, tmp_path / "out", labels=path), prepare(own, tmp_path / "gpkg")
    )


def test_layer_choice(own: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "two.gpkg"
    frame = gpd.read_file(own["labels"])
    frame.to_file(path, layer="roads")
    frame.to_file(path, layer="labels")
    with pytest.raises(
        InputError, match=r"has 2 layers \(roads, labels\); choose one with --label-layer"
    ):
        read_vector_labels(path, "class")
    with pytest.raises(InputError, match="has no layer 'trees' \\(layers: roads, labels\\)"):
        read_vector_labels(path, "class", layer="trees")
    with pytest.warns(UserWarning):
        labels = read_vector_labels(path, "class", layer="labels")
    assert len(labels.geometry) == 5


def test_missing_field_lists_the_fields(own: dict[str, Path]) -> None:
    with pytest.raises(InputError, match=r"has no field 'klass' \(fields: class, code, priority\)"):
        read_vector_labels(own["labels"], "klass")


@pytest.mark.filterwarnings("ignore:.*(empty|invalid) geometr")
def test_unknown_class_names(own: dict[str, Path], tmp_path: Path) -> None:
    classes = ClassTable(names=("grass", "building", "road", "tree"), colors=((0, 0, 0),) * 4)
    with pytest.raises(InputError, match="1 unknown class in field 'class': 'water': 1 feature"):
        read_vector_labels(own["labels"], "class", classes)
    with pytest.warns(UserWarning, match="'water': 1 feature .* ignored"):
        labels = read_vector_labels(own["labels"], "class", classes, unknown_as_ignore=True)
    assert 6 not in labels.fids.tolist() and len(labels.geometry) == 4


def test_missing_class_values(own: dict[str, Path], tmp_path: Path) -> None:
    frame = gpd.read_file(own["labels"])
    frame.loc[0, "class"] = None
    path = tmp_path / "nulls.gpkg"
    frame.to_file(path)
    with pytest.raises(
        InputError, match="1 feature without a value in field 'class' \\(feature 1\\)"
    ):
        read_vector_labels(path, "class")


def test_layer_without_crs(own: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "nocrs.shp"
    gpd.read_file(own["labels"]).to_file(path)
    path.with_suffix(".prj").unlink()
    with pytest.raises(InputError, match="has no CRS"):
        read_vector_labels(path, "class")


def test_features_outside_and_too_small(
    own_data: ModuleType, own: dict[str, Path], tmp_path: Path
) -> None:
    frame = gpd.read_file(own["labels"]).to_crs(own_data.IMAGE_CRS)
    extra = gpd.GeoDataFrame(
        {"class": ["tree", "water"], "code": [3, 4], "priority": [1, 1]},
        geometry=[
            own_data.to_map(shapely.box(1000, 1000, 1100, 1100)),  # far outside
            own_data.to_map(shapely.box(130.1, 130.1, 130.4, 130.4)),  # between pixel centres
        ],
        crs=own_data.IMAGE_CRS,
    )
    path = tmp_path / "extra.gpkg"
    gpd.pd.concat([frame, extra]).to_file(path)
    with pytest.warns(UserWarning) as record:
        prepare_rasters(
            str(own["image"]), str(path), None, tmp_path / "out", label_field="class",
            split_options=SpatialSplitOptions(patch_size=64),
        )  # fmt: skip
    messages = " | ".join(str(w.message) for w in record)
    assert "1 of 7 features lies outside every image and is not used (feature 7)" in messages
    assert "1 feature covers no pixel centre" in messages and "(feature 8)" in messages


def test_all_features_outside_is_an_error(
    own_data: ModuleType, own: dict[str, Path], tmp_path: Path
) -> None:
    path = tmp_path / "elsewhere.gpkg"
    own_data.label_frame(shift=(1.0, 0.0)).to_file(path)
    with (
        pytest.warns(UserWarning),
        pytest.raises(InputError, match="none of the 5 features lies on any image"),
    ):
        prepare_rasters(str(own["image"]), str(path), None, tmp_path / "out", label_field="class")
    assert not (tmp_path / "out").exists()


def test_aoi_mask_is_by_pixel_centre(own_data: ModuleType, tmp_path: Path) -> None:
    path = tmp_path / "aoi.gpkg"
    geom = own_data.to_map(shapely.box(0, 0, 10.4, 4.49))
    gpd.GeoDataFrame(geometry=[geom], crs=own_data.IMAGE_CRS).to_file(path)
    grid = Grid(rasterio.crs.CRS.from_string(own_data.IMAGE_CRS), own_data.TRANSFORM, 256, 256)
    mask = AreaOfInterest.read(path).mask(grid)
    assert mask.sum() == 10 * 4 and mask[:4, :10].all()


def test_distinct_colors() -> None:
    colors = distinct_colors(60)
    assert len(set(colors)) == 60 and colors[0] == (31, 119, 180)


def test_integer_ids_without_a_class_table() -> None:
    values = gpd.pd.Series([3, 1, 255, 3], index=[1, 2, 3, 4])
    ids, keep, classes = class_ids(values, None, "x.gpkg", "code")
    assert classes.names == ("1", "3") and ids.tolist() == [1, 0, 255, 1] and keep.all()


def test_ignore_polygons_mask_what_is_below(
    own_data: ModuleType, own: dict[str, Path], tmp_path: Path
) -> None:
    frame = gpd.read_file(own["labels"])
    mask = own_data.to_map(shapely.box(100, 0, 128, 256))  # smaller than grass and road
    extra = gpd.GeoDataFrame({"code": [255]}, geometry=[mask], crs=own_data.IMAGE_CRS)
    path = tmp_path / "masked.gpkg"
    gpd.pd.concat([frame, extra.to_crs(frame.crs)]).to_file(path)
    labels = prepare(own, tmp_path / "out", labels=path, label_field="code")
    assert labels[100, 120] == 255 and labels[150, 110] == 255  # grass and road under the mask
    assert labels[100, 200] == 0 and labels[150, 50] == 2 and labels[50, 45] == 1
