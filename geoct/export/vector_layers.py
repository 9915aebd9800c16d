"""Polygon layers on disk: GeoPackage or GeoJSON, written batch by batch, with styles.

Finished polygons become features with their class, ground area and perimeter
(:func:`build_frame`) and are appended to the output layer in batches
(:class:`LayerWriter`), so the layer never has to fit in memory. A GeoPackage
carries its QGIS style in its ``layer_styles`` table (:func:`add_layer_style`);
QML/SLD sidecars are written beside the layer (:func:`write_styles`).
"""

import io
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import IO, Self

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from pyproj import CRS

from ..classes import ClassTable
from ..errors import ConfigError, InputError
from ..geodesy import ground_area_perimeter
from .polygonize import Pieces, VectorizeStats
from .styles import vector_qml, vector_sld

#: Output formats by file extension: OGR driver and whether features go to EPSG:4326.
FORMATS: dict[str, tuple[str, bool]] = {
    ".gpkg": ("GPKG", False),
    ".geojson": ("GeoJSON", True),
    ".json": ("GeoJSON", True),
}

#: GeoPackage versions that can be written. 1.2 is what GDAL < 3.7 writes itself, so
#: QGIS builds on older GDAL (e.g. QGIS 3.22 on Debian 12) open it without warning
#: that the file "may only be partially supported", as they do for 1.4.
GPKG_VERSIONS = ("1.2", "1.3", "1.4")

#: GeoPackage version written by default.
DEFAULT_GPKG_VERSION = "1.2"

#: Longest ``layer_styles.styleName`` (a ``TEXT(30)`` column).
STYLE_NAME_LENGTH = 30

#: Polygons collected before they are appended to the output layer in one go.
WRITE_BATCH = 20_000

#: Attribute columns of the polygon layer, with their dtypes.
COLUMNS: dict[str, str] = {
    "class_id": "int32",
    "class_name": "object",
    "area_m2": "float64",
    "perimeter_m": "float64",
    "mean_confidence": "float64",
}

#: The ``layer_styles`` table QGIS reads from a GeoPackage (as QGIS itself creates it).
LAYER_STYLES_DDL = """
CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    f_table_catalog TEXT(256),
    f_table_schema TEXT(256),
    f_table_name TEXT(256),
    f_geometry_column TEXT(256),
    styleName TEXT(30),
    styleQML TEXT,
    styleSLD TEXT,
    useAsDefault BOOLEAN,
    description TEXT,
    owner TEXT(30),
    ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)
"""


def output_format(path: Path) -> tuple[str, bool]:
    """Return the OGR driver for *path* and whether it needs EPSG:4326.

    Raises:
        InputError: If the extension is not a supported vector format.
    """
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        supported = ", ".join(FORMATS)
        raise InputError(path, f"unsupported vector format (use {supported})") from None


def empty_frame(crs: CRS | None, with_confidence: bool) -> gpd.GeoDataFrame:
    """Return a polygon layer with the attribute schema and no features."""
    columns = {
        name: np.array([], dtype=dtype)
        for name, dtype in COLUMNS.items()
        if with_confidence or name != "mean_confidence"
    }
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def build_frame(
    merged: Pieces,
    classes: ClassTable,
    geoms: np.ndarray,
    crs: CRS | None,
    min_area: float,
    with_confidence: bool,
    unit: tuple[float, float] = (1.0, 1.0),
) -> gpd.GeoDataFrame:
    """Assemble the attribute table of the polygons.

    Args:
        merged: Seamless polygons with their statistics.
        classes: Class names by id; ids beyond the table are named ``class_ID``.
        geoms: The simplified polygons in map coordinates.
        crs: Map CRS; areas and perimeters are in map units without one.
        min_area: Smallest ground area kept, in m².
        with_confidence: Whether to add ``mean_confidence``.
        unit: Multiplier and divisor of stored confidence
            (:func:`~geoct.export.vectorize.confidence_unit`).

    Returns:
        The polygon layer.
    """
    keep = ~shapely.is_empty(geoms)
    area, perimeter = ground_area_perimeter(geoms, crs)
    keep &= area >= min_area
    if not keep.any():
        return empty_frame(crs, with_confidence)
    class_ids = np.asarray(merged.class_ids, dtype=np.int32)[keep]
    names = np.array(
        [classes.names[i] if i < classes.num_classes else f"class_{i}" for i in class_ids],
        dtype=object,
    )
    columns = {
        "class_id": class_ids,
        "class_name": names,
        "area_m2": area[keep],
        "perimeter_m": perimeter[keep],
    }
    if with_confidence:
        count = np.asarray(merged.conf_count, dtype=np.float64)[keep]
        total = np.asarray(merged.conf_sum, dtype=np.float64)[keep]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total * unit[0] / (count * unit[1])
            columns["mean_confidence"] = np.where(count > 0, mean, np.nan)
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geoms[keep], crs=crs), crs=crs)


