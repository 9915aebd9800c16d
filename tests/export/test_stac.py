import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
from pystac.extensions.classification import ClassificationExtension
from pystac.extensions.projection import ProjectionExtension

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
