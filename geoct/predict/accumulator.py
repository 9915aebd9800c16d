"""Streaming blend of overlapping window logits with memory independent of the scene size.

Windows arrive in raster order (window rows top to bottom, windows left to right).
While a window row is processed, a column-sliding buffer holds the weighted logit
sums and weight sums of the rows that row touches, for at most two windows' width.
Columns left of the next window's start are complete for this window row: their
rows above the next window row are final and are handed to a sink; the rows below
(touched again by the next window row) are the *carry*, spilled to a scratch file
and read back while the next window row passes. So memory is bounded by
``(K + 1) x window x 2 windows`` floats whatever the scene size; only the scratch
file (carry rows x scene width) grows with the scene, and it lives in the page
cache or on disk, not in the process.
"""

import os
import tempfile
from collections.abc import Callable

import numpy as np

from .windows import WindowGrid, hann_2d

#: ``sink(row, col, sums, weights)`` receives final blocks: ``sums`` is ``(K, h, w)``
#: weighted logit sums and ``weights`` the ``(h, w)`` weight sums (zero = no data).
BlockSink = Callable[[int, int, np.ndarray, np.ndarray], None]


class CarryStore:
    """Scratch file holding the not yet final rows of a window row, column by column."""

    def __init__(self, channels: int, max_rows: int, width: int) -> None:
        """Create an anonymous scratch file.

        Args:
            channels: Values per pixel (classes plus one weight).
            max_rows: Largest carry height.
            width: Scene width.
        """
        self.record = (channels, max_rows)
        self.file = tempfile.TemporaryFile(prefix="geoct-carry-") if max_rows else None  # noqa: SIM115

    def write(self, col: int, data: np.ndarray) -> None:
        """Store ``(channels, rows, cols)`` *data* for columns starting at *col*."""
        if self.file is None or data.shape[1] == 0:
            return
        channels, max_rows = self.record
        records = np.zeros((data.shape[2], channels, max_rows), dtype=np.float32)
        records[:, :, : data.shape[1]] = data.transpose(2, 0, 1)
        os.pwrite(self.file.fileno(), records, col * channels * max_rows * 4)

    def read(self, col: int, rows: int, cols: int) -> np.ndarray:
        """Return ``(channels, rows, cols)`` values stored for columns starting at *col*."""
        channels, max_rows = self.record
        records = np.empty((cols, channels, max_rows), dtype=np.float32)
        view = memoryview(records).cast("B")
        n = os.preadv(self.file.fileno(), [view], col * channels * max_rows * 4)
        if n != view.nbytes:
            raise OSError("short read from the carry scratch file")
        return records[:, :, :rows].transpose(1, 2, 0)

    def close(self) -> None:
        """Delete the scratch file."""
        if self.file is not None:
            self.file.close()


def _final_bounds(offsets: list[int], length: int) -> list[int]:
    """Boundaries between the pixels finalised after each window along one axis."""
    return [0, *(min(max(o, 0), length) for o in offsets[1:]), length]


class StreamingBlender:
    """Blends window logits arriving in raster order and emits final blocks to a sink."""

    def __init__(self, grid: WindowGrid, num_classes: int, sink: BlockSink) -> None:
        """Initialise a blender for one scene.

        Args:
            grid: The window layout.
            num_classes: Number of logit channels.
            sink: Receives final blocks in raster order of window rows.
        """
        self.grid = grid
        self.k = num_classes
        self.sink = sink
        self.rows, self.cols = grid.rows, grid.cols
        self.row_bounds = _final_bounds(self.rows, grid.height)
        self.col_bounds = _final_bounds(self.cols, grid.width)
        self.weight = hann_2d(*grid.window)
        wh, ww = grid.window
        carries = [self._band(i)[1] - self.row_bounds[i + 1] for i in range(len(self.rows))]
        self.store = CarryStore(self.k + 1, max(0, *carries), grid.width)
        self.buffer = np.zeros((self.k + 1, wh, 2 * ww), dtype=np.float32)
        self.scratch = np.empty((self.k, wh, ww), dtype=np.float32)
        self._i, self._j = 0, 0
        self._origin = 0
        self._filled = 0
        self._carry_rows = 0

    def _band(self, i: int) -> tuple[int, int]:
        """Scene rows touched while window row *i* is processed."""
        return self.row_bounds[i], min(self.rows[i] + self.grid.window[0], self.grid.height)

    def push(self, logits: np.ndarray | None, valid: np.ndarray | None) -> None:
        """Add the next window in raster order.

        Args:
            logits: ``(K, wh, ww)`` float32 logits, or ``None`` for a skipped window.
            valid: ``(wh, ww)`` validity mask of the window (ignored when skipped).
        """
        i, j = self._i, self._j
        top, bottom = self._band(i)
        right = min(self.cols[j] + self.grid.window[1], self.grid.width)
        self._extend(right, bottom - top)
        if logits is not None:
            self._add(logits, valid, top, bottom, right)
        self._finalise_columns(j, top, bottom)
        self._j += 1
        if self._j == len(self.cols):
            self._carry_rows = bottom - self.row_bounds[i + 1]
            self._i, self._j = i + 1, 0
            self._origin = self._filled = 0

    def _extend(self, right: int, band_height: int) -> None:
        """Initialise buffer columns up to *right*, loading the carry from the previous row."""
        if right <= self._filled:
            return
        lo, hi = self._filled - self._origin, right - self._origin
        self.buffer[:, :band_height, lo:hi] = 0.0
        if self._carry_rows:
            carry = self.store.read(self._filled, self._carry_rows, right - self._filled)
            self.buffer[:, : self._carry_rows, lo:hi] = carry
        self._filled = right

    def _add(
        self, logits: np.ndarray, valid: np.ndarray, top: int, bottom: int, right: int
    ) -> None:
        row, col = self.rows[self._i], self.cols[self._j]
        left = max(col, 0)
        win = (slice(top - row, bottom - row), slice(left - col, right - col))
        weight = self.weight[win] * valid[win]
        dst = (slice(0, bottom - top), slice(left - self._origin, right - self._origin))
        scratch = self.scratch[:, : weight.shape[0], : weight.shape[1]]
        np.multiply(logits[(slice(None), *win)], weight, out=scratch)
        self.buffer[(slice(0, self.k), *dst)] += scratch
        self.buffer[(self.k, *dst)] += weight

    def _finalise_columns(self, j: int, top: int, bottom: int) -> None:
        c0, c1 = self.col_bounds[j], self.col_bounds[j + 1]
        split = self.row_bounds[self._i + 1]
        lo, hi = c0 - self._origin, c1 - self._origin
        if c1 > c0 and split > top:
            block = self.buffer[:, : split - top, lo:hi]
            self.sink(top, c0, block[: self.k].copy(), block[self.k].copy())
        if c1 > c0 and bottom > split:
            self.store.write(c0, self.buffer[:, split - top : bottom - top, lo:hi])
        keep = self._filled - c1
        if keep > 0 and hi > 0:
            self.buffer[:, :, :keep] = self.buffer[:, :, hi : hi + keep].copy()
        self._origin = c1

    @property
    def done(self) -> bool:
        """Whether every window has been pushed."""
        return self._i == len(self.rows)

    def close(self) -> None:
        """Release the scratch file."""
        self.store.close()