def style_name(layer: str) -> str:
    """Return a ``layer_styles.styleName`` for *layer*: its name, shortened to 30 characters.

    Long names keep their start and end around a ``~``, since scene names tend to
    differ at either end (``S2A_..._T33UUU.polygons``).
    """
    if len(layer) <= STYLE_NAME_LENGTH:
        return layer
    head = (STYLE_NAME_LENGTH - 1) // 2
    tail = STYLE_NAME_LENGTH - 1 - head
    return f"{layer[:head]}~{layer[-tail:]}"


def add_layer_style(gpkg: Path, layer: str, qml: str, sld: str) -> None:
    """Store a default style for *layer* in a GeoPackage's ``layer_styles`` table.

    QGIS applies the row whose ``useAsDefault`` is true when it opens the layer.

    Args:
        gpkg: GeoPackage file.
        layer: Feature table the style is for.
        qml: QGIS style document.
        sld: SLD style document.
    """
    now = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
    with closing(sqlite3.connect(gpkg)) as db, db:
        row = db.execute(
            "SELECT column_name FROM gpkg_geometry_columns WHERE table_name = ?", (layer,)
        ).fetchone()
        db.execute(LAYER_STYLES_DDL)
        db.execute(
            "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
            f"owner, ui, update_time) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, '', NULL, {now})",
            (layer, row[0], style_name(layer), qml, sld, "geoct land-cover classes"),
        )
        db.execute(
            "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
            f"description, last_change) VALUES ('layer_styles', 'attributes', "
            f"'layer_styles', '', {now})"
        )


def check_gpkg_version(gpkg_version: str) -> str:
    """Return *gpkg_version* if GeoPackages of that version can be written.

    Raises:
        ConfigError: Otherwise.
    """
    if gpkg_version not in GPKG_VERSIONS:
        raise ConfigError(
            f"GeoPackage version {gpkg_version!r} is not supported "
            f"(use one of {', '.join(GPKG_VERSIONS)})"
        )
    return gpkg_version


