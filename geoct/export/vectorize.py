"""Seamless class polygons from a class raster, polygonised block by block.

Each block of the class raster is polygonised on its own with
:func:`rasterio.features.shapes` in pixel coordinates, so memory is bounded by the
block size and the polygons. Polygons that touch an internal block edge are then
joined with their same-class neighbours across it (those sharing an edge, as in
4-connectivity) by unioning each connected group, so a field crossing block
borders comes out as one polygon. Working on integer pixel corners keeps shared
edges exact. Polygons are then moved to map coordinates, simplified as a coverage
(shared edges stay shared), filtered by area and written with their attributes
and QGIS/SLD styles.

Areas, perimeters, ``min_area`` and the simplification tolerance are ground values
in metres whatever the CRS (see :mod:`geoct.geodesy`): Web Mercator or lon/lat map
units are never reported as metres.
"""

import sqlite3
import warnings
from collections.abc import Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio import features
from rasterio.io import DatasetReader
from rasterio.windows import Window
from tqdm import tqdm

from ..classes import ClassTable
from ..errors import ConfigError, InputError
from ..geodesy import ground_area_perimeter, ground_pixel_size, pixel_size
from ..raster_io import atomic_output, check_output, open_raster
from .class_raster import (
    block_windows,
    check_same_grid,
    fallback_names,
    ignore_value,
    read_class_table,
)
from .sidecars import vector_style_paths
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


@dataclass
class Pieces:
    """Polygons in pixel coordinates with the statistics of their pixels.

    Attributes:
        geoms: Polygons, vertices on integer pixel corners.
        class_ids: Class id of each polygon.
        conf_sum: Sum of confidence over the polygon's pixels with a confidence.
        conf_count: Number of those pixels.
        on_seam: Whether the polygon touches an internal block edge.
    """

    geoms: list[shapely.Geometry] = field(default_factory=list)
    class_ids: list[int] = field(default_factory=list)
    conf_sum: list[float] = field(default_factory=list)
    conf_count: list[int] = field(default_factory=list)
    on_seam: list[bool] = field(default_factory=list)


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


