import json
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import shapely
from scipy import ndimage

from geoct.classes import ClassTable
from geoct.errors import AlignmentError, InputError, OutputExistsError
from geoct.export.vectorize import vectorize_raster
from geoct.export.vectorize_cli import default_output

PIXEL_AREA = 0.25
BLOCK = 64


def run_geoct(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoct", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def read_layer(path: Path) -> gpd.GeoDataFrame:
    return gpd.read_file(path, layer=path.stem if path.suffix == ".gpkg" else None)


def block_lines(transform, height: int, width: int) -> shapely.Geometry:
    lines = [[(x, 0), (x, height)] for x in range(BLOCK, width, BLOCK)]
    lines += [[(0, y), (width, y)] for y in range(BLOCK, height, BLOCK)]
    return shapely.union_all([shapely.LineString([transform @ p for p in ln]) for ln in lines])


def test_polygons_are_exact_and_seamless(
    tmp_path: Path, scene: np.ndarray, classes_tif: Path, confidence_tif: Path
) -> None:
    out = vectorize_raster(
        classes_tif, tmp_path / "out.gpkg", confidence_path=confidence_tif, block_size=BLOCK
    )
    layer = read_layer(out)
    assert layer.crs.to_epsg() == 32633
    assert layer.geometry.is_valid.all()
    assert set(layer.geom_type) == {"Polygon"}
    for class_id in range(3):
        polygons = layer[layer.class_id == class_id]
        assert polygons.area.sum() == pytest.approx((scene == class_id).sum() * PIXEL_AREA)
        _, components = ndimage.label(scene == class_id)
        assert len(polygons) == components
    union = shapely.union_all(layer.geometry.values)
    assert union.area == pytest.approx((scene != 255).sum() * PIXEL_AREA)
    assert layer.area.sum() == pytest.approx(union.area)
    with rasterio_open(classes_tif) as src:
        seams = block_lines(src.transform, src.height, src.width)
    assert shapely.length(shapely.intersection(layer.boundary.values, seams)).max() == 0


def rasterio_open(path: Path):
    import rasterio

    return rasterio.open(path)


def polygon_at(layer: gpd.GeoDataFrame, raster: Path, col: float, row: float):
    with rasterio_open(raster) as src:
        point = shapely.Point(src.transform @ (col + 0.5, row + 0.5))
    found = layer[layer.contains(point)]
    assert len(found) == 1
    return found.iloc[0]


def test_attributes(
    tmp_path: Path, scene: np.ndarray, classes_tif: Path, confidence_tif: Path
) -> None:
    layer = read_layer(
        vectorize_raster(
            classes_tif, tmp_path / "a.gpkg", confidence_path=confidence_tif, block_size=BLOCK
        )
    )
    assert list(layer.columns[:-1]) == [
        "class_id",
        "class_name",
        "area_m2",
        "perimeter_m",
        "mean_confidence",
    ]
    pond = polygon_at(layer, classes_tif, col=37, row=40)
    assert pond.class_id == 2
    assert pond.class_name == "water & <lake>"
    assert pond.area_m2 == pytest.approx(20 * 15 * PIXEL_AREA)
    assert pond.perimeter_m == pytest.approx(2 * (20 + 15) * 0.5)
    assert pond.mean_confidence == pytest.approx(102 / 255)
    field = polygon_at(layer, classes_tif, col=150, row=60)
    assert field.class_id == 1
    assert field.mean_confidence == pytest.approx(204 / 255)
    assert np.allclose(layer.area_m2, layer.area)


def test_simplify_and_min_area(tmp_path: Path, scene: np.ndarray, classes_tif: Path) -> None:
    exact = read_layer(vectorize_raster(classes_tif, tmp_path / "e.gpkg", block_size=BLOCK))
    simple = read_layer(
        vectorize_raster(classes_tif, tmp_path / "s.gpkg", simplify=2.0, block_size=BLOCK)
    )
    assert simple.geometry.is_valid.all()
    assert shapely.get_num_coordinates(simple.geometry.values).sum() < (
        shapely.get_num_coordinates(exact.geometry.values).sum()
    )
    union = shapely.union_all(simple.geometry.values)
    assert simple.area.sum() == pytest.approx(union.area)  # no overlaps
    assert union.area == pytest.approx((scene != 255).sum() * PIXEL_AREA, rel=0.02)
    big = read_layer(
        vectorize_raster(classes_tif, tmp_path / "b.gpkg", min_area=100, block_size=BLOCK)
    )
    assert (big.area_m2 >= 100).all()
    assert len(big) == (exact.area_m2 >= 100).sum() < len(exact)


def test_geopackage_carries_default_style(tmp_path: Path, classes_tif: Path) -> None:
    out = vectorize_raster(classes_tif, tmp_path / "styled.gpkg", block_size=BLOCK)
    assert "layer_styles" in [name for name, _ in pyogrio.list_layers(out)]
    with sqlite3.connect(out) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM layer_styles").fetchall()
    assert len(rows) == 1
    row = rows[0]
    assert row["f_table_name"] == "styled" and row["f_geometry_column"] == "geom"
    assert row["useAsDefault"] == 1 and row["update_time"]
    assert "categorizedSymbol" in row["styleQML"] and "StyledLayerDescriptor" in row["styleSLD"]
    assert list(row.keys()) == [
        "id",
        "f_table_catalog",
        "f_table_schema",
        "f_table_name",
        "f_geometry_column",
        "styleName",
        "styleQML",
        "styleSLD",
        "useAsDefault",
        "description",
        "owner",
        "ui",
        "update_time",
    ]
    assert (tmp_path / "styled.sld").read_text().startswith("<StyledLayerDescriptor")
    assert not list(tmp_path.glob(".*"))


def test_geojson_is_rfc7946(tmp_path: Path, scene: np.ndarray, classes_tif: Path) -> None:
    out = vectorize_raster(classes_tif, tmp_path / "out.geojson", block_size=BLOCK)
    doc = json.loads(out.read_text())
    assert "crs" not in doc
    layer = gpd.read_file(out)
    assert layer.crs.to_epsg() == 4326
    lon, lat = layer.union_all().centroid.coords[0]
    assert 14 < lon < 16 and 52 < lat < 53
    utm_area = layer.to_crs(32633).area.sum()
    assert utm_area == pytest.approx((scene != 255).sum() * PIXEL_AREA, rel=1e-3)
    assert (tmp_path / "out.qml").read_text().startswith("<!DOCTYPE qgis")
    assert (tmp_path / "out.sld").exists()


def test_missing_names_fall_back_to_ids(tmp_path: Path, scene: np.ndarray, raster_writer) -> None:
    bare = raster_writer(tmp_path / "bare.tif", scene)
    with pytest.warns(UserWarning) as record:
        layer = read_layer(vectorize_raster(bare, tmp_path / "bare.gpkg", block_size=BLOCK))
    messages = " ".join(str(w.message) for w in record)
    assert "no class names" in messages and "no colour table" in messages
    assert set(layer.class_name) == {"class_0", "class_1", "class_2"}


def test_names_override(tmp_path: Path, classes_tif: Path) -> None:
    layer = read_layer(vectorize_raster(classes_tif, tmp_path / "n.gpkg", classes=["a", "b", "c"]))
    assert set(layer.class_name) == {"a", "b", "c"}
    table = ClassTable(("x", "y", "z"), ((1, 1, 1), (2, 2, 2), (3, 3, 3)))
    layer = read_layer(vectorize_raster(classes_tif, tmp_path / "t.gpkg", classes=table))
    assert set(layer.class_name) == {"x", "y", "z"}


def test_all_nodata_gives_empty_layer(tmp_path: Path, raster_writer, classes: ClassTable) -> None:
    empty = raster_writer(tmp_path / "empty.tif", np.full((40, 30), 255, np.uint8), classes=classes)
    with pytest.warns(UserWarning, match="no valid pixels"):
        out = vectorize_raster(empty, tmp_path / "empty.gpkg")
    layer = read_layer(out)
    assert len(layer) == 0
    assert {"class_id", "class_name", "area_m2", "perimeter_m"} <= set(layer.columns)
    assert layer.crs.to_epsg() == 32633


def test_existing_output_refused(tmp_path: Path, classes_tif: Path) -> None:
    out = tmp_path / "x.gpkg"
    out.write_text("keep")
    with pytest.raises(OutputExistsError):
        vectorize_raster(classes_tif, out)
    assert out.read_text() == "keep"
    assert not (tmp_path / "x.sld").exists()
    vectorize_raster(classes_tif, out, overwrite=True)
    assert len(read_layer(out)) > 0


def test_misaligned_confidence_refused(
    tmp_path: Path, classes_tif: Path, raster_writer, scene: np.ndarray
) -> None:
    other = raster_writer(tmp_path / "c.tif", np.zeros((150, 199), np.uint8), nodata=0)
    with pytest.raises(AlignmentError, match="shape"):
        vectorize_raster(classes_tif, tmp_path / "y.gpkg", confidence_path=other)
    assert not list(tmp_path.glob("y.*"))


def test_bad_inputs(tmp_path: Path, classes_tif: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        vectorize_raster(tmp_path / "nope.tif", tmp_path / "z.gpkg")
    with pytest.raises(InputError, match="unsupported"):
        vectorize_raster(classes_tif, tmp_path / "z.shp")


def test_default_output_name() -> None:
    assert default_output(Path("d/s.classes.tif")) == Path("d/s.polygons.gpkg")
    assert default_output(Path("d/pred.tif")) == Path("d/pred.gpkg")


def test_cli(tmp_path: Path, classes_tif: Path, confidence_tif: Path) -> None:
    result = run_geoct(
        "vectorize", classes_tif, "--confidence", confidence_tif, "--simplify", "0.5",
        "--min-area", "1", "--block-size", BLOCK,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "scene.polygons.gpkg"
    assert result.stdout.strip() == str(out)
    assert "mean_confidence" in read_layer(out).columns
    again = run_geoct("vectorize", classes_tif)
    assert again.returncode == 2
    assert again.stderr.startswith("geoct: error:") and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr


def test_cli_warns_and_names(tmp_path: Path, scene: np.ndarray, raster_writer) -> None:
    bare = raster_writer(tmp_path / "bare.tif", scene)
    result = run_geoct("vectorize", bare, "--output", tmp_path / "b.geojson")
    assert result.returncode == 0, result.stderr
    assert "geoct: warning:" in result.stderr and "class ids" in result.stderr
    result = run_geoct(
        "vectorize", bare, "--output", tmp_path / "c.gpkg", "--classes", "soil,crop,lake"
    )
    assert result.returncode == 0, result.stderr
    assert set(read_layer(tmp_path / "c.gpkg").class_name) == {"soil", "crop", "lake"}


def test_no_warning_for_complete_raster(tmp_path: Path, classes_tif: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vectorize_raster(classes_tif, tmp_path / "w.gpkg")
