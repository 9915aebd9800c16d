"""Reading a scene once, in strips of the window grid, with several reader threads.

Windows of one window row share their rows, and consecutive window rows share
``overlap`` rows, so reading each window separately reads a pixel about
``(window / stride)^2`` times (1.8 at the default overlap). :class:`StripReader`
instead reads the scene in *pieces* (a group of source block rows times a group of
source block columns, so that each GDAL block is decoded by one thread, once),
several reader threads at a time, each with its own dataset handles (GDAL datasets
must not be shared between threads). For each window row it yields a *strip*:
the pieces holding the rows that row touches, from which each window is cut,
clipped to the scene and reflect-padded exactly as a windowed read pads it.
Pieces are dropped as soon as no later window row needs their rows.

Windows hold the raw values (the scene's dtype, or float32 for dtypes the device
does not take), the validity mask and the height band; normalisation happens on
the model's device (:class:`~geoct.predict.device_blend.InputNormaliser`). Host
memory is about ``bands x 2 piece rows x width`` values (plus ``lookahead`` rows),
whatever the scene height.
"""

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import rasterio
from rasterio.windows import Window

from ..raster_io import warp_to_grid
from .reader import SceneReader, _pad
from .windows import WindowGrid

#: Reader threads when none is given: one per core, at most this many.
MAX_READ_THREADS = 8

#: A piece spans at least this many rows (whole source block rows).
MIN_PIECE_ROWS = 256

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
    kept, so host memory is the pieces alone.

    Attributes:
        index: Window row index.
        top: First row in scene pixels (may be negative: reflect padding).
    """

    def __init__(self, index: int, top: int, pieces: list["_Piece"], reader: "StripReader"):
        """Hold the pieces of window row *index*."""
        self.index = index
        self.top = top
        self._pieces = pieces
        self._reader = reader

    def window(self, col: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Return ``(image, valid, height)`` of the window starting at scene column *col*.

        ``image`` is ``(C_optical, rows, width)`` raw values, ``valid`` the boolean
        mask and ``height`` the float32 height band (or ``None``); new arrays,
        except that an all-valid mask is shared and read-only.
        """
        reader = self._reader
        grid = reader.grid
        rows = grid.window[0]
        a, b = max(self.top, 0), min(self.top + rows, grid.height)
        c0, c1 = max(col, 0), min(col + width, grid.width)
        image = np.empty((len(reader.reader.indexes), b - a, c1 - c0), dtype=reader.dtype)
        valid = None if reader.all_valid else np.empty((b - a, c1 - c0), dtype=bool)
        height = None
        if reader.reader.dsm is not None:
            height = np.empty((b - a, c1 - c0), dtype=np.float32)
        for piece in self._pieces:
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
            dst = (slice(r0 - a, r1 - a), slice(q0 - c0, q1 - c0))
            image[(slice(None), *dst)] = data[(slice(None), *src)]
            if valid is not None:
                valid[dst] = mask[src]
            if height is not None:
                height[dst] = heights[src]
        pads = ((a - self.top, self.top + rows - b), (c0 - col, col + width - c1))
        image = _pad(image, pads)
        valid = reader.ones(rows, width) if valid is None else _pad(valid, pads)
        return image, valid, None if height is None else _pad(height, pads)


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
    """One block-aligned rectangle of the scene, read by one thread."""

    __slots__ = ("done", "result", "window")

    def __init__(self, window: Window) -> None:
        self.window = window
        self.result: tuple | BaseException | None = None
        self.done = False


class StripReader:
    """Yields the :class:`Strip` of each window row of a scene, reading each pixel once.

    Use as a context manager, iterate once, from one thread; reading runs in the
    reader threads.
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
            lookahead: Rows read ahead of the strip being assembled, so that
                readers work while the strip's windows are batched (host memory
                grows by ``lookahead x width x bands`` bytes).
        """
        self.reader = reader
        self.grid = grid
        self.threads = threads or read_threads()
        self.lock = lock or nullcontext
        self.timer = timer
        self.lookahead = lookahead
        self.all_valid = reader.mask_mode == "none" and reader.dsm is None
        height, width = grid.height, grid.width
        block_rows, block_cols = reader.src.block_shapes[0]
        self.group_rows = block_rows * max(1, -(-MIN_PIECE_ROWS // block_rows))
        self.groups = -(-height // self.group_rows)
        if block_cols >= width:
            edges = [0, width]
        else:
            blocks = -(-width // block_cols)
            per_piece = -(-blocks // self.threads) * block_cols
            edges = [*range(0, width, per_piece), width]
        self.col_edges = edges
        dtype = np.dtype(reader.src.dtypes[reader.indexes[0] - 1])
        self.dtype = dtype if dtype.name in DEVICE_DTYPES else np.dtype("float32")
        self._pieces: dict[int, list[_Piece]] = {}
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

    def _start(self) -> None:
        for n in range(self.threads):
            worker = threading.Thread(target=self._work, name=f"reader-{n}", daemon=True)
            worker.start()
            self._workers.append(worker)

    def _work(self) -> None:
        """Reader thread: open own handles, then read queued pieces until told to stop."""
        src = dsm = error = None
        try:
            src = rasterio.open(self.reader.path)
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
                if src is not None:
                    src.close()
                _close_dsm(dsm)

    def _read(self, piece: _Piece, src, dsm, error: BaseException | None) -> None:
        start = time.perf_counter()
        try:
            if error is not None:
                raise error
            with self.lock():
                result = self.reader._read_raw(piece.window, src, dsm)
            if self.all_valid:
                result = (result[0], None, None)
        except BaseException as e:
            result = e
        if self.timer is not None:
            self.timer("read", time.perf_counter() - start)
        with self._cond:
            piece.result, piece.done = result, True
            self._cond.notify_all()

    def _submit_until(self, row: int) -> None:
        """Queue the pieces of every row group starting above *row*."""
        while self._submitted < self.groups and self._submitted * self.group_rows < row:
            g = self._submitted
            r0 = g * self.group_rows
            r1 = min(r0 + self.group_rows, self.grid.height)
            pieces = [
                _Piece(Window(c0, r0, c1 - c0, r1 - r0))
                for c0, c1 in zip(self.col_edges[:-1], self.col_edges[1:], strict=True)
            ]
            self._pieces[g] = pieces
            for piece in pieces:
                self._tasks.put(piece)
            self._submitted += 1

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
        """Yield the strips in window-row order, each once its pieces are read."""
        grid = self.grid
        wh = grid.window[0]
        self._start()
        rows = grid.rows
        for i, top in enumerate(rows):
            a, b = max(top, 0), min(top + wh, grid.height)
            self._submit_until(b + self.lookahead)
            pieces = [
                piece
                for g in range(a // self.group_rows, (b - 1) // self.group_rows + 1)
                for piece in self._pieces[g]
            ]
            for piece in pieces:
                self._wait(piece)
            yield Strip(i, top, pieces, self)
            keep_from = max(rows[i + 1], 0) if i + 1 < len(rows) else grid.height
            for g in [g for g in self._pieces if (g + 1) * self.group_rows <= keep_from]:
                del self._pieces[g]

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
