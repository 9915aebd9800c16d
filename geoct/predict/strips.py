"""Reading a scene once, in strips of the window grid, with several reader threads.

Windows of one window row share their rows, and consecutive window rows share
``overlap`` rows, so reading each window separately reads a pixel about
``(window / stride)^2`` times (1.8 at the default overlap). :class:`StripReader`
instead reads the scene in *pieces* (a group of source block rows times a group of
source block columns, so that each GDAL block is decoded by one thread, once),
several reader threads at a time, each with its own dataset handles (a GDAL
dataset must not be used by two threads at once). For each window row it yields a *strip*,
from whose pieces each window is cut, clipped to the scene and reflect-padded
exactly as a windowed read pads it, straight into its slot of a host batch
(:meth:`Strip.cut`). Pieces are held pixel-interleaved, as the batch slots are
(GDAL interleaves the bands as it reads them, in the reader threads), so cutting a
window is a plain copy rather than a transposition. Pieces are read as the
windows need them, left to right, a few ahead of the window being cut; once the
windows of a row have passed a piece, it is dropped if no later window row needs
its rows, or trimmed to the rows later window rows need when that frees at least
half of it.

Windows hold the raw values (the scene's dtype, or float32 for dtypes the device
does not take), the validity mask and the height band; normalisation happens on
the model's device (:class:`~geoct.predict.device_blend.InputNormaliser`). Host
memory is the piece buffers, allocated as the first pieces are read and then
reused (a dropped piece's buffers take a later piece): about ``bands x
(window rows + piece rows) x width`` values at most, usually about one piece row
(plus ``lookahead`` rows), with a mask and a byte work area of those rows where
pixels may be invalid and a float32 height band with a DSM, whatever the scene
height. Nothing of the scene's width is allocated per piece or per window.
"""

import contextlib
import os
import queue
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import rasterio
from rasterio.windows import Window

from ..raster_io import warp_to_grid
from .reader import SceneReader
from .windows import WindowGrid

#: Reader threads when none is given: one per core, at most this many.
MAX_READ_THREADS = 8

#: A piece spans at least this many rows (whole source block rows).
MIN_PIECE_ROWS = 256

#: A piece spans at least this many columns (whole source block columns).
MIN_PIECE_COLS = 256

#: Pieces read ahead of the window being cut, per reader thread (at most a row of pieces).
AHEAD_PER_THREAD = 2

#: Value types sent to the device as they are; others are cast to float32 on the host.
DEVICE_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "int32", "float32"})


def read_threads() -> int:
    """Default number of reader threads: the cores, at most :data:`MAX_READ_THREADS`."""
    return max(1, min(MAX_READ_THREADS, os.cpu_count() or 1))


