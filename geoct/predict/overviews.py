"""Overviews of the class and confidence rasters, built while prediction streams, as GDAL builds them.

Building overviews at the end is serial work on the finished raster: GDAL's byte
``mode`` zeroes a 256-entry histogram for every overview pixel, about a tenth of
a second per 4k x 4k scene and seconds for a 20k one, and ``average`` costs
about as much. Here each level is built from the rows of the level below as they
are finished, in a thread of its own beside the writer (:class:`OverviewThread`),
and written into overview IFDs that the staging file was given up front.

The results are GDAL's, pixel for pixel (``GDALResampleChunk_Mode`` and
``GDALResampleChunk_AverageOrRMS_T`` in GDAL 3.12):

* level *k* is computed from level *k - 1* (level 0 being the raster);
* along each axis, overview pixel *i* of a level of *m* pixels built from *n* takes
  the source pixels ``floor(i r + 1e-8)`` to ``ceil((i + 1) r - 1e-8)`` (exclusive,
  at least one, clipped to the source) with ``r = n / m`` in double precision, so
  windows are 2 x 2 when *n* is even and up to 3 x 3 otherwise;
* ``mode`` visits the window's pixels row by row, skips nodata, and keeps the
  value that first reaches the highest count (nodata when all are nodata);
* ``average`` weighs the window's first and last pixel along each axis by the
  share of it inside the window (:func:`edge_weights`), sums the valid pixels in
  float64 in GDAL's order and rounds half up; nodata where none is valid, and the
  value next to nodata where the average rounds to nodata.
"""

import functools
import queue
import threading
from collections.abc import Callable

import numpy as np

#: Overview pixels computed at once: their planes stay in the core's cache between operations.
CHUNK_PIXELS = 1 << 16

#: ``sink(row, rows)`` receives finished ``(h, width)`` rows of one level (with a trailing
#: band axis for a multi-band raster), top to bottom.
RowSink = Callable[[int, np.ndarray], None]

#: Windows along one axis: ``(start, stop, first weight, last weight)`` per overview pixel.
Axis = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

#: ``resample(src, rows, cols)``: one level's ``(len(rows), len(cols))`` pixels from *src* rows.
Resample = Callable[[np.ndarray, Axis, Axis], np.ndarray]


