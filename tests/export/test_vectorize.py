import json
import math
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
from affine import Affine
from pyproj import Geod, Transformer
from rasterio.transform import from_origin
from scipy import ndimage

from geoct.classes import ClassTable
from geoct.cli import main as geoct_main
from geoct.errors import AlignmentError, InputError, OutputExistsError
from geoct.export.sidecars import vector_style_paths
from geoct.export.vector_layers import style_name
from geoct.export.vectorize import map_tolerance, vectorize_raster
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
    # ground values: UTM map units are within 0.1 % of metres near the central meridian
    assert pond.area_m2 == pytest.approx(20 * 15 * PIXEL_AREA, rel=1e-3)
    assert pond.perimeter_m == pytest.approx(2 * (20 + 15) * 0.5, rel=1e-3)
    assert pond.mean_confidence == pytest.approx(102 / 255)
    field = polygon_at(layer, classes_tif, col=150, row=60)
    assert field.class_id == 1
    assert field.mean_confidence == pytest.approx(204 / 255)
    assert np.allclose(layer.area_m2, layer.area, rtol=1e-3)


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
    assert (tmp_path / "styled.gpkg.sld").read_text().startswith("<StyledLayerDescriptor")
    assert not (tmp_path / "styled.qml").exists()
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
    assert (tmp_path / "out.geojson.sld").exists()


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
    assert not (tmp_path / "x.gpkg.sld").exists()
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
    assert default_output(Path("o/mosaic.classes.vrt")) == Path("o/mosaic.polygons.gpkg")


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


# Issue 10: ground areas and perimeters in any CRS, checked against references
# computed pixel by pixel, independently of geoct.geodesy.

WGS84 = Geod(ellps="WGS84")


def web_mercator_grid(lat: float, ground: float, pixels: int) -> Affine:
    """A north-up EPSG:3857 grid of *pixels* square pixels spanning *ground* metres at *lat*."""
    x0, y0 = Transformer.from_crs(4326, 3857, always_xy=True).transform(13.4, lat)
    size = ground / pixels / math.cos(math.radians(lat))
    return Affine(size, 0.0, x0, 0.0, -size, y0)


#: Name -> (CRS, transform, (height, width), block side of the class pattern).
GROUND_SCENES = {
    "utm": ("EPSG:32633", from_origin(500_000.0, 5_800_000.0, 0.5, 0.5), (80, 80), 10),
    "web_mercator": ("EPSG:3857", web_mercator_grid(52.0, 40.0, 60), (60, 60), 10),
    "lonlat": ("EPSG:4326", from_origin(13.4, 52.0, 1e-4, 1e-4), (60, 60), 10),
    "world": ("EPSG:4326", from_origin(-180.0, 90.0, 1.0, 1.0), (180, 360), 20),
    "antimeridian": (
        "EPSG:32660",
        from_origin(630_000.0, 7_230_000.0, 1000.0, 1000.0),
        (30, 30),
        5,
    ),
}


def zone_area(lat: float) -> float:
    """Exact WGS84 area between the equator and *lat*, per radian of longitude (m²)."""
    e2, b = WGS84.es, WGS84.b
    e, s = math.sqrt(e2), math.sin(math.radians(lat))
    return b * b / 2 * (s / (1 - e2 * s * s) + math.log((1 + e * s) / (1 - e * s)) / (2 * e))


def lonlat_pixel_areas(transform: Affine, height: int, width: int) -> np.ndarray:
    """Exact ellipsoidal area of each pixel of a north-up lon/lat grid."""
    lats = [transform.f + transform.e * row for row in range(height + 1)]
    rows = [abs(zone_area(lats[r]) - zone_area(lats[r + 1])) for r in range(height)]
    return np.repeat(np.array(rows)[:, None] * math.radians(transform.a), width, axis=1)


def geodesic_pixel_areas(crs: str, transform: Affine, height: int, width: int) -> np.ndarray:
    """Geodesic area of each pixel, its edges densified in the raster's CRS."""
    to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
    t = np.linspace(0.0, 1.0, 4, endpoint=False)
    one, zero = np.ones_like(t), np.zeros_like(t)
    ring = np.concatenate([np.c_[t, zero], np.c_[one, t], np.c_[1 - t, one], np.c_[zero, 1 - t]])
    areas = np.empty((height, width))
    for row in range(height):
        for col in range(width):
            lon, lat = to_lonlat.transform(*(transform @ (ring[:, 0] + col, ring[:, 1] + row)))
            areas[row, col] = abs(WGS84.polygon_area_perimeter(lon, lat)[0])
    return areas


def pixel_areas(crs: str, transform: Affine, height: int, width: int) -> np.ndarray:
    if crs == "EPSG:4326":
        return lonlat_pixel_areas(transform, height, width)
    return geodesic_pixel_areas(crs, transform, height, width)


