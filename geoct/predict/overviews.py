"""Mode overviews of the class raster, built while prediction streams, exactly as GDAL builds them.

Building ``mode`` overviews at the end is serial work on the finished raster:
GDAL's byte mode zeroes a 256-entry histogram for every overview pixel, about a
tenth of a second per 4k x 4k scene and seconds for a 20k one. Here each level is
built from the rows of the level below as they are finished, in the writer thread,
and written into overview IFDs that the staging file was given up front.

The result is GDAL's, pixel for pixel (``GDALResampleChunk_Mode`` in GDAL 3.12):

* level *k* is computed from level *k - 1* (level 0 being the raster);
* along each axis, overview pixel *i* of a level of *m* pixels built from *n* takes
  the source pixels ``floor(i r + 1e-8)`` to ``ceil((i + 1) r - 1e-8)`` (exclusive,
  at least one, clipped to the source) with ``r = n / m`` in double precision, so
  windows are 2 x 2 when *n* is even and up to 3 x 3 otherwise;
* the window's pixels are visited row by row, nodata skipped, and the value that
  first reaches the highest count wins (nodata when all are nodata).
"""

from collections.abc import Callable

import numpy as np

#: Overview pixels computed at once: their planes stay in the core's cache between operations.
CHUNK_PIXELS = 1 << 16

#: ``sink(row, rows)`` receives finished ``(h, width)`` rows of one level, top to bottom.
RowSink = Callable[[int, np.ndarray], None]


def source_windows(source: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the first and past-the-last source pixel of each of *size* overview pixels.

    Args:
        source: Source pixels along the axis.
        size: Overview pixels along the axis.

    Returns:
        ``(start, stop)`` int64 arrays of length *size*.
    """
    ratio = source / size
    index = np.arange(size, dtype=np.float64)
    start = np.floor(index * ratio + 1e-8).astype(np.int64)
    stop = np.ceil((index + 1) * ratio - 1e-8).astype(np.int64)
    stop = np.where(stop == start, stop + 1, stop)
    return np.clip(start, 0, source), np.minimum(stop, source)


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
    src: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray],
    nodata: int,
) -> np.ndarray:
    """GDAL's mode of uint8 *src* over the windows *rows* x *cols* (see the module notes).

    Args:
        src: ``(h, w)`` uint8 source rows.
        rows: ``(start, stop)`` source rows of each output row, within *src*.
        cols: ``(start, stop)`` source columns of each output column.
        nodata: The nodata value, skipped, and the result of all-nodata windows.

    Returns:
        ``(len(rows[0]), len(cols[0]))`` uint8 modes.
    """
    shape = (len(rows[0]), len(cols[0]))
    planes = _pixels(src, rows, cols, nodata)
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


class ModeLevel:
    """One overview level, built from the finished rows of the level below as they come."""

    def __init__(
        self, source: tuple[int, int], size: tuple[int, int], nodata: int, sink: RowSink
    ) -> None:
        """Prepare a level.

        Args:
            source: ``(height, width)`` of the level below.
            size: ``(height, width)`` of this level.
            nodata: Nodata value.
            sink: Receives this level's finished rows.
        """
        self.rows = source_windows(source[0], size[0])
        self.cols = source_windows(source[1], size[1])
        self.nodata = nodata
        self.sink = sink
        self.height = size[0]
        self._pending = np.empty((0, source[1]), dtype=np.uint8)
        self._base = 0
        self._next = 0

    def push(self, row: int, rows: np.ndarray) -> None:
        """Add the source rows starting at *row* (the next ones); emit the rows they finish."""
        if row != self._base + len(self._pending):
            raise ValueError(f"overview source rows must come in order: got {row}")
        self._pending = np.concatenate([self._pending, rows]) if len(self._pending) else rows
        available = self._base + len(self._pending)
        last = int(np.searchsorted(self.rows[1], available, side="right"))
        if last > self._next:
            out = np.empty((last - self._next, len(self.cols[0])), dtype=np.uint8)
            step = max(1, CHUNK_PIXELS // out.shape[1])
            for first in range(self._next, last, step):
                end = min(first + step, last)
                start, stop = self.rows[0][first:end], self.rows[1][first:end]
                src = self._pending[start[0] - self._base : stop[-1] - self._base]
                out[first - self._next : end - self._next] = window_mode(
                    src, (start - start[0], stop - start[0]), self.cols, self.nodata
                )
            self.sink(self._next, out)
            self._next = last
        keep = int(self.rows[0][self._next]) if self._next < self.height else available
        self._pending = self._pending[keep - self._base :]
        self._base = keep

    @property
    def complete(self) -> bool:
        """Whether every row of this level has been emitted."""
        return self._next == self.height


class ModePyramid:
    """Every mode overview level of a raster, fed its finished rows top to bottom."""

    def __init__(
        self,
        size: tuple[int, int],
        levels: list[tuple[int, int]],
        nodata: int,
        sinks: list[RowSink],
    ) -> None:
        """Chain one :class:`ModeLevel` per overview level.

        Args:
            size: ``(height, width)`` of the raster.
            levels: ``(height, width)`` of each overview, finest first.
            nodata: Nodata value.
            sinks: Receives each level's finished rows, one per level.
        """
        self.levels: list[ModeLevel] = []
        below = size
        for shape, sink in zip(levels, sinks, strict=True):
            self.levels.append(ModeLevel(below, shape, nodata, sink))
            below = shape
        for lower, upper in zip(self.levels, self.levels[1:], strict=False):
            lower.sink = self._chain(lower.sink, upper)

    @staticmethod
    def _chain(sink: RowSink, upper: ModeLevel) -> RowSink:
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
