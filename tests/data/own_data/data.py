#!/usr/bin/env python3

"""An analyst's own data: one UTM orthophoto and label polygons digitised in lon/lat.

The polygons are stored in EPSG:4326 while the orthophoto is in UTM 33N, and
include what real digitising produces: a building (with a courtyard) on top of a
large grass polygon, a road running off the image, a self-intersecting "bow-tie"
tree, an empty geometry and unlabelled gaps. Run as a script to write them into a
folder (``python tests/data/own_data/data.py OUT``); the tests call :func:`make`.
"""

import argparse
import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from rasterio.transform import Affine

#: CRS of the orthophoto.
IMAGE_CRS = "EPSG:32633"

#: CRS the polygons are stored in.
VECTOR_CRS = "EPSG:4326"

#: Orthophoto side in pixels and ground sample distance in metres.
SIZE, GSD = 256, 0.5

TRANSFORM = Affine(GSD, 0, 500_000.0, 0, -GSD, 5_800_000.0)

#: Class names as a user's classes.json lists them (a subset order, not sorted).
CLASSES = {
    "names": ["grass", "building", "road", "tree", "water"],
    "colors": [[120, 200, 80], [200, 60, 60], [128, 128, 128], [20, 120, 20], [40, 80, 220]],
}

#: Image colour of each class (R, G, B); unlabelled ground is brown.
COLOURS = {
    "grass": (120, 200, 80),
    "building": (200, 60, 60),
    "road": (128, 128, 128),
    "tree": (20, 120, 20),
    "water": (40, 80, 220),
}


def _box(col0: float, row0: float, col1: float, row1: float) -> list[tuple[float, float]]:
    return [(col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)]


def features_px() -> list[tuple[str, int, shapely.Geometry | None]]:
    """(class, priority, polygon in pixel coordinates (col, row)) of each feature."""
    return [
        ("grass", 1, shapely.Polygon(_box(10, 10, 246, 120))),
        ("building", 2, shapely.Polygon(_box(40, 30, 90, 80), [_box(55, 45, 75, 65)])),
        ("road", 1, shapely.Polygon(_box(-20, 140, 276, 170))),
        # self-intersecting bow-tie: two triangles meeting at (190, 210)
        ("tree", 3, shapely.Polygon([(150, 180), (230, 240), (230, 180), (150, 240), (150, 180)])),
        ("tree", 3, shapely.Polygon()),
        ("water", 1, shapely.Polygon(_box(20.3, 190.7, 100.2, 250.4))),
    ]


def to_map(geom: shapely.Geometry, transform: Affine = TRANSFORM) -> shapely.Geometry:
    """Pixel coordinates (col, row) to the orthophoto's CRS."""

    def xy(coords: np.ndarray) -> np.ndarray:
        x, y = transform @ (coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, xy)


def label_frame(crs: str = VECTOR_CRS, shift: tuple[float, float] = (0.0, 0.0)) -> gpd.GeoDataFrame:
    """The features in *crs*, optionally shifted (in *crs* units) after reprojection."""
    rows = features_px()
    geoms = gpd.GeoSeries([to_map(g) for _, _, g in rows], crs=IMAGE_CRS).to_crs(crs)
    geoms = geoms.translate(*shift)
    return gpd.GeoDataFrame(
        {
            "class": [c for c, _, _ in rows],
            "code": [CLASSES["names"].index(c) for c, _, _ in rows],
            "priority": [p for _, p, _ in rows],
        },
        geometry=geoms,
        crs=crs,
    )


def write_image(path: Path) -> np.ndarray:
    """Write the orthophoto: class colours plus noise where polygons are, brown elsewhere."""
    rng = np.random.default_rng(0)
    image = np.empty((3, SIZE, SIZE), dtype=np.uint8)
    image[:] = np.array([140, 110, 70], dtype=np.uint8)[:, None, None]
    for name, _, geom in features_px():
        if geom.is_empty:
            continue
        minx, miny, maxx, maxy = (round(v) for v in shapely.make_valid(geom).bounds)
        rows = slice(max(miny, 0), min(maxy, SIZE))
        cols = slice(max(minx, 0), min(maxx, SIZE))
        image[:, rows, cols] = np.array(COLOURS[name], dtype=np.uint8)[:, None, None]
    noise = rng.integers(-10, 11, image.shape)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path, "w", driver="GTiff", width=SIZE, height=SIZE, count=3, dtype="uint8",
        crs=IMAGE_CRS, transform=TRANSFORM,
    ) as dst:  # fmt: skip
        dst.write(image)
    return image


def make(root: Path) -> dict[str, Path]:
    """Write ``ortho.tif``, ``labels.gpkg`` (layer ``labels``) and ``classes.json`` under *root*."""
    root.mkdir(parents=True, exist_ok=True)
    paths = {
        "image": root / "ortho.tif",
        "labels": root / "labels.gpkg",
        "classes": root / "classes.json",
    }
    write_image(paths["image"])
    label_frame().to_file(paths["labels"], layer="labels", driver="GPKG")
    paths["classes"].write_text(json.dumps(CLASSES))
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    for name, path in make(parser.parse_args().out).items():
        print(f"{name}: {path}")