def edge_lengths(crs: str, transform: Affine, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Geodesic length of every horizontal ((h + 1) x w) and vertical (h x (w + 1)) pixel edge."""
    to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
    cols, rows = np.meshgrid(np.arange(width + 1.0), np.arange(height + 1.0))
    lon, lat = to_lonlat.transform(*(transform @ (cols, rows)))
    horizontal = WGS84.inv(lon[:, :-1], lat[:, :-1], lon[:, 1:], lat[:, 1:])[2]
    vertical = WGS84.inv(lon[:-1], lat[:-1], lon[1:], lat[1:])[2]
    return horizontal, vertical


def class_perimeter(data: np.ndarray, class_id: int, edges: tuple[np.ndarray, ...]) -> float:
    """Ground length of the pixel edges between *class_id* and anything else."""
    inside = np.pad(data == class_id, 1)
    horizontal = inside[:-1, 1:-1] ^ inside[1:, 1:-1]
    vertical = inside[1:-1, :-1] ^ inside[1:-1, 1:]
    return float(edges[0][horizontal].sum() + edges[1][vertical].sum())


def block_pattern(height: int, width: int, block: int) -> np.ndarray:
    """Rectangles of 3 classes that meet same-class rectangles only at corners (no holes)."""
    rows, cols = np.mgrid[:height, :width] // block
    data = ((rows + cols) % 3).astype(np.uint8)
    data[:block, :block] = 255
    return data


def world_pattern() -> np.ndarray:
    """Polar caps and belts spanning all longitudes, around blocks and a nodata block."""
    data = block_pattern(180, 360, 20)
    data[:30], data[30:60], data[120:150], data[150:] = 0, 1, 2, 1
    data[80:100, 180:200] = 255
    return data


def vectorize_cli(*args: object) -> None:
    assert geoct_main(["vectorize", *map(str, args)]) == 0


@pytest.mark.parametrize(
    "name",
    [
        "utm",
        "web_mercator",
        "lonlat",
        "world",
        "antimeridian",
    ],
)
def test_ground_areas_and_perimeters(tmp_path: Path, raster_writer, name: str) -> None:
    crs, transform, (height, width), block = GROUND_SCENES[name]
    data = world_pattern() if name == "world" else block_pattern(height, width, block)
    raster = raster_writer(tmp_path / f"{name}.tif", data, transform=transform, crs=crs)
    out = tmp_path / f"{name}.gpkg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no class names in the raster
        vectorize_cli(raster, "--output", out)
    layer = read_layer(out)
    assert layer.crs == crs
    areas = pixel_areas(crs, transform, height, width)
    edges = edge_lengths(crs, transform, height, width)
    for class_id in range(3):
        polygons = layer[layer.class_id == class_id]
        area = areas[data == class_id].sum()
        assert polygons.area_m2.sum() == pytest.approx(area, rel=5e-3)
        perimeter = class_perimeter(data, class_id, edges)
        assert polygons.perimeter_m.sum() == pytest.approx(perimeter, rel=5e-3)
    if name == "world":
        assert layer.area_m2.sum() == pytest.approx(
            areas[data != 255].sum(), rel=1e-4
        ) and areas.sum() == pytest.approx(4 * math.pi * zone_area(90.0), rel=1e-12)


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326"])
def test_perimeter_includes_holes(tmp_path: Path, raster_writer, crs: str) -> None:
    transform = GROUND_SCENES["utm" if crs == "EPSG:32633" else "lonlat"][1]
    data = np.zeros((30, 30), np.uint8)
    data[10:20, 10:20] = 1
    raster = raster_writer(tmp_path / "pond.tif", data, transform=transform, crs=crs)
    table = ClassTable(("field", "pond"), ((40, 200, 40), (30, 30, 220)))
    field = read_layer(vectorize_raster(raster, tmp_path / "pond.gpkg", classes=table))
    edges = edge_lengths(crs, transform, 30, 30)
    perimeter = field[field.class_id == 0].perimeter_m.sum()
    assert perimeter == pytest.approx(class_perimeter(data, 0, edges), rel=5e-3)


def test_min_area_is_ground_area(tmp_path: Path, raster_writer) -> None:
    transform = web_mercator_grid(52.0, 40.0, 60)
    data = np.zeros((60, 60), np.uint8)
    data[5:55:10, 5:55:10] = 1  # single pixels: 1.17 map units², 0.44 m² on the ground
    data[8:11, 30] = 2  # three pixels: 1.33 m²
    data[40:42, 40:42] = 2  # four pixels: 1.78 m²
    raster = raster_writer(tmp_path / "m.tif", data, transform=transform, crs="EPSG:3857")
    names = "ground,speck,patch"
    vectorize_cli(raster, "--output", tmp_path / "all.gpkg", "--classes", names)
    vectorize_cli(raster, "--output", tmp_path / "big.gpkg", "--classes", names, "--min-area", 1)
    every, big = read_layer(tmp_path / "all.gpkg"), read_layer(tmp_path / "big.gpkg")
    specks = every[every.class_id == 1]
    assert len(specks) == 25
    assert (specks.area > 1.15).all()  # map units
    assert specks.area_m2.to_numpy() == pytest.approx((40 / 60) ** 2, rel=5e-3)
    assert set(big.class_name) == {"ground", "patch"}
    pixel = (40 / 60) ** 2
    assert sorted(big[big.class_id == 2].area_m2) == pytest.approx([3 * pixel, 4 * pixel], rel=5e-3)


def test_map_tolerance() -> None:
    mercator = web_mercator_grid(52.0, 40.0, 60)
    k = 1 / math.cos(math.radians(52.0))  # spherical scale; WGS84's differs by 0.2 %
    assert map_tolerance(2.0, "EPSG:3857", mercator, 60, 60) == pytest.approx(2 * k, rel=5e-3)
    lonlat = GROUND_SCENES["lonlat"][1]
    degree_of_latitude = WGS84.inv(13.4, 51.5, 13.4, 52.5)[2]
    assert map_tolerance(5.0, "EPSG:4326", lonlat, 60, 60) == pytest.approx(
        5 / degree_of_latitude, rel=1e-3
    )
    utm = GROUND_SCENES["utm"][1]
    assert map_tolerance(1.0, "EPSG:32633", utm, 80, 80) == pytest.approx(0.9996, rel=1e-4)
    assert map_tolerance(3.0, None, utm, 80, 80) == 3.0


def test_simplify_is_in_metres_on_lonlat(tmp_path: Path, scene: np.ndarray, raster_writer) -> None:
    transform = GROUND_SCENES["lonlat"][1]
    raster = raster_writer(tmp_path / "ll.tif", scene, transform=transform, crs="EPSG:4326")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        exact = read_layer(vectorize_raster(raster, tmp_path / "e.gpkg", block_size=BLOCK))
        simple = read_layer(
            vectorize_raster(raster, tmp_path / "s.gpkg", simplify=15.0, block_size=BLOCK)
        )
    assert shapely.get_num_coordinates(simple.geometry.values).sum() < (
        shapely.get_num_coordinates(exact.geometry.values).sum()
    )
    assert simple.area_m2.sum() == pytest.approx(exact.area_m2.sum(), rel=0.02)
    deviation = max(
        shapely.hausdorff_distance(simple[simple.class_id == c].union_all(), exact_class)
        for c, exact_class in exact.dissolve("class_id").geometry.items()
    )
    assert 0 < deviation < 2 * 15.0 / WGS84.inv(13.4, 51.5, 13.4, 52.5)[2]  # degrees


def test_geopackage_version(tmp_path: Path, classes_tif: Path) -> None:
    def versions(path: Path) -> tuple[int, int]:
        with sqlite3.connect(path) as db:
            application_id = db.execute("PRAGMA application_id").fetchone()[0]
            return application_id, db.execute("PRAGMA user_version").fetchone()[0]

    gpkg = 0x47504B47  # "GPKG"
    vectorize_cli(classes_tif, "--output", tmp_path / "v12.gpkg")
    assert versions(tmp_path / "v12.gpkg") == (gpkg, 10200)
    vectorize_cli(classes_tif, "--output", tmp_path / "v14.gpkg", "--gpkg-version", "1.4")
    assert versions(tmp_path / "v14.gpkg") == (gpkg, 10400)
    assert len(read_layer(tmp_path / "v12.gpkg")) == len(read_layer(tmp_path / "v14.gpkg"))


def test_long_layer_name_fits_style_name(tmp_path: Path, classes_tif: Path) -> None:
    name = "S2B_MSIL2A_20240501T101559_N0510_R065_T33UUU_20240501T131512.polygons"
    out = vectorize_raster(classes_tif, tmp_path / f"{name}.gpkg", block_size=BLOCK)
    assert pyogrio.list_layers(out)[0][0] == name
    with sqlite3.connect(out) as db:
        table, style = db.execute("SELECT f_table_name, styleName FROM layer_styles").fetchone()
    assert table == name
    assert style == style_name(name) == "S2B_MSIL2A_202~131512.polygons"
    assert len(style) == 30
    assert style_name("short") == "short"


def test_geopackage_and_geojson_side_by_side(tmp_path: Path, classes_tif: Path) -> None:
    vectorize_cli(classes_tif, "--output", tmp_path / "v.gpkg")
    vectorize_cli(classes_tif, "--output", tmp_path / "v.geojson")
    written = {p.name for p in tmp_path.iterdir()} - {classes_tif.name}
    assert written == {"v.gpkg", "v.gpkg.sld", "v.geojson", "v.geojson.sld", "v.qml"}
    assert len(read_layer(tmp_path / "v.gpkg")) == len(gpd.read_file(tmp_path / "v.geojson"))
    assert vector_style_paths(tmp_path / "v.geojson")["qml"] == tmp_path / "v.qml"
    assert set(vector_style_paths("a/b.polygons.gpkg")) == {"sld"}
