"""Generated class, confidence and label rasters for the export tests."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

from geoct.classes import ClassTable

#: Pixel grid of the generated rasters: 0.5 m UTM pixels.
TRANSFORM = from_origin(500_000.0, 5_800_000.0, 0.5, 0.5)
CRS = "EPSG:32633"
PIXEL_AREA = 0.25

CLASSES = ClassTable(
    names=("bare", "field", "water & <lake>"),
    colors=((200, 50, 50), (40, 200, 40), (30, 30, 220)),
)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    transform: Affine = TRANSFORM,
    crs: str | None = CRS,
    nodata: int | None = 255,
    classes: ClassTable | None = None,
) -> Path:
    data = data if data.ndim == 3 else data[None]
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if classes is not None:
            cmap = {i: (*c, 255) for i, c in enumerate(classes.colors)}
            dst.write_colormap(1, cmap)
            dst.update_tags(CLASS_NAMES=json.dumps(list(classes.names)))
    return path


def field_scene() -> np.ndarray:
    """A 150x200 class raster: a big field crossing 64-px block edges, a pond, a staircase, noise, nodata."""
    rng = np.random.default_rng(0)
    data = np.zeros((150, 200), np.uint8)
    data[10:140, 20:190] = 1
    data[30:50, 30:45] = 2
    for row in range(70, 110):
        data[row, 190 - (row - 70) : 190] = 0
    data[0:5, 0:5] = 255
    noise = np.kron(rng.integers(0, 3, (5, 10)), np.ones((10, 10), np.uint8)).astype(np.uint8)
    data[97:147, 3:103] = noise
    return data


@pytest.fixture
def classes() -> ClassTable:
    return CLASSES


@pytest.fixture
def raster_writer():
    return write_raster


@pytest.fixture
def scene() -> np.ndarray:
    return field_scene()


@pytest.fixture
def classes_tif(tmp_path: Path, scene: np.ndarray) -> Path:
    return write_raster(tmp_path / "scene.classes.tif", scene, classes=CLASSES)


@pytest.fixture
def confidence_tif(tmp_path: Path, scene: np.ndarray) -> Path:
    confidence = np.full(scene.shape, 204, np.uint8)
    confidence[scene == 2] = 102
    confidence[scene == 255] = 0
    return write_raster(tmp_path / "scene.confidence.tif", confidence, nodata=0)