def _confidence_values(src: DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    data = src.read(1, window=window, masked=True)
    scale = src.scales[0]
    values = data.data.astype(np.float64)
    if scale != 1.0:
        values *= scale
    elif data.dtype == np.uint8:
        values /= 255.0
    return values, ~np.ma.getmaskarray(data)


def _seam_flags(bounds: np.ndarray, window: Window, height: int, width: int) -> np.ndarray:
    col0, row0 = window.col_off, window.row_off
    col1, row1 = col0 + window.width, row0 + window.height
    left = (bounds[:, 0] == col0) & (col0 > 0)
    top = (bounds[:, 1] == row0) & (row0 > 0)
    right = (bounds[:, 2] == col1) & (col1 < width)
    bottom = (bounds[:, 3] == row1) & (row1 < height)
    return left | top | right | bottom


def polygons_from_geojson(polygons: list[dict]) -> np.ndarray:
    """Build shapely polygons from GeoJSON-like polygon mappings, vectorised.

    Args:
        polygons: ``{"type": "Polygon", "coordinates": [shell, *holes]}`` mappings.

    Returns:
        An object array of polygons.
    """
    rings = [ring for p in polygons for ring in p["coordinates"]]
    owner = np.repeat(np.arange(len(polygons)), [len(p["coordinates"]) for p in polygons])
    lengths = np.fromiter((len(ring) for ring in rings), np.int64, len(rings))
    coords = np.array([xy for ring in rings for xy in ring], dtype=np.float64)
    linear = shapely.linearrings(coords, indices=np.repeat(np.arange(len(rings)), lengths))
    return shapely.polygons(linear, indices=owner)


def polygonize_block(
    src: DatasetReader, window: Window, confidence: DatasetReader | None, pieces: Pieces
) -> None:
    """Polygonise one block of a class raster and append the polygons to *pieces*.

    Args:
        src: Class raster.
        window: Block to polygonise.
        confidence: Confidence raster on the same grid, if any.
        pieces: Accumulated polygons.
    """
    data = src.read(1, window=window)
    valid = data != ignore_value(src)
    if not valid.any():
        return
    offset = Affine.translation(window.col_off, window.row_off)
    found = list(features.shapes(data, mask=valid, connectivity=4, transform=offset))
    geoms = polygons_from_geojson([g for g, _ in found])
    pieces.geoms.extend(geoms)
    pieces.class_ids.extend(int(v) for _, v in found)
    bounds = shapely.bounds(geoms)
    pieces.on_seam.extend(_seam_flags(bounds, window, src.height, src.width).tolist())
    if confidence is None:
        return
    values, has_value = _confidence_values(confidence, window)
    labels = features.rasterize(
        ((g, i + 1) for i, (g, _) in enumerate(found)),
        out_shape=data.shape,
        transform=offset,
        fill=0,
        dtype="int32",
    )
    labels[~has_value] = 0
    n = len(found) + 1
    pieces.conf_sum.extend(np.bincount(labels.ravel(), values.ravel(), n)[1:].tolist())
    pieces.conf_count.extend(np.bincount(labels.ravel(), minlength=n)[1:].tolist())


def _find(parent: np.ndarray, i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def seam_groups(geoms: np.ndarray, class_ids: np.ndarray) -> np.ndarray:
    """Label the groups of same-class polygons that share an edge.

    Args:
        geoms: Polygons touching block edges, in pixel coordinates.
        class_ids: Class id of each polygon.

    Returns:
        A group label per polygon (the index of one member).
    """
    parent = np.arange(len(geoms))
    left, right = shapely.STRtree(geoms).query(geoms, predicate="touches")
    keep = (left < right) & (class_ids[left] == class_ids[right])
    left, right = left[keep], right[keep]
    shared = shapely.length(shapely.intersection(geoms[left], geoms[right])) > 0
    for a, b in zip(left[shared], right[shared], strict=True):
        parent[_find(parent, a)] = _find(parent, b)
    return np.array([_find(parent, i) for i in range(len(geoms))], dtype=np.int64)


def merge_seams(pieces: Pieces) -> Pieces:
    """Union the polygons cut by block edges into whole polygons.

    Args:
        pieces: Polygons of all blocks.

    Returns:
        Polygons without seams; statistics of merged pieces are summed.
    """
    geoms = np.asarray(pieces.geoms, dtype=object)
    class_ids = np.asarray(pieces.class_ids, dtype=np.int64)
    conf_sum = np.asarray(pieces.conf_sum or np.zeros(len(geoms)), dtype=np.float64)
    conf_count = np.asarray(pieces.conf_count or np.zeros(len(geoms)), dtype=np.int64)
    seam = np.flatnonzero(pieces.on_seam)
    merged = Pieces()
    inner = np.setdiff1d(np.arange(len(geoms)), seam)
    merged.geoms = list(geoms[inner])
    merged.class_ids = class_ids[inner].tolist()
    merged.conf_sum = conf_sum[inner].tolist()
    merged.conf_count = conf_count[inner].tolist()
    if seam.size:
        groups = seam_groups(geoms[seam], class_ids[seam])
        for group in np.unique(groups):
            members = seam[groups == group]
            union = shapely.union_all(geoms[members]) if members.size > 1 else geoms[members[0]]
            for part in shapely.get_parts(union):
                merged.geoms.append(part)
                merged.class_ids.append(int(class_ids[members[0]]))
                merged.conf_sum.append(float(conf_sum[members].sum()))
                merged.conf_count.append(int(conf_count[members].sum()))
    return merged


def to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Move geometries from pixel (col, row) coordinates to map coordinates."""
    a, b, c, d, e, f = tuple(transform)[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geoms, lambda xy: xy @ matrix + (c, f))


def simplify_coverage(geoms: np.ndarray, tolerance: float, transform: Affine) -> np.ndarray:
    """Move pixel-space polygons to map coordinates, simplified with topology preserved.

    With a positive tolerance the polygons are simplified together as a coverage
    (``shapely.coverage_simplify``, shapely >= 2.1), so neighbours keep sharing their
    edges; with shapely 2.0 each polygon is simplified on its own, topology preserved.
    A tolerance of zero only drops redundant (collinear) vertices.

    Args:
        geoms: Polygons in pixel coordinates.
        tolerance: Simplification tolerance in map units.
        transform: Pixel-to-map transform.

    Returns:
        The polygons in map coordinates.
    """
    if tolerance <= 0 or geoms.size == 0:
        return to_map(shapely.simplify(geoms, 0.0), transform)
    if not hasattr(shapely, "coverage_simplify"):
        return shapely.simplify(to_map(geoms, transform), tolerance, preserve_topology=True)
    noded = to_map(shapely.segmentize(geoms, 1.0), transform)
    return shapely.coverage_simplify(noded, tolerance)


def map_tolerance(
    metres: float, crs: CRS | str | None, transform: Affine, width: int, height: int
) -> float:
    """Convert a ground distance to map units of a raster's CRS, at the scene centre.

    The ratio of map to ground length of one pixel step is taken along columns and
    along rows, and the smaller is used, so that the distance is at most *metres* on
    the ground in any direction at the centre (in lon/lat, a degree of latitude is
    longer on the ground than one of longitude).

    Args:
        metres: Ground distance.
        crs: The raster's CRS; without one, *metres* is returned as map units.
        transform: Pixel-to-map transform.
        width: Raster columns.
        height: Raster rows.

    Returns:
        The distance in map units.
    """
    if crs is None or metres <= 0:
        return metres
    ground = ground_pixel_size(crs, transform, width, height)
    ratios = [m / g for m, g in zip(pixel_size(transform), ground, strict=True) if g > 0]
    return metres * min(ratios, default=1.0)


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
) -> gpd.GeoDataFrame:
    """Assemble the attribute table of the polygons.

    Args:
        merged: Seamless polygons with their statistics.
        classes: Class names by id.
        geoms: The simplified polygons in map coordinates.
        crs: Map CRS; areas and perimeters are in map units without one.
        min_area: Smallest ground area kept, in m².
        with_confidence: Whether to add ``mean_confidence``.

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
            columns["mean_confidence"] = np.where(count > 0, total / count, np.nan)
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


def write_layer(
    frame: gpd.GeoDataFrame,
    output: Path,
    classes: ClassTable,
    overwrite: bool,
    gpkg_version: str = DEFAULT_GPKG_VERSION,
) -> None:
    """Write the polygon layer and its styles.

    Args:
        frame: Polygon layer in the raster's CRS.
        output: ``.gpkg`` or ``.geojson`` file.
        classes: Class names and colours for the styles.
        overwrite: Whether existing files may be replaced.
        gpkg_version: GeoPackage version of a ``.gpkg`` output.
    """
    driver, geographic = output_format(output)
    qml, sld = vector_qml(classes), vector_sld(classes, name=output.stem)
    options = {}
    dataset_options = {"VERSION": gpkg_version} if driver == "GPKG" else {}
    if geographic:
        frame = frame.to_crs(4326)
        options["RFC7946"] = "YES"
    texts = {"sld": sld, "qml": qml}
    with ExitStack() as stack:
        tmp = stack.enter_context(atomic_output(output, overwrite))
        sidecars = {
            kind: stack.enter_context(atomic_output(path, overwrite))
            for kind, path in vector_style_paths(output).items()
        }
        pyogrio.write_dataframe(
            frame,
            tmp,
            layer=output.stem,
            driver=driver,
            geometry_type="Polygon",
            layer_options=options,
            dataset_options=dataset_options,
        )
        if driver == "GPKG":
            add_layer_style(tmp, output.stem, qml, sld)
        for kind, path in sidecars.items():
            path.write_text(texts[kind], encoding="utf-8")


def _resolve_classes(
    path: Path, classes: ClassTable | Sequence[str] | None, largest: int
) -> ClassTable:
    table = read_class_table(path, classes, num_classes=max(largest + 1, 1))
    if largest >= table.num_classes:
        warnings.warn(
            f"{path}: class ids up to {largest} but only {table.num_classes} class names; "
            f"extra ids are named {fallback_names(largest + 1)[-1]!r} etc.",
            stacklevel=3,
        )
    return table


def vectorize_raster(
    classes_path: str | Path,
    output_path: str | Path,
    confidence_path: str | Path | None = None,
    simplify: float = 0.0,
    min_area: float = 0.0,
    classes: ClassTable | Sequence[str] | None = None,
    overwrite: bool = False,
    block_size: int = 1024,
    progress: bool = True,
    gpkg_version: str = DEFAULT_GPKG_VERSION,
) -> Path:
    """Polygonise a class raster into a styled GeoPackage or GeoJSON layer.

    Args:
        classes_path: Single-band class raster (nodata is never polygonised).
        output_path: ``.gpkg`` (layer named after the file stem, QGIS style
            inside) or ``.geojson`` (RFC 7946, EPSG:4326) file; ``NAME.EXT.sld``
            (and for GeoJSON ``NAME.qml``, which QGIS loads with it) is written
            beside it (:func:`~geoct.export.sidecars.vector_style_paths`).
        confidence_path: Confidence raster on the same grid, for ``mean_confidence``.
        simplify: Simplification tolerance in metres on the ground (converted to
            map units at the scene centre, see :func:`map_tolerance`; in map units
            for a raster without CRS); 0 keeps pixel edges.
        min_area: Polygons smaller than this ground area in m² are dropped.
        classes: Class table or names overriding those stored in the raster.
        overwrite: Whether existing outputs may be replaced.
        block_size: Side in pixels of the blocks read and polygonised at a time.
        progress: Show a progress bar.
        gpkg_version: GeoPackage version of a ``.gpkg`` output (one of
            :data:`GPKG_VERSIONS`).

    Returns:
        The written layer.

    Raises:
        ConfigError: If *gpkg_version* is not supported.
        InputError: For unreadable inputs, unsupported formats or unwritable outputs.
        AlignmentError: If the confidence raster is not on the class grid.
        OutputExistsError: If an output exists and *overwrite* is false.
    """
    classes_path, output = Path(classes_path), Path(output_path)
    output_format(output)
    check_gpkg_version(gpkg_version)
    for path in (output, *vector_style_paths(output).values()):
        check_output(path, overwrite)
    with ExitStack() as stack:
        src = stack.enter_context(open_raster(classes_path))
        if src.count != 1 or not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
            raise InputError(classes_path, "expected a single-band integer class raster")
        confidence = None
        if confidence_path is not None:
            confidence = stack.enter_context(open_raster(confidence_path))
            check_same_grid(src, confidence)
        if src.crs is None:
            if FORMATS[output.suffix.lower()][1]:
                raise InputError(classes_path, "has no CRS, cannot reproject to EPSG:4326")
            warnings.warn(f"{classes_path}: no CRS; polygons are in its map units", stacklevel=2)
        pieces = Pieces()
        windows = list(block_windows(src.height, src.width, block_size))
        for window in tqdm(
            windows, desc="polygonising", unit="block", leave=False, disable=not progress
        ):
            polygonize_block(src, window, confidence, pieces)
        crs = CRS.from_user_input(src.crs) if src.crs else None
        transform, width, height = src.transform, src.width, src.height
    largest = max(pieces.class_ids, default=-1)
    table = _resolve_classes(classes_path, classes, largest)
    if not pieces.geoms:
        warnings.warn(f"{classes_path}: no valid pixels; writing an empty layer", stacklevel=2)
        frame = empty_frame(crs, confidence is not None)
    else:
        merged = merge_seams(pieces)
        tolerance = map_tolerance(simplify, crs, transform, width, height)
        geoms = simplify_coverage(np.asarray(merged.geoms, dtype=object), tolerance, transform)
        frame = build_frame(merged, table, geoms, crs, min_area, confidence is not None)
    write_layer(frame, output, table, overwrite, gpkg_version)
    return output