class LayerWriter:
    """Write the polygon layer batch by batch, so that it never has to fit in memory.

    Features are collected up to *batch* polygons and then appended: to a
    GeoPackage layer with pyogrio (``append=True``); for GeoJSON, GDAL writes each
    batch as an RFC 7946 FeatureCollection in memory and its features are copied
    into one FeatureCollection on disk, since GDAL's GeoJSON driver would reload
    and rewrite the whole file on every append, and without the RFC 7946 layer
    options. A layer that got no feature is written empty, with its schema.

    Use it as a context manager; :meth:`close` completes the file.
    """

    def __init__(
        self,
        path: Path,
        layer: str,
        empty: gpd.GeoDataFrame,
        gpkg_version: str = DEFAULT_GPKG_VERSION,
        stats: VectorizeStats | None = None,
        batch: int | None = None,
    ) -> None:
        """Prepare to write.

        Args:
            path: File to write, ``.gpkg`` or ``.geojson`` (not created until the
                first append or :meth:`close`).
            layer: Layer name.
            empty: The layer with no features, written when no feature comes.
            gpkg_version: GeoPackage version of a ``.gpkg`` file.
            stats: Statistics to count written polygons and appends in.
            batch: Polygons collected before an append (default: :data:`WRITE_BATCH`).
        """
        self.path, self.layer, self.empty = path, layer, empty
        self.driver, self.geographic = output_format(path)
        self.gpkg_version = gpkg_version
        self.stats = stats if stats is not None else VectorizeStats()
        self.batch = batch or WRITE_BATCH
        self.pending: list[gpd.GeoDataFrame] = []
        self.pending_rows = 0
        self.appends = 0
        self.json: IO[str] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.json is not None:
            self.json.close()
            self.json = None

    def write(self, frame: gpd.GeoDataFrame) -> None:
        """Queue features; append them once a batch is full."""
        if len(frame) == 0:
            return
        self.pending.append(frame)
        self.pending_rows += len(frame)
        if self.pending_rows >= self.batch:
            self.flush()

    def flush(self) -> None:
        """Append the queued features to the file."""
        if not self.pending:
            return
        frame = pd.concat(self.pending, ignore_index=True)
        self.pending, self.pending_rows = [], 0
        if self.geographic:
            frame = frame.to_crs(4326)
        if self.driver == "GeoJSON":
            self._append_geojson(frame)
        else:
            self._write_gpkg(frame, append=self.appends > 0)
        self.appends += 1
        self.stats.polygons += len(frame)
        self.stats.writes += 1

    def close(self) -> None:
        """Append what is queued and complete the file."""
        self.flush()
        if self.appends == 0:
            frame = self.empty.to_crs(4326) if self.geographic else self.empty
            if self.driver == "GeoJSON":
                pyogrio.write_dataframe(frame, self.path, **self._geojson_options())
            else:
                self._write_gpkg(frame, append=False)
        if self.json is not None:
            self.json.write("\n]\n}\n")
            self.json.close()
            self.json = None

    def _write_gpkg(self, frame: gpd.GeoDataFrame, append: bool) -> None:
        pyogrio.write_dataframe(
            frame,
            self.path,
            layer=self.layer,
            driver="GPKG",
            geometry_type="Polygon",
            dataset_options={} if append else {"VERSION": self.gpkg_version},
            append=append,
        )

    def _geojson_options(self) -> dict:
        return {
            "layer": self.layer,
            "driver": "GeoJSON",
            "geometry_type": "Polygon",
            "layer_options": {"RFC7946": "YES"},
        }

    def _append_geojson(self, frame: gpd.GeoDataFrame) -> None:
        buffer = io.BytesIO()
        pyogrio.write_dataframe(frame, buffer, **self._geojson_options())
        doc = json.loads(buffer.getvalue())
        if self.json is None:
            self.json = self.path.open("w", encoding="utf-8")
            head = json.dumps({k: v for k, v in doc.items() if k != "features"}, ensure_ascii=False)
            self.json.write(head[:-1] + ',\n"features": [\n')
        else:
            self.json.write(",\n")
        self.json.write(",\n".join(json.dumps(f, ensure_ascii=False) for f in doc["features"]))


def write_styles(output: Path, tmp: Path, sidecars: dict[str, Path], classes: ClassTable) -> None:
    """Write the QGIS/SLD styles of a written polygon layer.

    Args:
        output: The layer's final path (names the layer and the SLD).
        tmp: The file being written for it (a GeoPackage gets its style inside).
        sidecars: Files being written for the style sidecars, by kind
            (:func:`~geoct.export.sidecars.vector_style_paths`).
        classes: Class names and colours.
    """
    texts = {"qml": vector_qml(classes), "sld": vector_sld(classes, name=output.stem)}
    if output_format(output)[0] == "GPKG":
        add_layer_style(tmp, output.stem, texts["qml"], texts["sld"])
    for kind, path in sidecars.items():
        path.write_text(texts[kind], encoding="utf-8")
