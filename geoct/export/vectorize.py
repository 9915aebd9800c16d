"""Seamless class polygons from a class raster, streamed block row by block row.

Each block of the class raster is polygonised on its own with
:func:`rasterio.features.shapes` in pixel coordinates. Polygons that touch an
internal block edge are joined with their same-class neighbours across it (those
sharing an edge, as in 4-connectivity) by unioning each connected group, so a
field crossing block borders - or, for a mosaic VRT, tile borders - comes out as
one polygon. Working on integer pixel corners keeps shared edges exact.

The raster is processed one row of blocks at a time (:class:`RowMerger`): a
polygon that reaches the bottom edge of the current block row may still grow into
the next one and is kept *open*; every other polygon is *closed*, so it is moved
to map coordinates, simplified, measured, filtered by area and appended to the
output layer straight away (:class:`LayerWriter`). Memory is therefore bounded by
one block row and the polygons still open across its lower edge, not by the
raster: a mosaic of any size can be vectorised (:class:`VectorizeStats` reports
what was held).

Which pixels of two blocks face each other across an edge is read off the
blocks' border lines (the pieces rasterised into one-pixel strips), so joining
needs no geometric predicates and gives exactly the union a single pass over the
whole raster would: a group of pieces is joined iff it is one 4-connected region
of one class.

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

import io
import itertools
import json
import sqlite3
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Self

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely
from affine import Affine
from pyproj import CRS
from rasterio import features
from rasterio.io import DatasetReader
from rasterio.windows import Window
from scipy import sparse
from scipy.sparse.csgraph import connected_components
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


def _empty(dtype: type | str) -> np.ndarray:
    return np.empty(0, dtype=dtype)


@dataclass
class Pieces:
    """Polygons in pixel coordinates with the statistics of their pixels.

    Attributes:
        geoms: Polygons, vertices on integer pixel corners.
        class_ids: Class id of each polygon.
        conf_sum: Sum of confidence over the polygon's pixels with a confidence
            (zeros without a confidence raster).
        conf_count: Number of those pixels.
    """

    geoms: np.ndarray = field(default_factory=lambda: _empty(object))
    class_ids: np.ndarray = field(default_factory=lambda: _empty(np.int64))
    conf_sum: np.ndarray = field(default_factory=lambda: _empty(np.float64))
    conf_count: np.ndarray = field(default_factory=lambda: _empty(np.int64))

    def __len__(self) -> int:
        return len(self.geoms)

    @classmethod
    def concat(cls, parts: Sequence["Pieces"]) -> "Pieces":
        """Return the pieces of *parts*, one after the other."""
        if not parts:
            return cls()
        return cls(
            np.concatenate([p.geoms for p in parts]),
            np.concatenate([p.class_ids for p in parts]),
            np.concatenate([p.conf_sum for p in parts]),
            np.concatenate([p.conf_count for p in parts]),
        )

    def take(self, index: np.ndarray) -> "Pieces":
        """Return the pieces at *index* (integer positions or a boolean mask)."""
        return Pieces(
            self.geoms[index], self.class_ids[index], self.conf_sum[index], self.conf_count[index]
        )


@dataclass
class BlockRow:
    """The polygons of one row of blocks and where they meet neighbouring blocks.

    Seams are described by pixels rather than geometry: two pieces of the same
    class share an edge iff a pixel of one is a 4-neighbour of a pixel of the
    other across a block edge.

    Attributes:
        pieces: Polygons of the row's blocks, block after block.
        top: Per column, the piece holding the row's first pixel line (-1: none);
            None for the first block row.
        bottom: Per column, the piece holding the row's last pixel line (-1:
            none); None for the last block row.
        seams: Pairs ``(left, right)`` of pieces holding two pixels that face each
            other across a vertical block edge of the row (2 x n array).
        open_below: Whether each piece reaches the bottom edge of the row (always
            false in the last block row).
    """

    pieces: Pieces
    top: np.ndarray | None
    bottom: np.ndarray | None
    seams: np.ndarray
    open_below: np.ndarray


@dataclass
class VectorizeStats:
    """What a vectorisation held in memory and wrote, for diagnostics and tests.

    Attributes:
        block_rows: Block rows processed.
        pieces: Polygons found in the blocks before joining (with ``simplify > 0``
            nodata regions count as polygons too, see :func:`vectorize_raster`).
        peak_open: Most polygons held open across a block-row edge at once.
        peak_held: Most polygons held at once: those open from above plus the
            pieces of the block row being joined to them.
        peak_parts: Most row parts held by the open polygons at once (an open
            polygon is held as one part per block row it spans, see
            :class:`RowMerger`).
        polygons: Polygons written.
        writes: Appends to the output layer.
    """

    block_rows: int = 0
    pieces: int = 0
    peak_open: int = 0
    peak_held: int = 0
    peak_parts: int = 0
    polygons: int = 0
    writes: int = 0


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


def _confidence_values(src: DatasetReader, window: Window) -> tuple[np.ndarray, np.ndarray]:
    data = src.read(1, window=window, masked=True)
    return data.data.astype(np.float64), ~np.ma.getmaskarray(data)


def read_with_border(src: DatasetReader, window: Window, outside: int = -1) -> np.ndarray:
    """Read a block with a one-pixel border of its neighbours, *outside* beyond the raster.

    Returns:
        int64 classes of the ``(height + 2, width + 2)`` pixels around the block.
    """
    row0, col0 = max(window.row_off - 1, 0), max(window.col_off - 1, 0)
    row1 = min(window.row_off + window.height + 1, src.height)
    col1 = min(window.col_off + window.width + 1, src.width)
    data = src.read(1, window=Window(col0, row0, col1 - col0, row1 - row0)).astype(np.int64)
    pad = (
        (row0 - window.row_off + 1, window.row_off + window.height + 1 - row1),
        (col0 - window.col_off + 1, window.col_off + window.width + 1 - col1),
    )
    return np.pad(data, pad, constant_values=outside)


def node_corners(bordered: np.ndarray) -> np.ndarray:
    """Return which pixel corners of a block are nodes: where three or four class edges meet.

    A pixel edge separates two polygons iff its pixels differ in class (same-class
    4-neighbours always end up in one polygon), so the number of polygon edges
    meeting at a corner follows from the four pixels around it, across block
    edges too when the block is read with its border.

    Args:
        bordered: Classes of a block with a one-pixel border (:func:`read_with_border`).

    Returns:
        ``(height + 1, width + 1)`` booleans, for the block's corners from its top-left.
    """
    a, b = bordered[:-1, :-1], bordered[:-1, 1:]
    c, d = bordered[1:, :-1], bordered[1:, 1:]
    degree = (a != b).astype(np.int8) + (c != d) + (a != c) + (b != d)
    return degree >= 3


def add_nodes(geoms: np.ndarray, nodes: np.ndarray, window: Window) -> np.ndarray:
    """Give each polygon a vertex at every node on its boundary, and no collinear one.

    GDAL leaves out a vertex where a straight polygon side meets two neighbours
    (a T-junction); with it, polygons sharing an edge share exactly its vertices,
    which makes the polygons a valid coverage for ``shapely.coverage_simplify``
    without noding them at every pixel. Since the nodes follow from the pixels
    (:func:`node_corners`), pieces of other blocks and block rows get the same
    vertices on the edges they share.

    Args:
        geoms: Polygons of one block, in pixel coordinates of the raster.
        nodes: The block's node corners.
        window: The block.

    Returns:
        The same polygons with only corners and nodes as vertices.
    """
    rings, owner = shapely.get_rings(geoms, return_index=True)
    coords, ring = shapely.get_coordinates(shapely.segmentize(rings, 1.0), return_index=True)
    coords = np.rint(coords)  # segmentize interpolates: 16 may come out as 15.999999999999998
    closing = np.append(ring[1:] != ring[:-1], True)
    coords, ring = coords[~closing], ring[~closing]
    start = np.flatnonzero(np.diff(ring, prepend=-1))
    length = np.diff(np.append(start, len(ring)))
    first, last = start[ring], start[ring] + length[ring] - 1
    index = np.arange(len(ring))
    before = coords[np.where(index == first, last, index - 1)]
    after = coords[np.where(index == last, first, index + 1)]
    turn = coords - before, after - coords
    bend = turn[0][:, 0] * turn[1][:, 1] != turn[0][:, 1] * turn[1][:, 0]
    col = coords[:, 0].astype(np.int64) - window.col_off
    row = coords[:, 1].astype(np.int64) - window.row_off
    keep = bend | nodes[row, col]
    linear = shapely.linearrings(coords[keep], indices=ring[keep])
    return shapely.polygons(linear, indices=owner)


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
    src: DatasetReader,
    window: Window,
    confidence: DatasetReader | None,
    coverage: bool = False,
) -> Pieces:
    """Polygonise one block of a class raster.

    Args:
        src: Class raster.
        window: Block to polygonise.
        confidence: Confidence raster on the same grid, if any.
        coverage: Prepare the polygons for simplification as a coverage: nodata
            regions become polygons too (of class
            :func:`~geoct.export.class_raster.ignore_value`), so that edges against
            them are simplified like any other, and every polygon gets a vertex at
            each node on its boundary (:func:`add_nodes`).

    Returns:
        The block's polygons (4-connected regions of one class), in pixel
        coordinates of the raster; confidence sums are in stored units
        (:func:`confidence_unit`).
    """
    if coverage:
        bordered = read_with_border(src, window)
        data = bordered[1:-1, 1:-1].astype(src.dtypes[0])
    else:
        data = src.read(1, window=window)
    valid = None if coverage else data != ignore_value(src)
    if valid is not None and not valid.any():
        return Pieces()
    offset = Affine.translation(window.col_off, window.row_off)
    found = list(features.shapes(data, mask=valid, connectivity=4, transform=offset))
    geoms = polygons_from_geojson([g for g, _ in found])
    pieces = Pieces(
        geoms=add_nodes(geoms, node_corners(bordered), window) if coverage else geoms,
        class_ids=np.array([int(v) for _, v in found], dtype=np.int64),
        conf_sum=np.zeros(len(found)),
        conf_count=np.zeros(len(found), dtype=np.int64),
    )
    if confidence is None:
        return pieces
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
    pieces.conf_sum = np.bincount(labels.ravel(), values.ravel(), n)[1:]
    pieces.conf_count = np.bincount(labels.ravel(), minlength=n)[1:].astype(np.int64)
    return pieces


def strip_labels(geoms: np.ndarray, touching: np.ndarray, strip: Window) -> np.ndarray:
    """Return, per pixel of a one-pixel strip, the index of the polygon holding it.

    Args:
        geoms: Polygons in pixel coordinates of the raster.
        touching: Whether each polygon reaches the strip (those that do not are
            skipped).
        strip: A one-pixel-wide row or column of the raster.

    Returns:
        The polygon index of each pixel of the strip, -1 where none holds it.
    """
    index = np.flatnonzero(touching)
    if index.size == 0:
        return np.full(int(strip.width * strip.height), -1, dtype=np.int64)
    burned = features.rasterize(
        zip(geoms[index], (index + 1).tolist(), strict=True),
        out_shape=(int(strip.height), int(strip.width)),
        transform=Affine.translation(strip.col_off, strip.row_off),
        fill=0,
        dtype="int32",
    )
    return burned.ravel().astype(np.int64) - 1


def edge_labels(pieces: Pieces, window: Window, sides: Sequence[str]) -> dict[str, np.ndarray]:
    """Return the piece holding each pixel along edges of a block.

    Args:
        pieces: The block's polygons.
        window: The block.
        sides: Edges wanted, among ``"top"``, ``"bottom"``, ``"left"``, ``"right"``.

    Returns:
        Per side, the piece index of each pixel of the block's outermost pixel
        line on that side (left to right, top to bottom), -1 where none.
    """
    bounds = shapely.bounds(pieces.geoms).reshape(-1, 4)
    col0, row0 = window.col_off, window.row_off
    col1, row1 = col0 + window.width, row0 + window.height
    strips = {
        "top": (bounds[:, 1] == row0, Window(col0, row0, window.width, 1)),
        "bottom": (bounds[:, 3] == row1, Window(col0, row1 - 1, window.width, 1)),
        "left": (bounds[:, 0] == col0, Window(col0, row0, 1, window.height)),
        "right": (bounds[:, 2] == col1, Window(col1 - 1, row0, 1, window.height)),
    }
    return {side: strip_labels(pieces.geoms, *strips[side]) for side in sides}


def polygonize_row(
    src: DatasetReader,
    windows: Sequence[Window],
    confidence: DatasetReader | None,
    coverage: bool = False,
) -> BlockRow:
    """Polygonise one row of blocks and record where its pieces meet across block edges.

    Args:
        src: Class raster.
        windows: The blocks of one block row, left to right.
        confidence: Confidence raster on the same grid, if any.
        coverage: Prepare the pieces for simplification (see :func:`polygonize_block`).

    Returns:
        The row's pieces, with the pixels they hold along the row's edges.
    """
    row0 = windows[0].row_off
    row1 = row0 + windows[0].height
    has_above, has_below = row0 > 0, row1 < src.height
    blocks, edges, below = [], [], []
    count = 0
    for i, window in enumerate(windows):
        pieces = polygonize_block(src, window, confidence, coverage)
        sides = [
            side
            for side, wanted in [
                ("top", has_above),
                ("bottom", has_below),
                ("left", i > 0),
                ("right", i < len(windows) - 1),
            ]
            if wanted
        ]
        labels = edge_labels(pieces, window, sides)
        for line in labels.values():
            line[line >= 0] += count
        edges.append(labels)
        bottom = shapely.bounds(pieces.geoms).reshape(-1, 4)[:, 3] == row1
        below.append(bottom & has_below)
        blocks.append(pieces)
        count += len(pieces)
    pairs = [np.stack([a["right"], b["left"]]) for a, b in itertools.pairwise(edges)]
    seams = np.concatenate(pairs, axis=1) if pairs else np.empty((2, 0), dtype=np.int64)
    return BlockRow(
        pieces=Pieces.concat(blocks),
        top=np.concatenate([e["top"] for e in edges]) if has_above else None,
        bottom=np.concatenate([e["bottom"] for e in edges]) if has_below else None,
        seams=seams[:, (seams >= 0).all(axis=0)],
        open_below=np.concatenate(below),
    )


def _components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Label the connected components of a graph on *n* nodes given by its edges (2 x m)."""
    graph = sparse.coo_array(
        (np.ones(pairs.shape[1], dtype=np.int8), (pairs[0], pairs[1])), shape=(n, n)
    )
    return connected_components(graph, directed=False)[1]