def _edges(source: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each of *size* overview pixels starts and ends, in source pixels (float64, as GDAL)."""
    ratio = source / size
    index = np.arange(size, dtype=np.float64)
    return index * ratio, (index + 1) * ratio


def source_windows(source: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the first and past-the-last source pixel of each of *size* overview pixels.

    Args:
        source: Source pixels along the axis.
        size: Overview pixels along the axis.

    Returns:
        ``(start, stop)`` int64 arrays of length *size*.
    """
    lo, hi = _edges(source, size)
    start = np.floor(lo + 1e-8).astype(np.int64)
    stop = np.ceil(hi - 1e-8).astype(np.int64)
    stop = np.where(stop == start, stop + 1, stop)
    return np.clip(start, 0, source), np.minimum(stop, source)


def edge_weights(source: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the weights GDAL's ``average`` gives the first and the last pixel of each window.

    A window's inner pixels weigh 1; its first weighs the share of it inside the
    window (1 for a one-pixel window), its last likewise (see :func:`source_windows`).

    Args:
        source: Source pixels along the axis.
        size: Overview pixels along the axis.

    Returns:
        ``(first, last)`` float64 arrays of length *size*.
    """
    return axis_windows(source, size)[2:]


def axis_windows(source: int, size: int) -> Axis:
    """:func:`source_windows` and :func:`edge_weights` of one axis."""
    lo, hi = _edges(source, size)
    start, stop = source_windows(source, size)
    first = np.where(stop == start + 1, 1.0, 1 - (lo - start))
    return start, stop, first, 1 - (stop - hi)


def _halving(start: np.ndarray, stop: np.ndarray) -> bool:
    """Whether windows ``start:stop`` are the pixel pairs ``2i, 2i + 1``."""
    return bool((start == 2 * np.arange(len(start))).all() and (stop - start == 2).all())


def _pixels(
    src: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray],
    nodata: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The windows' pixels in visiting order, as ``(values, counted)`` planes."""
    (r0, r1), (c0, c1) = rows, cols
    if _halving(r0, r1) and _halving(c0, c1):
        block = src[: 2 * len(r0), : 2 * len(c0)]
        planes = [np.ascontiguousarray(block[dy::2, dx::2]) for dy in (0, 1) for dx in (0, 1)]
        return [(v, v != nodata) for v in planes]
    planes = []
    for dy in range(int((r1 - r0).max())):
        row_in = r0 + dy < r1
        lines = src[np.minimum(r0 + dy, r1 - 1)]
        for dx in range(int((c1 - c0).max())):
            col_in = c0 + dx < c1
            values = lines[:, np.minimum(c0 + dx, c1 - 1)]
            counted = (values != nodata) & row_in[:, None] & col_in[None, :]
            planes.append((values, counted))
    return planes


def window_mode(
    src: np.ndarray, rows: tuple[np.ndarray, ...], cols: tuple[np.ndarray, ...], nodata: int
) -> np.ndarray:
    """GDAL's mode of uint8 *src* over the windows *rows* x *cols* (see the module notes).

    Args:
        src: ``(h, w)`` uint8 source rows.
        rows: ``(start, stop, ...)`` source rows of each output row, within *src*.
        cols: ``(start, stop, ...)`` source columns of each output column.
        nodata: The nodata value, skipped, and the result of all-nodata windows.

    Returns:
        ``(len(rows[0]), len(cols[0]))`` uint8 modes.
    """
    shape = (len(rows[0]), len(cols[0]))
    planes = _pixels(src, rows[:2], cols[:2], nodata)
    first, counted = planes[0]
    best = np.where(counted, first, np.uint8(nodata))
    top = counted.astype(np.uint8)
    count = np.empty(shape, dtype=np.uint8)
    same = np.empty(shape, dtype=bool)
    for p, (values, counted) in enumerate(planes[1:], start=1):
        np.copyto(count, counted)
        for earlier, earlier_counted in planes[:p]:
            np.equal(earlier, values, out=same)
            same &= earlier_counted
            count += same
        count *= counted
        better = count > top
        np.copyto(best, values, where=better)
        np.maximum(top, count, out=top)
    return best


def mode(nodata: int) -> Resample:
    """GDAL's ``mode`` with *nodata* (:func:`window_mode`)."""
    return lambda src, rows, cols: window_mode(src, rows, cols, nodata)


def average(nodata: int) -> Resample:
    """GDAL's ``average`` with *nodata* (:func:`window_average`)."""
    return lambda src, rows, cols: window_average(src, rows, cols, nodata)


class OverviewLevel:
    """One overview level, built from the finished rows of the level below as they come."""

    def __init__(
        self, source: tuple[int, int], size: tuple[int, int], resample: Resample, sink: RowSink
    ) -> None:
        """Prepare a level.

        Args:
            source: ``(height, width)`` of the level below.
            size: ``(height, width)`` of this level.
            resample: Computes this level's pixels (:func:`mode`, :func:`average`).
            sink: Receives this level's finished rows.
        """
        self.rows = axis_windows(source[0], size[0])
        self.cols = axis_windows(source[1], size[1])
        self.resample = resample
        self.sink = sink
        self.height = size[0]
        self._pending: np.ndarray | None = None
        self._base = 0
        self._next = 0

    def push(self, row: int, rows: np.ndarray) -> None:
        """Add the source rows (``(h, width)``, or with a trailing band axis) starting at *row*.

        Emits the rows of this level that they finish.
        """
        if row != self._base + (0 if self._pending is None else len(self._pending)):
            raise ValueError(f"overview source rows must come in order: got {row}")
        if self._pending is not None and len(self._pending):
            rows = np.concatenate([self._pending, rows])
        self._pending = rows
        available = self._base + len(self._pending)
        last = int(np.searchsorted(self.rows[1], available, side="right"))
        if last > self._next:
            shape = (last - self._next, len(self.cols[0]), *rows.shape[2:])
            out = np.empty(shape, dtype=np.uint8)
            step = max(1, CHUNK_PIXELS // out.shape[1])
            for first in range(self._next, last, step):
                end = min(first + step, last)
                start, stop, *weights = (a[first:end] for a in self.rows)
                src = self._pending[start[0] - self._base : stop[-1] - self._base]
                window = (start - start[0], stop - start[0], *weights)
                out[first - self._next : end - self._next] = self.resample(src, window, self.cols)
            self.sink(self._next, out)
            self._next = last
        keep = int(self.rows[0][self._next]) if self._next < self.height else available
        self._pending = self._pending[keep - self._base :].copy()
        self._base = keep

    @property
    def complete(self) -> bool:
        """Whether every row of this level has been emitted."""
        return self._next == self.height


class OverviewPyramid:
    """Every overview level of a raster, fed its finished rows top to bottom."""

    def __init__(
        self,
        size: tuple[int, int],
        levels: list[tuple[int, int]],
        resample: Resample,
        sinks: list[RowSink],
    ) -> None:
        """Chain one :class:`OverviewLevel` per overview level.

        Args:
            size: ``(height, width)`` of the raster.
            levels: ``(height, width)`` of each overview, finest first.
            resample: Computes a level from the one below (:func:`mode`, :func:`average`).
            sinks: Receives each level's finished rows, one per level.
        """
        self.levels: list[OverviewLevel] = []
        below = size
        for shape, sink in zip(levels, sinks, strict=True):
            self.levels.append(OverviewLevel(below, shape, resample, sink))
            below = shape
        for lower, upper in zip(self.levels, self.levels[1:], strict=False):
            lower.sink = self._chain(lower.sink, upper)

    @staticmethod
    def _chain(sink: RowSink, upper: OverviewLevel) -> RowSink:
        def both(row: int, rows: np.ndarray) -> None:
            sink(row, rows)
            upper.push(row, rows)

        return both

    def push(self, row: int, rows: np.ndarray) -> None:
        """Add the raster's next finished rows, starting at *row*."""
        if self.levels:
            self.levels[0].push(row, rows)

    @property
    def complete(self) -> bool:
        """Whether every level is complete."""
        return all(level.complete for level in self.levels)


def window_average(
    src: np.ndarray,
    rows: tuple[np.ndarray, ...],
    cols: tuple[np.ndarray, ...],
    nodata: int,
) -> np.ndarray:
    """GDAL's ``average`` of uint8 *src* with a nodata value over the windows *rows* x *cols*.

    Valid pixels are summed row by row, each weighted by its row's and column's
    edge weights (:func:`edge_weights`), in GDAL's order and in float64; the result
    is ``int(total / weight + 0.5)``, nodata where no pixel is valid, and the value
    next to nodata where it rounds to nodata. Bands on a trailing axis are averaged
    each on its own, as GDAL does for a pixel-interleaved raster.

    Args:
        src: ``(h, w)`` or ``(h, w, bands)`` uint8 source rows.
        rows: ``(start, stop, first, last)`` of each output row, within *src*.
        cols: ``(start, stop, first, last)`` of each output column.
        nodata: The nodata value.

    Returns:
        ``(len(rows[0]), len(cols[0]), ...)`` uint8 averages.
    """
    (r0, r1, rw0, rw1), (c0, c1, cw0, cw1) = rows, cols
    shape = (len(r0), len(c0), *src.shape[2:])
    whole = all((w == 1).all() for w in (rw0, rw1, cw0, cw1))
    if whole and _halving(r0, r1) and _halving(c0, c1):
        return _average_pairs(src[: 2 * shape[0], : 2 * shape[1]], nodata)
    bands = (None,) * (src.ndim - 2)
    total = np.zeros(shape)
    weight = np.zeros(shape)
    count = np.zeros(shape, dtype=np.int64)
    for dy in range(int((r1 - r0).max())):
        lines = src[np.minimum(r0 + dy, r1 - 1)]
        row_in = (r0 + dy < r1)[:, None, *bands]
        wy = np.where(dy == 0, rw0, np.where(r0 + dy + 1 == r1, rw1, 1.0))[:, None, *bands]
        line_total = np.zeros(shape)
        line_weight = np.zeros(shape)
        for dx in range(int((c1 - c0).max())):
            values = lines[:, np.minimum(c0 + dx, c1 - 1)]
            ok = (values != nodata) & row_in & (c0 + dx < c1)[None, :, *bands]
            wx = np.where(dx == 0, cw0, np.where(c0 + dx + 1 == c1, cw1, 1.0))[None, :, *bands]
            line_total += np.where(ok, values * wx, 0.0)
            line_weight += np.where(ok, wx, 0.0)
            count += ok
        total += line_total * wy
        weight += line_weight * wy
    out = (total / np.where(count > 0, weight, 1.0) + 0.5).astype(np.uint8)
    out[out == nodata] = nodata + 1 if nodata < 255 else nodata - 1
    out[count == 0] = nodata
    return out


def _average_pairs(src: np.ndarray, nodata: int) -> np.ndarray:
    """:func:`window_average` over 2 x 2 windows whose weights are all 1, in integers.

    Every weight is 1, so the float64 sum is the exact integer sum *t* of the *n*
    valid values, and ``int(t / n + 0.5)`` is ``(2 t + n) // 2n`` (no quotient of at
    most four values lies near a rounding boundary); it is looked up by ``(n, t)``.
    Rows are added in pairs first, while they are contiguous.
    """
    valid = (src != nodata).view(np.uint8)
    values = src if nodata == 0 else src * valid
    rows = values[0::2].astype(np.uint16)
    rows += values[1::2]
    counts = valid[0::2] + valid[1::2]
    key = (counts[:, 0::2] + counts[:, 1::2]).astype(np.uint16) << 10
    key |= rows[:, 0::2]
    key += rows[:, 1::2]
    return _pair_table(nodata)[key]


@functools.cache
def _pair_table(nodata: int) -> np.ndarray:
    """``table[n << 10 | t]``: the rounded average of *n* valid values summing to *t*."""
    count, total = np.divmod(np.arange(5 << 10), 1 << 10)
    out = ((2 * total + count) // np.maximum(2 * count, 1)).clip(0, 255).astype(np.uint8)
    out[out == nodata] = nodata + 1 if nodata < 255 else nodata - 1
    out[count == 0] = nodata
    return out


class OverviewThread:
    """Feeds an :class:`OverviewPyramid` in a thread of its own.

    Building overviews then keeps pace with writing the tiles, which at GPU rates
    one thread could not do for both. At most *depth* pushes wait; a push's rows
    must not change afterwards (they are finished rows, dropped by their writer).
    """

    def __init__(self, pyramid: OverviewPyramid, depth: int = 1) -> None:
        """Start the thread."""
        self.pyramid = pyramid
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="overviews", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self.pyramid.push(*item)
                except BaseException as e:
                    self._error = e

    def push(self, row: int, rows: np.ndarray) -> None:
        """Queue the raster's next finished rows (see :meth:`OverviewPyramid.push`)."""
        if self._error is not None:
            raise self._error
        self._queue.put((row, rows))

    def finish(self) -> None:
        """Wait until every queued row is in the overviews; raise what went wrong there."""
        self.close()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the thread once it has taken what is queued."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    @property
    def complete(self) -> bool:
        """Whether every level is complete."""
        return self.pyramid.complete
