import json
import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import shapely
from affine import Affine
from pyproj import Geod, Transformer
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterExtension
from rasterio.transform import from_origin
from shapely.geometry import shape

from geoct.classes import ClassTable
from geoct.errors import InputError, OutputExistsError
from geoct.export.stac import build_stac_item, validate_offline, write_stac_item
from geoct.metadata import ModelSpec

PROVENANCE = {
    "checkpoint": "model.ckpt",
    "checkpoint_sha256": "ab" * 32,
    "config": {"window": 64, "batch_size": 2},
    "window": 64,
    "overlap": 0.25,
    "datetime": "2024-05-01T10:00:00+00:00",
}


@pytest.fixture
def probabilities_tif(tmp_path: Path, raster_writer, scene: np.ndarray) -> Path:
    probs = np.zeros((3, *scene.shape), np.uint8)
    return raster_writer(tmp_path / "scene.probabilities.tif", probs, nodata=None)


def test_item_content(
    tmp_path: Path,
    classes_tif: Path,
    confidence_tif: Path,
    probabilities_tif: Path,
    classes: ClassTable,
) -> None:
    spec = ModelSpec(("R", "G", "B"), (0.0,) * 3, (1.0,) * 3, 0.5, 64, classes)
    out = write_stac_item(
        classes_tif,
        tmp_path / "scene.item.json",
        confidence_path=confidence_tif,
        probabilities_path=probabilities_tif,
        spec=spec,
        provenance=PROVENANCE,
    )
    d = json.loads(out.read_text())
    item = pystac.Item.from_dict(d)
    validate_offline(item)
    assert item.id == "scene"
    assert item.datetime == datetime.fromisoformat(PROVENANCE["datetime"])
    west, south, east, north = item.bbox
    assert 14 < west < east < 16 and 52 < south < north < 53
    assert d["geometry"]["type"] == "Polygon"
    assert set(item.assets) == {"classes", "confidence", "probabilities"}
    assert Path(item.assets["classes"].href) == Path("scene.classes.tif")
    assert "data" in item.assets["classes"].roles
    assert "quality" in item.assets["confidence"].roles
    assert item.assets["classes"].media_type == pystac.MediaType.COG
    entries = ClassificationExtension.ext(item.assets["classes"]).classes
    assert [c.value for c in entries] == [0, 1, 2, 255]
    assert entries[2].description == "water & <lake>" and entries[2].name == "water____lake_"
    assert entries[1].color_hint == "28C828"
    assert entries[-1].nodata is True
    proj = ProjectionExtension.ext(item)
    assert proj.epsg == 32633 and proj.shape == [150, 200]
    assert proj.transform[:3] == [0.5, 0.0, 500000.0]
    assert "UTM zone 33N" in proj.wkt2
    props = item.properties
    assert props["geoct:checkpoint_sha256"] == "ab" * 32
    assert props["geoct:overlap"] == 0.25 and props["geoct:window"] == 64
    assert props["geoct:config"] == {"window": 64, "batch_size": 2}
    assert props["geoct:version"] and props["geoct:torch_version"]
    assert props["geoct:model_spec"]["bands"] == ["R", "G", "B"]
    assert d["assets"]["confidence"]["raster:bands"][0]["nodata"] == 0


def test_classes_from_raster_and_round_trip(classes_tif: Path) -> None:
    item = build_stac_item(classes_tif)
    validate_offline(item)
    again = pystac.Item.from_dict(item.to_dict())
    assert again.to_dict() == item.to_dict()
    names = [c.description for c in ClassificationExtension.ext(again.assets["classes"]).classes]
    assert names[:3] == ["bare", "field", "water & <lake>"]


def test_validate_offline_catches_missing_extension(classes_tif: Path) -> None:
    item = build_stac_item(classes_tif)
    del item.assets["classes"].extra_fields["classification:classes"]
    with pytest.raises(ValueError, match="classification"):
        validate_offline(item)


def test_refuses_existing_and_unplaced(tmp_path: Path, classes_tif: Path, raster_writer) -> None:
    out = tmp_path / "item.json"
    out.write_text("{}")
    with pytest.raises(OutputExistsError):
        write_stac_item(classes_tif, out)
    assert out.read_text() == "{}"
    no_crs = raster_writer(tmp_path / "nocrs.tif", np.zeros((4, 4), np.uint8), crs=None)
    with pytest.raises(InputError, match="no CRS"):
        write_stac_item(no_crs, tmp_path / "nocrs.json")


# Issue 10: gsd in ground metres and true footprints on any grid.

WGS84 = Geod(ellps="WGS84")

#: Name -> (CRS, transform, (height, width)) of scenes whose map units are not metres.
GRIDS = {
    "lonlat": ("EPSG:4326", from_origin(13.4, 52.0, 1e-4, 1e-4), (60, 80)),
    "web_mercator": ("EPSG:3857", from_origin(1_491_681.0, 6_800_125.0, 1.0, 1.0), (60, 80)),
    "world": ("EPSG:4326", from_origin(-180.0, 90.0, 1.0, 1.0), (180, 360)),
}

