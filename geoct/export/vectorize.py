"""Seamless class polygons from a class raster, streamed block row by block row.

The blocks of the class raster are polygonised and joined across block (and, for
a mosaic VRT, tile) edges one row of blocks at a time
(:mod:`geoct.export.polygonize`). Every polygon a block row closes is moved to
map coordinates, simplified, measured, filtered by area and appended to the
output layer straight away (:mod:`geoct.export.vector_layers`). Memory is
therefore bounded by one block row and the polygons still open across its lower
edge, not by the raster: a mosaic of any size can be vectorised
(:class:`~geoct.export.polygonize.VectorizeStats` reports what was held).

Simplification (``simplify > 0``) works one block row at a time as well: the
*row parts* of all polygons in the row (each polygon's pieces in that row,
unioned) are simplified together as a coverage (:class:`CoverageSimplifier`),
nodata regions included as polygons of their own so that edges against nodata
are simplified too, keeping the coverage's outer boundary: the raster border and
the block row's top and bottom lines. Each edge within the row is simplified
once, identically for the two polygons sharing it, and a polygon's parts in
successive rows still meet exactly along the block-row lines, so the polygons
form a valid coverage: no gaps, no overlaps. Compared with simplifying the whole
raster at once, an edge keeps a vertex where it crosses a block-row line (a few
percent more vertices with 128-pixel blocks, fewer with the default 1024).

Areas, perimeters, ``min_area`` and the simplification tolerance are ground values
in metres whatever the CRS (see :mod:`geoct.geodesy`): Web Mercator or lon/lat map
units are never reported as metres.
"""

import warnings
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from pyproj import CRS
from rasterio.io import DatasetReader

from ..classes import ClassTable
from ..errors import InputError
from ..geodesy import ground_pixel_size, pixel_size
from ..raster_io import atomic_output, check_output, open_raster
from .class_raster import check_same_grid, fallback_names, ignore_value, read_class_table
from .polygonize import Pieces, RowMerger, VectorizeStats, polygonize_rows
from .sidecars import vector_style_paths
from .vector_layers import (
    DEFAULT_GPKG_VERSION,
    FORMATS,
    LayerWriter,
    build_frame,
    check_gpkg_version,
    empty_frame,
    output_format,
    write_styles,
)


def confidence_unit(src: DatasetReader) -> tuple[float, float]:
    """Return how stored confidence values convert: ``value * multiplier / divisor``.

    The multiplier is the band's scale; without one, uint8 values are divided by
    255 (as ``geoct predict`` writes them). Confidence is summed over a polygon's
    pixels in stored units and converted only in the mean: integer sums are exact,
    so the mean does not depend on how the raster is cut into blocks or in which
    order pieces are joined, and for uint8 it is the exact mean, rounded once.

    Returns:
        The multiplier and the divisor.
    """
    scale = src.scales[0]
    if scale != 1.0:
        return scale, 1.0
    return 1.0, 255.0 if np.dtype(src.dtypes[0]) == np.uint8 else 1.0


