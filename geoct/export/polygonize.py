"""Class polygons of a raster's blocks, joined across block edges block row by block row.

Each block of the class raster is polygonised on its own with
:func:`rasterio.features.shapes` in pixel coordinates. Polygons that touch an
internal block edge are joined with their same-class neighbours across it (those
sharing an edge, as in 4-connectivity) by unioning each connected group, so a
field crossing block borders - or, for a mosaic VRT, tile borders - comes out as
one polygon. Working on integer pixel corners keeps shared edges exact.

The raster is processed one row of blocks at a time (:class:`RowMerger`): a
polygon that reaches the bottom edge of the current block row may still grow into
the next one and is kept *open*; every other polygon is *closed* and handed on as
finished straight away (:func:`polygonize_rows`). Memory is therefore bounded by
one block row and the polygons still open across its lower edge, not by the
raster (:class:`VectorizeStats` reports what was held).

Which pixels of two blocks face each other across an edge is read off the
blocks' border lines (the pieces rasterised into one-pixel strips), so joining
needs no geometric predicates and gives exactly the union a single pass over the
whole raster would: a group of pieces is joined iff it is one 4-connected region
of one class.
"""

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
from affine import Affine
from rasterio import features
from rasterio.io import DatasetReader
from rasterio.windows import Window
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from .class_raster import block_windows, ignore_value


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
            nodata regions count as polygons too, see
            :func:`~geoct.export.vectorize.vectorize_raster`).
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
        (:func:`~geoct.export.vectorize.confidence_unit`).
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
    before they are kept (:class:`~geoct.export.vectorize.CoverageSimplifier`).

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
                :class:`~geoct.export.vectorize.CoverageSimplifier`.
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