def _union_by_label(geoms: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union the polygons sharing a label.

    Returns:
        The labels present, ascending, and the union of each.
    """
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[order], prepend=-1))
    sizes = np.diff(np.append(starts, len(order)))
    merged = geoms[order[starts]]
    for group in np.flatnonzero(sizes > 1):
        merged[group] = shapely.union_all(
            geoms[order[starts[group] : starts[group] + sizes[group]]]
        )
    return labels[order[starts]], merged


def _finish(geoms: np.ndarray) -> np.ndarray:
    """Union the row parts of polygons held as collections into whole polygons."""
    geoms = geoms.copy()
    collections = np.flatnonzero(
        shapely.get_type_id(geoms) == shapely.GeometryType.GEOMETRYCOLLECTION
    )
    for i in collections:
        geoms[i] = shapely.union_all(shapely.get_parts(geoms[i]))
    return geoms


class RowMerger:
    """Join the pieces of successive block rows into whole polygons, keeping few open.

    After each block row only the polygons reaching its bottom edge are kept
    (*open*), with the pixel line along that edge telling which open polygon holds
    each pixel. The next row's pieces are joined to them and to each other by the
    pixels facing each other across block edges (:func:`polygonize_row`), with the
    same result as joining all pieces of the raster at once: connected groups of
    same-class pieces sharing an edge.

    Within a block row the pieces of each group are unioned into one *row part*;
    an open polygon is held as the collection of its row parts, unioned only when
    it is finished, so the work per block row does not grow with the polygons that
    span many rows (a background class, a lake across a mosaic). With a
    *simplify* step, the row parts of each block row are simplified together
    before they are kept (:class:`CoverageSimplifier`).

    Attributes:
        open: The open polygons: geometries (a row part, or a collection of them)
            and statistics.
        labels: Per column, the open polygon holding the last pixel line of the
            previous block row (-1: none); None before the first row and after
            the last.
        stats: Counts of held and finished pieces.
    """

    def __init__(
        self,
        stats: VectorizeStats | None = None,
        simplify: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        """Start with nothing open.

        Args:
            stats: Statistics to update; a new object by default.
            simplify: Applied to the row parts of each block row, e.g. a
                :class:`CoverageSimplifier`.
        """
        self.open = Pieces()
        self.labels: np.ndarray | None = None
        self.stats = stats if stats is not None else VectorizeStats()
        self.simplify = simplify

    def _edges(self, row: BlockRow, pieces: Pieces) -> np.ndarray:
        n_open = len(self.open)
        pairs = [row.seams + n_open]
        if n_open and self.labels is not None and row.top is not None:
            held = (self.labels >= 0) & (row.top >= 0)
            pairs.append(np.stack([self.labels[held], row.top[held] + n_open]))
        edges = np.concatenate(pairs, axis=1)
        return edges[:, pieces.class_ids[edges[0]] == pieces.class_ids[edges[1]]]

    def _geometries(self, row: BlockRow, labels: np.ndarray, count: int) -> np.ndarray:
        """Return each group's geometry: its row part, with the parts of its open members."""
        n_open = len(self.open)
        geoms = np.full(count, None, dtype=object)
        if len(row.pieces):
            present, parts = _union_by_label(row.pieces.geoms, labels[n_open:])
            geoms[present] = self.simplify(parts) if self.simplify is not None else parts
        held: dict[int, list] = {}
        for member, group in enumerate(labels[:n_open].tolist()):
            held.setdefault(group, []).extend(shapely.get_parts(self.open.geoms[member]))
        for group, parts in held.items():
            if geoms[group] is not None:
                parts.append(geoms[group])
            geoms[group] = parts[0] if len(parts) == 1 else shapely.geometrycollections(parts)
        return geoms

    def add(self, row: BlockRow) -> Pieces:
        """Join a block row to the polygons open above it.

        Args:
            row: The next block row, below the previous one.

        Returns:
            The polygons finished by this row: they reach neither its bottom edge
            nor, in the last block row, anything at all below.
        """
        n_open = len(self.open)
        pieces = Pieces.concat([self.open, row.pieces])
        n = len(pieces)
        labels = _components(n, self._edges(row, pieces)) if n else _empty(np.int64)
        count = int(labels.max()) + 1 if n else 0
        first = np.full(count, n, dtype=np.int64)
        np.minimum.at(first, labels, np.arange(n))
        joined = Pieces(
            self._geometries(row, labels, count),
            pieces.class_ids[first],
            np.bincount(labels, pieces.conf_sum, count),
            np.bincount(labels, pieces.conf_count, count).astype(np.int64),
        )
        stays = np.bincount(labels[n_open:], row.open_below, count) > 0
        self.open = joined.take(stays)
        self.labels = None
        if row.bottom is not None:
            index = np.full(count, -1, dtype=np.int64)
            index[stays] = np.arange(int(stays.sum()))
            held = row.bottom >= 0
            self.labels = np.full(len(row.bottom), -1, dtype=np.int64)
            self.labels[held] = index[labels[n_open + row.bottom[held]]]
        self._count(row, n)
        finished = joined.take(~stays)
        finished.geoms = _finish(finished.geoms)
        return _explode(finished)

    def _count(self, row: BlockRow, held: int) -> None:
        stats = self.stats
        stats.block_rows += 1
        stats.pieces += len(row.pieces)
        stats.peak_held = max(stats.peak_held, held)
        stats.peak_open = max(stats.peak_open, len(self.open))
        parts = int(shapely.get_num_geometries(self.open.geoms).sum()) if len(self.open) else 0
        stats.peak_parts = max(stats.peak_parts, parts)


def _explode(pieces: Pieces) -> Pieces:
    """Split multi-part unions into polygons, each with the statistics of the whole."""
    parts, index = shapely.get_parts(pieces.geoms, return_index=True)
    if len(parts) == len(pieces):
        return Pieces(parts, pieces.class_ids, pieces.conf_sum, pieces.conf_count)
    return Pieces(parts, pieces.class_ids[index], pieces.conf_sum[index], pieces.conf_count[index])


def polygonize_rows(
    src: DatasetReader,
    confidence: DatasetReader | None,
    block_size: int,
    merger: RowMerger,
    coverage: bool = False,
    progress: bool = False,
) -> Iterator[Pieces]:
    """Polygonise a class raster block row by block row, yielding finished polygons.

    Args:
        src: Class raster.
        confidence: Confidence raster on the same grid, if any.
        block_size: Side in pixels of the blocks.
        merger: Joins the rows; holds the polygons still open between them.
        coverage: Prepare the pieces for simplification (see :func:`polygonize_block`).
        progress: Show a progress bar.

    Yields:
        Per block row, the polygons it finished, in pixel coordinates.
    """
    windows = list(block_windows(src.height, src.width, block_size))
    with tqdm(
        total=len(windows), desc="polygonising", unit="block", leave=False, disable=not progress
    ) as bar:
        for _, row in itertools.groupby(windows, key=lambda w: w.row_off):
            row = list(row)
            finished = merger.add(polygonize_row(src, row, confidence, coverage))
            bar.update(len(row))
            yield finished


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

    Used by :class:`RowMerger` on the row parts of each block row (each polygon's
    pieces in that row, unioned; open and finished polygons alike):
    ``shapely.coverage_simplify`` (shapely >= 2.1, topology-preserving
    Visvalingam-Whyatt) simplifies each edge two parts share identically for
    both, and keeps the outer boundary of the coverage as it is - the raster's
    border and the block row's top and bottom lines, along which the parts meet
    those of the rows above and below. Polygons therefore neither overlap nor
    leave gaps, and the parts of a polygon, unioned when it is finished, still
    fit exactly.

    Visvalingam-Whyatt only drops vertices, so the simplified parts still have
    their vertices on pixel corners and are moved back to exact pixel
    coordinates. The parts must share the vertices of their common edges
    (:func:`add_nodes`).

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
        unit: Multiplier and divisor of stored confidence (:func:`confidence_unit`).

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


@dataclass(frozen=True)
class PolygonFinisher:
    """Turn finished pixel-space polygons into layer features.

    The polygons are moved to map coordinates - simplified on the way
    (:func:`simplify_polygons`) unless they come simplified as a coverage
    (:class:`CoverageSimplifier`) - then measured and filtered by area
    (:func:`build_frame`).

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
    and the polygons open across its lower edge (see :class:`RowMerger`).

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
            :data:`GPKG_VERSIONS`).
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