class Strip:
    """The rows of one window row: the pieces that hold them, and its windows.

    Windows are assembled on request from the pieces, clipped to the scene and
    reflect-padded exactly as a windowed read (:meth:`SceneReader.read
    <geoct.predict.reader.SceneReader.read>`) pads them; no strip-wide array is
    kept, so host memory is the pieces alone. Cut the windows left to right (the
    pieces they have passed are dropped), before the next strip is requested.

    Attributes:
        index: Window row index.
        top: First row in scene pixels (may be negative: reflect padding).
    """

    def __init__(self, index: int, top: int, reader: "StripReader"):
        """Stand for window row *index*, whose pieces *reader* holds."""
        self.index = index
        self.top = top
        self._reader = reader

    def window(self, col: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Return ``(image, valid, height)`` of the window starting at scene column *col*.

        ``image`` is ``(C_optical, rows, width)`` raw values, ``valid`` the boolean
        mask and ``height`` the float32 height band (or ``None``); new arrays,
        except that an all-valid mask is shared and read-only.
        """
        reader = self._reader
        rows = reader.grid.window[0]
        image = np.empty((len(reader.reader.indexes), rows, width), dtype=reader.dtype)
        valid = np.empty((rows, width), dtype=bool)
        height = None
        if reader.reader.dsm is not None:
            height = np.empty((rows, width), dtype=np.float32)
        self.cut(col, image, valid, height)
        return image, reader.ones(rows, width) if reader.all_valid else valid, height

    def cut(
        self, col: int, image: np.ndarray, valid: np.ndarray, height: np.ndarray | None
    ) -> None:
        """Write the window starting at scene column *col* into the given arrays.

        The window is clipped to the scene and reflect-padded as :meth:`window`
        returns it; every value of the arrays is written.

        Args:
            col: First column in scene pixels (may be negative: reflect padding).
            image: ``(C_optical, rows, width)`` raw values, any strides (e.g. a
                transposed view of a pixel-interleaved batch slot).
            valid: ``(rows, width)`` boolean mask.
            height: ``(rows, width)`` float32 height band, with a DSM.
        """
        grid = self._reader.grid
        rows, width = image.shape[1:]
        a, b = max(self.top, 0), min(self.top + rows, grid.height)
        c0, c1 = max(col, 0), min(col + width, grid.width)
        for piece in self._reader._window_pieces(self, col, rows, width):
            data, mask, heights = piece.result
            win = piece.window
            r0, r1 = max(a, win.row_off), min(b, win.row_off + win.height)
            q0, q1 = max(c0, win.col_off), min(c1, win.col_off + win.width)
            if r1 <= r0 or q1 <= q0:
                continue
            src = (
                slice(r0 - win.row_off, r1 - win.row_off),
                slice(q0 - win.col_off, q1 - win.col_off),
            )
            dst = (slice(r0 - self.top, r1 - self.top), slice(q0 - col, q1 - col))
            image[(slice(None), *dst)] = data[(slice(None), *src)]
            if mask is not None:
                valid[dst] = mask[src]
            if height is not None:
                height[dst] = heights[src]
        inside = ((a - self.top, b - self.top), (c0 - col, c1 - col))
        _reflect(image, inside)
        if self._reader.all_valid:
            valid.fill(True)
        else:
            _reflect(valid, inside)
        if height is not None:
            _reflect(height, inside)


def _reflected(index: np.ndarray, size: int) -> np.ndarray:
    """The positions in *size* values that reflect padding copies to positions *index*.

    *index* counts from the first of the values (negative before them), as
    :func:`numpy.pad` (``mode="reflect"``) pads: period ``2 (size - 1)``, and a
    single value repeated.
    """
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = index % period
    return np.where(index < size, index, period - index)


def _reflect(array: np.ndarray, inside: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """Reflect-pad *array* in place around the filled ``inside`` rows and columns.

    The values outside are those :func:`numpy.pad` (``mode="reflect"``) gives
    for the inside alone (its last two axes).
    """
    (r0, r1), (c0, c1) = inside
    rows, cols = array.shape[-2:]
    if r0 or r1 < rows:
        pad = np.r_[0:r0, r1:rows]
        array[..., pad, c0:c1] = array[..., r0 + _reflected(pad - r0, r1 - r0), c0:c1]
    if c0 or c1 < cols:
        pad = np.r_[0:c0, c1:cols]
        array[..., pad] = array[..., c0 + _reflected(pad - c0, c1 - c0)]


def _clone_dsm(dsm: rasterio.io.DatasetReaderBase) -> rasterio.io.DatasetReaderBase:
    """Open a new handle on the DSM view *dsm* (the DSM itself or its WarpedVRT)."""
    base = getattr(dsm, "src_dataset", None)
    if base is None:
        return rasterio.open(dsm.name)
    src = rasterio.open(base.name)
    try:
        return warp_to_grid(
            src,
            dsm,
            dsm.resampling,
            src_nodata=dsm.src_nodata,
            nodata=dsm.dst_nodata,
            dtype=dsm.working_dtype,
            tolerance=dsm.tolerance,
            **dsm.warp_extras,
        )
    except BaseException:
        src.close()
        raise


def _close_dsm(dsm: rasterio.io.DatasetReaderBase | None) -> None:
    if dsm is None:
        return
    base = getattr(dsm, "src_dataset", None)
    dsm.close()
    if base is not None:
        base.close()


class _Piece:
    """One block-aligned rectangle of the scene, read by one thread into pooled buffers.

    ``buffers`` are flat ``(data, valid, height, scratch)`` arrays of the largest
    piece (``None`` where not needed), or of half its rows (``half``: the trimmed
    rest of a piece); ``out`` are their views of this piece's shape, the data a
    ``(bands, rows, cols)`` view of pixel-interleaved values.
    """

    __slots__ = ("buffers", "done", "half", "out", "result", "window")

    def __init__(
        self,
        window: Window,
        buffers: tuple[np.ndarray | None, ...],
        bands: int,
        half: bool = False,
    ) -> None:
        self.window = window
        self.buffers = buffers
        self.half = half
        shape = (int(window.height), int(window.width))
        area = shape[0] * shape[1]
        data, *planes = buffers
        self.out = (
            data[: bands * area].reshape(*shape, bands).transpose(2, 0, 1),
            *(None if plane is None else plane[:area].reshape(shape) for plane in planes),
        )
        self.result: tuple | BaseException | None = None
        self.done = False


class StripReader:
    """Yields the :class:`Strip` of each window row of a scene, reading each pixel once.

    Use as a context manager, iterate once, and cut the windows, from one thread;
    reading runs in the reader threads. A piece is read when a window needs it or
    :attr:`ahead` pieces before, in the order the windows first need them.
    """

    def __init__(
        self,
        reader: SceneReader,
        grid: WindowGrid,
        threads: int | None = None,
        lock: Callable[[], AbstractContextManager] | None = None,
        timer: Callable[[str, float], None] | None = None,
        lookahead: int = 0,
    ) -> None:
        """Plan the pieces of a scene.

        Args:
            reader: The open scene; its path, bands, masks and DSM are used.
            grid: The window layout.
            threads: Reader threads (default :func:`read_threads`).
            lock: Context manager factory held around each GDAL read, where the
                writer needs reads paused (see :mod:`~geoct.predict.staging`).
            timer: Called with ``("read", seconds)`` after each piece.
            lookahead: Rows of pieces read ahead of the window being cut, besides
                :data:`AHEAD_PER_THREAD` pieces per thread, so that readers work
                while windows are batched (host memory grows by ``lookahead x
                width x bands`` values).
        """
        self.reader = reader
        self.grid = grid
        self.threads = threads or read_threads()
        self.lock = lock or nullcontext
        self.timer = timer
        self.lookahead = lookahead
        self.all_valid = reader.mask_mode == "none" and reader.dsm is None
        block_rows, block_cols = reader.src.block_shapes[0]
        self.group_rows = block_rows * max(1, -(-MIN_PIECE_ROWS // block_rows))
        self.groups = -(-grid.height // self.group_rows)
        piece_cols = block_cols * max(1, -(-MIN_PIECE_COLS // block_cols))
        self.col_edges = [*range(0, grid.width, piece_cols), grid.width]
        per_group = len(self.col_edges) - 1
        #: Pieces submitted beyond the last one the current window needs.
        self.ahead = min(AHEAD_PER_THREAD * self.threads, per_group)
        self.ahead += -(-lookahead * per_group // self.group_rows)
        raw = np.dtype(reader.src.dtypes[reader.indexes[0] - 1])
        self._raw_dtype = raw
        self.dtype = raw if raw.name in DEVICE_DTYPES else np.dtype("float32")
        self._plan = self._first_needs()
        self._order = {key: n for n, key in enumerate(self._plan)}
        self._pieces: dict[tuple[int, int], _Piece] = {}
        self._free: dict[bool, list[tuple[np.ndarray | None, ...]]] = {False: [], True: []}
        self._submitted = 0
        self._tasks: queue.Queue = queue.Queue()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._ones: np.ndarray | None = None

    def __enter__(self) -> "StripReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the reader threads and queue the first pieces (done by iterating, if not before).

        Starting early lets the readers open their handles and read the first
        pieces while the caller sets up the rest of the pipeline.
        """
        if self._workers:
            return
        self._start()
        self._submit_through(self.ahead - 1)

    def _start(self) -> None:
        """Open one scene handle per reader thread, here, then start the threads.

        A GeoTIFF's CRS is read from its GeoKeys alone (``GTIFF_SRS_SOURCE``), and
        in this thread, whose PROJ context is warm: building it from the EPSG
        database in each new thread costs more than the first pieces' reads. The
        readers use the handles for pixels only.
        """
        handles = []
        try:
            with rasterio.Env(GTIFF_SRS_SOURCE="GEOKEYS"):
                for _ in range(self.threads):
                    handles.append(rasterio.open(self.reader.path))
        except BaseException:
            for src in handles:
                src.close()
            raise
        for n, src in enumerate(handles):
            worker = threading.Thread(
                target=self._work, args=(src,), name=f"reader-{n}", daemon=True
            )
            worker.start()
            self._workers.append(worker)

    def _work(self, src: rasterio.io.DatasetReaderBase) -> None:
        """Reader thread: open an own DSM handle, then read queued pieces until told to stop."""
        dsm = error = None
        try:
            dsm = _clone_dsm(self.reader.dsm) if self.reader.dsm is not None else None
        except BaseException as e:
            error = e
        try:
            while not self._stop.is_set():
                try:
                    piece = self._tasks.get(timeout=0.1)
                except queue.Empty:
                    continue
                if piece is None:
                    return
                self._read(piece, src, dsm, error)
        finally:
            with contextlib.suppress(Exception):
                src.close()
                _close_dsm(dsm)

    def _read(self, piece: _Piece, src, dsm, error: BaseException | None) -> None:
        start = time.perf_counter()
        try:
            if error is not None:
                raise error
            with self.lock():
                result = self.reader._read_raw(piece.window, src, dsm, out=piece.out)
        except BaseException as e:
            result = e
        if self.timer is not None:
            self.timer("read", time.perf_counter() - start)
        with self._cond:
            piece.result, piece.done = result, True
            self._cond.notify_all()

    def _span(self, top: int, col: int, rows: int, width: int) -> tuple[range, range]:
        """The row groups and the column pieces that a window touches."""
        grid = self.grid
        a, b = max(top, 0), min(top + rows, grid.height)
        c0, c1 = max(col, 0), min(col + width, grid.width)
        groups = range(a // self.group_rows, (b - 1) // self.group_rows + 1)
        edges = self.col_edges
        return groups, range(bisect_right(edges, c0) - 1, bisect_right(edges, c1 - 1))

    def _first_needs(self) -> list[tuple[int, int]]:
        """Every piece ``(group, column piece)``, once, in the order windows first need it."""
        planned = [0] * self.groups
        plan = []
        for top in self.grid.rows:
            for col in self.grid.cols:
                groups, cols = self._span(top, col, *self.grid.window)
                for g in groups:
                    plan.extend((g, j) for j in range(planned[g], cols.stop))
                    planned[g] = max(planned[g], cols.stop)
        return plan

    def _submit_through(self, last: int) -> None:
        """Queue the planned pieces up to number *last*."""
        bands = len(self.reader.indexes)
        while self._submitted <= min(last, len(self._plan) - 1):
            g, j = key = self._plan[self._submitted]
            r0, c0 = g * self.group_rows, self.col_edges[j]
            r1, c1 = min(r0 + self.group_rows, self.grid.height), self.col_edges[j + 1]
            piece = _Piece(Window(c0, r0, c1 - c0, r1 - r0), self._take_buffers(), bands)
            self._pieces[key] = piece
            self._tasks.put(piece)
            self._submitted += 1

    def _keep_from(self, index: int) -> int:
        """First scene row that a window row after *index* needs (the height after the last)."""
        rows = self.grid.rows
        return max(rows[index + 1], 0) if index + 1 < len(rows) else self.grid.height

    def _drop(self, keep_from: int, col: int) -> None:
        """Keep only the rows from *keep_from* on of the pieces that end left of *col*.

        Later window rows need no other rows of them: a piece above *keep_from* is
        dropped, a full one keeping at most half its rows is trimmed (copied into
        half-size buffers). Freed buffers take later pieces, once read (a reader
        may still fill a piece that no window needed).
        """
        for key in [key for key in self._pieces if self.col_edges[key[1] + 1] <= col]:
            piece = self._pieces[key]
            top, bottom = piece.window.row_off, piece.window.row_off + piece.window.height
            if bottom <= keep_from:
                del self._pieces[key]
                if piece.done:
                    self._free[piece.half].append(piece.buffers)
            elif top < keep_from and self._trims(piece, bottom - keep_from):
                self._pieces[key] = self._trim(piece, keep_from)

    def _trims(self, piece: _Piece, rows: int) -> bool:
        """Whether to trim *piece* to its last *rows* rows: read, full-size, and at most half kept."""
        read = piece.done and isinstance(piece.result, tuple)
        return read and not piece.half and 2 * rows <= self.group_rows

    def _trim(self, piece: _Piece, top: int) -> _Piece:
        """Return the rows of read *piece* from scene row *top* on, in half-size buffers."""
        win = piece.window
        skip = top - win.row_off
        rest = Window(win.col_off, top, win.width, win.height - skip)
        bands = len(self.reader.indexes)
        part = _Piece(rest, self._take_buffers(half=True), bands, half=True)
        part.result = tuple(
            None if old is None else new
            for old, new in zip(piece.result, part.out[:3], strict=True)
        )
        for old, new in zip(piece.result, part.result, strict=True):
            if old is not None:
                np.copyto(new, old[..., skip:, :])
        part.done = True
        self._free[False].append(piece.buffers)
        return part

    def _window_pieces(self, strip: Strip, col: int, rows: int, width: int) -> list[_Piece]:
        """Return the read pieces of a window of *strip*, reading ahead of it.

        Pieces that neither this window nor a later one needs are dropped first.

        Raises:
            RuntimeError: If a piece the window needs was dropped: the windows of
                a strip were cut out of order, or after the next strip was requested.
        """
        self._drop(self._keep_from(strip.index), max(col, 0))
        groups, cols = self._span(strip.top, col, rows, width)
        keys = [(g, j) for g in groups for j in cols]
        self._submit_through(max(self._order[key] for key in keys) + self.ahead)
        if any(key not in self._pieces for key in keys):
            raise RuntimeError("cut the windows of a strip left to right, before the next strip")
        pieces = [self._pieces[key] for key in keys]
        for piece in pieces:
            self._wait(piece)
        return pieces

    def _take_buffers(self, half: bool = False) -> tuple[np.ndarray | None, ...]:
        """Flat buffers for one piece (or half one): those of a dropped one, else new ones."""
        if self._free[half]:
            return self._free[half].pop()
        rows = self.group_rows // 2 if half else self.group_rows
        area = rows * int(np.diff(self.col_edges).max())
        masked = not self.all_valid
        return (
            np.empty(len(self.reader.indexes) * area, dtype=self._raw_dtype),
            np.empty(area, dtype=bool) if masked else None,
            np.empty(area, dtype=np.float32) if self.reader.dsm is not None else None,
            np.empty(area, dtype=np.uint8) if masked else None,
        )

    def _wait(self, piece: _Piece) -> tuple:
        with self._cond:
            while not piece.done:
                if not any(w.is_alive() for w in self._workers):
                    raise RuntimeError("the reader threads stopped unexpectedly")
                self._cond.wait(timeout=0.1)
        if isinstance(piece.result, BaseException):
            raise piece.result
        return piece.result

    def __iter__(self) -> Iterator[Strip]:
        """Yield the strips in window-row order; pieces are read as their windows are cut."""
        self.start()
        for i, top in enumerate(self.grid.rows):
            yield Strip(i, top, self)
            self._drop(self._keep_from(i), self.grid.width)

    def ones(self, rows: int, cols: int) -> np.ndarray:
        """A shared, read-only all-valid mask."""
        if self._ones is None or self._ones.shape != (rows, cols):
            self._ones = np.ones((rows, cols), dtype=bool)
            self._ones.flags.writeable = False
        return self._ones

    def close(self) -> None:
        """Stop and join the reader threads (they close their handles)."""
        self._stop.set()
        for _ in self._workers:
            self._tasks.put(None)
        for worker in self._workers:
            worker.join()
        self._workers = []
        self._pieces = {}
        self._free = {False: [], True: []}