def _affine(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = tuple(transform)[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        # element-wise, not a matrix product: a vertex maps to the same floats in
        # every call, so polygons moved in different batches still share their edges
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack([x * a + y * b + c, x * d + y * e + f])

    return shapely.transform(geoms, apply)


def to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Move geometries from pixel (col, row) coordinates to map coordinates."""
    return _affine(geoms, transform)


def to_pixels(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Move geometries whose vertices are pixel corners back from map coordinates."""
    return shapely.transform(_affine(geoms, ~transform), np.rint)


def simplify_polygons(geoms: np.ndarray, tolerance: float, transform: Affine) -> np.ndarray:
    """Move pixel-space polygons to map coordinates, each simplified on its own.

    A tolerance of zero only drops redundant (collinear) vertices. A positive one
    is used only with shapely 2.0, which lacks ``shapely.coverage_simplify``
    (see :class:`CoverageSimplifier`): each polygon is simplified with its
    topology preserved, but neighbours may no longer share their edges exactly.

    Args:
        geoms: Polygons in pixel coordinates.
        tolerance: Simplification tolerance in map units.
        transform: Pixel-to-map transform.

    Returns:
        The polygons in map coordinates.
    """
    if tolerance <= 0 or geoms.size == 0:
        return to_map(shapely.simplify(geoms, 0.0), transform)
    return shapely.simplify(to_map(geoms, transform), tolerance, preserve_topology=True)


@dataclass(frozen=True)
class CoverageSimplifier:
    """Simplify the row parts of one block row together, as a coverage, in pixel space.

    Used by :class:`~geoct.export.polygonize.RowMerger` on the row parts of each
    block row (each polygon's pieces in that row, unioned; open and finished
    polygons alike): ``shapely.coverage_simplify`` (shapely >= 2.1, topology-preserving
    Visvalingam-Whyatt) simplifies each edge two parts share identically for
    both, and keeps the outer boundary of the coverage as it is - the raster's
    border and the block row's top and bottom lines, along which the parts meet
    those of the rows above and below. Polygons therefore neither overlap nor
    leave gaps, and the parts of a polygon, unioned when it is finished, still
    fit exactly.

    Visvalingam-Whyatt only drops vertices, so the simplified parts still have
    their vertices on pixel corners and are moved back to exact pixel
    coordinates. The parts must share the vertices of their common edges
    (:func:`~geoct.export.polygonize.add_nodes`).

    Attributes:
        tolerance: Simplification tolerance in map units.
        transform: Pixel-to-map transform.
    """

    tolerance: float
    transform: Affine

    def __call__(self, geoms: np.ndarray) -> np.ndarray:
        """Return *geoms* (pixel coordinates) simplified together, in pixel coordinates."""
        if geoms.size == 0:
            return geoms
        simplified = shapely.coverage_simplify(
            to_map(geoms, self.transform), self.tolerance, simplify_boundary=False
        )
        return to_pixels(simplified, self.transform)


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


@dataclass(frozen=True)
class PolygonFinisher:
    """Turn finished pixel-space polygons into layer features.

    The polygons are moved to map coordinates - simplified on the way
    (:func:`simplify_polygons`) unless they come simplified as a coverage
    (:class:`CoverageSimplifier`) - then measured and filtered by area
    (:func:`~geoct.export.vector_layers.build_frame`).

    Attributes:
        classes: Class names by id.
        crs: Map CRS.
        transform: Pixel-to-map transform.
        tolerance: Simplification tolerance in map units, for polygons that do not
            come simplified.
        min_area: Smallest ground area kept, in m².
        with_confidence: Whether to add ``mean_confidence``.
        unit: Multiplier and divisor of stored confidence (:func:`confidence_unit`).
        simplified: Whether the polygons come simplified.
        nodata: Class id of the nodata regions among the polygons (simplified
            with the others but not written); None if there are none.
    """

    classes: ClassTable
    crs: CRS | None
    transform: Affine
    tolerance: float = 0.0
    min_area: float = 0.0
    with_confidence: bool = False
    unit: tuple[float, float] = (1.0, 1.0)
    simplified: bool = False
    nodata: int | None = None

    def __call__(self, pieces: Pieces) -> gpd.GeoDataFrame:
        """Return the features of polygons finished together, in pixel coordinates."""
        if self.simplified:
            geoms = to_map(pieces.geoms, self.transform)
        else:
            geoms = simplify_polygons(pieces.geoms, self.tolerance, self.transform)
        if self.nodata is not None:
            keep = pieces.class_ids != self.nodata
            pieces, geoms = pieces.take(keep), geoms[keep]
        return build_frame(
            pieces,
            self.classes,
            geoms,
            self.crs,
            self.min_area,
            self.with_confidence,
            self.unit,
        )

    def largest_class(self, pieces: Pieces) -> int:
        """Return the largest class id among *pieces* (nodata aside), -1 if none."""
        ids = pieces.class_ids
        if self.nodata is not None:
            ids = ids[ids != self.nodata]
        return int(ids.max()) if ids.size else -1


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


def _known_classes(path: Path, classes: ClassTable | Sequence[str] | None) -> ClassTable:
    """Return the class table as far as it is known before the raster is read.

    Ids it lacks are named ``class_ID``, as the final table (:func:`_resolve_classes`,
    once the largest id is known) names them; its warnings are given there, once.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return read_class_table(path, classes, num_classes=1)


def _open_inputs(
    stack: ExitStack, classes_path: Path, confidence_path: str | Path | None, output: Path
) -> tuple[DatasetReader, DatasetReader | None]:
    src = stack.enter_context(open_raster(classes_path))
    if src.count != 1 or not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
        raise InputError(classes_path, "expected a single-band integer class raster")
    confidence = None
    if confidence_path is not None:
        confidence = stack.enter_context(open_raster(confidence_path))
        check_same_grid(src, confidence)
    if src.crs is None and FORMATS[output.suffix.lower()][1]:
        raise InputError(classes_path, "has no CRS, cannot reproject to EPSG:4326")
    return src, confidence


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
    stats: VectorizeStats | None = None,
) -> Path:
    """Polygonise a class raster into a styled GeoPackage or GeoJSON layer.

    The raster (a GeoTIFF, or e.g. a VRT mosaic of tiles on one grid) is read
    block row by block row; polygons are joined across block (and tile) edges and
    written as soon as they are complete, so memory is bounded by one block row
    and the polygons open across its lower edge (see
    :class:`~geoct.export.polygonize.RowMerger`).

    Args:
        classes_path: Single-band class raster (nodata is never polygonised).
        output_path: ``.gpkg`` (layer named after the file stem, QGIS style
            inside) or ``.geojson`` (RFC 7946, EPSG:4326) file; ``NAME.EXT.sld``
            (and for GeoJSON ``NAME.qml``, which QGIS loads with it) is written
            beside it (:func:`~geoct.export.sidecars.vector_style_paths`).
        confidence_path: Confidence raster on the same grid, for ``mean_confidence``.
        simplify: Simplification tolerance in metres on the ground (converted to
            map units at the scene centre, see :func:`map_tolerance`; in map units
            for a raster without CRS); 0 keeps pixel edges. Each block row is
            simplified as a coverage, nodata regions included (then dropped), so
            neighbours keep sharing their edges (:class:`CoverageSimplifier`).
        min_area: Polygons smaller than this ground area in m² are dropped.
        classes: Class table or names overriding those stored in the raster.
        overwrite: Whether existing outputs may be replaced.
        block_size: Side in pixels of the blocks read and polygonised at a time.
        progress: Show a progress bar.
        gpkg_version: GeoPackage version of a ``.gpkg`` output (one of
            :data:`~geoct.export.vector_layers.GPKG_VERSIONS`).
        stats: Filled with what was held in memory and written, if given.

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
    stats = stats if stats is not None else VectorizeStats()
    with ExitStack() as stack:
        src, confidence = _open_inputs(stack, classes_path, confidence_path, output)
        if src.crs is None:
            warnings.warn(f"{classes_path}: no CRS; polygons are in its map units", stacklevel=2)
        crs = CRS.from_user_input(src.crs) if src.crs else None
        tolerance = map_tolerance(simplify, crs, src.transform, src.width, src.height)
        simplifier = None
        if tolerance > 0 and hasattr(shapely, "coverage_simplify"):
            simplifier = CoverageSimplifier(tolerance, src.transform)
        finish = PolygonFinisher(
            _known_classes(classes_path, classes),
            crs,
            src.transform,
            tolerance,
            min_area,
            with_confidence=confidence is not None,
            unit=confidence_unit(confidence) if confidence is not None else (1.0, 1.0),
            simplified=simplifier is not None,
            # nodata regions join the coverage so that edges against them are simplified
            nodata=ignore_value(src) if simplifier is not None else None,
        )
        tmp = stack.enter_context(atomic_output(output, overwrite))
        sidecars = {
            kind: stack.enter_context(atomic_output(path, overwrite))
            for kind, path in vector_style_paths(output).items()
        }
        empty = empty_frame(crs, finish.with_confidence)
        writer = stack.enter_context(LayerWriter(tmp, output.stem, empty, gpkg_version, stats))
        merger = RowMerger(stats, simplifier)
        largest = -1
        coverage = simplifier is not None
        for finished in polygonize_rows(src, confidence, block_size, merger, coverage, progress):
            largest = max(largest, finish.largest_class(finished))
            writer.write(finish(finished))
        writer.close()
        table = _resolve_classes(classes_path, classes, largest)
        if largest < 0:
            warnings.warn(f"{classes_path}: no valid pixels; writing an empty layer", stacklevel=2)
        write_styles(output, tmp, sidecars, table)
    return output