#: Rotated and sheared UTM grids of 0.5 m pixels.
UTM_ORIGIN = Affine.translation(500_000.0, 5_800_000.0)
ROTATED = {
    "rotated_90": UTM_ORIGIN @ Affine.rotation(90) @ Affine.scale(0.5, -0.5),
    "rotated_30": UTM_ORIGIN @ Affine.rotation(30) @ Affine.scale(0.5, -0.5),
    "sheared": UTM_ORIGIN @ Affine.shear(20, 0) @ Affine.scale(0.5, -0.5),
}


def reference_gsd(crs: str, transform: Affine, height: int, width: int) -> float:
    """Mean geodesic length of one column and one row step at the scene centre."""
    to_lonlat = Transformer.from_crs(crs, 4326, always_xy=True)
    cx, cy = width / 2, height / 2
    points = [transform @ p for p in ((cx, cy), (cx + 1, cy), (cx, cy + 1))]
    (x0, y0), (x1, y1), (x2, y2) = (to_lonlat.transform(*p) for p in points)
    return (WGS84.inv(x0, y0, x1, y1)[2] + WGS84.inv(x0, y0, x2, y2)[2]) / 2


def stac_dict(tmp_path: Path, raster_writer, crs, transform, shape_hw, classes) -> dict:
    data = np.zeros(shape_hw, np.uint8)
    raster = raster_writer(
        tmp_path / "grid.classes.tif", data, transform=transform, crs=crs, classes=classes
    )
    confidence = raster_writer(
        tmp_path / "grid.confidence.tif", data, transform=transform, crs=crs, nodata=0
    )
    out = write_stac_item(raster, tmp_path / "grid.item.json", confidence_path=confidence)
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", list(GRIDS))
def test_gsd_is_ground_metres(tmp_path: Path, raster_writer, classes: ClassTable, name) -> None:
    crs, transform, shape_hw = GRIDS[name]
    d = stac_dict(tmp_path, raster_writer, crs, transform, shape_hw, classes)
    gsd = reference_gsd(crs, transform, *shape_hw)
    assert d["properties"]["gsd"] == pytest.approx(gsd, rel=1e-3)
    for key in ("classes", "confidence"):
        band = d["assets"][key]["raster:bands"][0]
        assert band["spatial_resolution"] == pytest.approx(gsd, rel=1e-3)
    if name == "web_mercator":  # 1 map unit at 52 N
        assert d["properties"]["gsd"] == pytest.approx(math.cos(math.radians(52.0)), rel=5e-3)
    if name == "world":
        assert d["bbox"] == pytest.approx([-180, -90, 180, 90])


@pytest.mark.parametrize("name", list(ROTATED))
def test_rotated_grid(tmp_path: Path, raster_writer, classes: ClassTable, name: str) -> None:
    transform, shape_hw = ROTATED[name], (40, 30)
    d = stac_dict(tmp_path, raster_writer, "EPSG:32633", transform, shape_hw, classes)
    item = pystac.Item.from_dict(d)
    validate_offline(item)
    gsd = reference_gsd("EPSG:32633", transform, *shape_hw)
    assert item.common_metadata.gsd == pytest.approx(gsd, rel=1e-6)
    assert 0.5 <= gsd < 0.6
    band = RasterExtension.ext(item.assets["classes"]).bands[0]
    assert band.spatial_resolution == pytest.approx(gsd, rel=1e-6)
    assert ProjectionExtension.ext(item).transform == list(transform)[:6]
    to_utm = Transformer.from_crs(4326, 32633, always_xy=True)
    outline = shapely.transform(
        shape(d["geometry"]), lambda xy: np.column_stack(to_utm.transform(*xy.T))
    )
    quad = shapely.Polygon([transform @ c for c in ((0, 0), (30, 0), (30, 40), (0, 40))])
    assert outline.is_valid and quad.area == pytest.approx(30 * 40 * 0.25, rel=1e-9)
    assert outline.symmetric_difference(quad).area < 1e-6 * quad.area
    assert shapely.is_ccw(shape(d["geometry"]).exterior)
    west, south, east, north = d["bbox"]
    assert (west, south, east, north) == pytest.approx(shape(d["geometry"]).bounds)


def test_bbox_across_antimeridian(tmp_path: Path, raster_writer, classes: ClassTable) -> None:
    transform = from_origin(630_000.0, 7_230_000.0, 1000.0, 1000.0)  # UTM 60N, 65 N
    d = stac_dict(tmp_path, raster_writer, "EPSG:32660", transform, (30, 30), classes)
    west, south, east, north = d["bbox"]
    assert 179 < west <= 180 and -180 <= east < -179 and 64 < south < north < 66
    assert d["geometry"]["type"] == "MultiPolygon"
    assert d["properties"]["gsd"] == pytest.approx(1000, rel=3e-3)
