"""Streaming blend of overlapping window logits on the model's device, in bounded memory.

Windows arrive in raster order (window rows top to bottom, windows left to right).
While a window row is processed, a column-sliding buffer of torch tensors on the
model's device holds the weighted logit sums and weight sums of the rows that row
touches, for at most ``chunk + window`` columns. Once ``chunk`` columns are complete
for this window row (no later window of the row touches them), or the row ends,
they are handed on: their rows above the next window row are final and go to a
sink, still on the device; the rows below (touched again by the next window row)
are the *carry*, kept for the next window row. The default chunk covers the whole
scene width, so a row band is finalised at once and the carry stays where it is in
the buffer; a scene wider than the device budget (:data:`BUFFER_BYTES`) is tiled by
columns, and its carry (``overlap`` rows x scene width) is kept on the device when
it fits :data:`CARRY_BYTES`, else spilled to a scratch file (page cache or disk,
not the process). The next window row's windows add their products to the carried
sums as they reach each column, writing the result to the band's top rows, so the
carry is never copied back in.

Every pixel accumulates its windows in the same order (raster order) with the same
float32 operations (``logits * (hann * valid)`` then ``+=``) whatever the chunking
and the device, so on CPU the sums are bit for bit those of a NumPy blend. A pixel's
first window writes its product instead of adding it to zero (the same value), and
on CPU the operations run over chunks of rows (:data:`CHUNK_BYTES`) whose product
stays in the core's cache: the blend is bound by memory traffic there.
"""

import os
import tempfile
from collections.abc import Callable

import numpy as np
import torch

from .windows import WindowGrid, hann_2d

#: ``sink(row, col, sums, weights)`` receives final blocks on the blender's device:
#: ``sums`` is ``(K, h, w)`` weighted logit sums and ``weights`` the ``(h, w)`` weight
#: sums (zero = no data), or ``None`` for a blender without weight sums. Both are views
#: of the blender's buffer, valid during the call.
BlockSink = Callable[[int, int, torch.Tensor, torch.Tensor | None], None]

#: Largest blending buffer, in bytes, per device type; wider row bands are tiled by columns.
#: A 20480 px row band of six classes (252 MB) fits, and its carry is not copied: tiling
#: moves the carry out and the overlapping columns along, which on CPU made an 8192 px
#: scene 1.4x and a 20480 px one 1.38x slower (at 64 MB).
BUFFER_BYTES = {"cuda": 256 << 20, "cpu": 256 << 20}

#: Logit bytes blended per operation, per device type: on CPU a chunk of a window's rows
#: whose product stays in the core's cache; on CUDA the whole window.
CHUNK_BYTES = {"cuda": 1 << 62, "cpu": 1 << 20}

#: Largest carry kept on the device, in bytes, per device type; a larger one goes to a file.
CARRY_BYTES = {"cuda": 512 << 20, "cpu": 32 << 20}


class DeviceCarry:
    """Carry rows of a whole window row as one tensor on the blender's device."""

    def __init__(self, channels: int, max_rows: int, width: int, device: torch.device) -> None:
        """Allocate the carry.

        Args:
            channels: Values per pixel (classes, plus one weight if accumulated).
            max_rows: Largest carry height.
            width: Scene width.
            device: Where the tensor lives.
        """
        self.data = torch.empty((channels, max_rows, width), dtype=torch.float32, device=device)

    def write(self, col: int, data: torch.Tensor) -> None:
        """Store ``(channels, rows, cols)`` *data* for columns starting at *col*."""
        self.data[:, : data.shape[1], col : col + data.shape[2]] = data

    def read(self, col: int, rows: int, cols: int) -> torch.Tensor:
        """Return ``(channels, rows, cols)`` values stored for columns starting at *col*."""
        return self.data[:, :rows, col : col + cols]

    def close(self) -> None:
        """Release the tensor."""
        self.data = torch.empty(0)


class CarryStore:
    """Scratch file holding the carry rows of a window row, column by column.

    Used when the carry does not fit the device budget; each write and read is a
    copy between the device and the host.
    """

    def __init__(self, channels: int, max_rows: int, width: int, device: torch.device) -> None:
        """Create an anonymous scratch file.

        Args:
            channels: Values per pixel (classes, plus one weight if accumulated).
            max_rows: Largest carry height.
            width: Scene width.
            device: Where read values are returned.
        """
        self.record = (channels, max_rows)
        self.device = device
        self.file = tempfile.TemporaryFile(prefix="geoct-carry-")  # noqa: SIM115

    def write(self, col: int, data: torch.Tensor) -> None:
        """Store ``(channels, rows, cols)`` *data* for columns starting at *col*."""
        channels, max_rows = self.record
        records = np.empty((data.shape[2], channels, max_rows), dtype=np.float32)
        records[:, :, : data.shape[1]] = data.cpu().numpy().transpose(2, 0, 1)
        os.pwrite(self.file.fileno(), records, col * channels * max_rows * 4)

    def read(self, col: int, rows: int, cols: int) -> torch.Tensor:
        """Return ``(channels, rows, cols)`` values stored for columns starting at *col*."""
        channels, max_rows = self.record
        records = np.empty((cols, channels, max_rows), dtype=np.float32)
        view = memoryview(records).cast("B")
        n = os.preadv(self.file.fileno(), [view], col * channels * max_rows * 4)
        if n != view.nbytes:
            raise OSError("short read from the carry scratch file")
        planar = np.ascontiguousarray(records[:, :, :rows].transpose(1, 2, 0))
        return torch.from_numpy(planar).to(self.device)

    def close(self) -> None:
        """Delete the scratch file."""
        self.file.close()


def _final_bounds(offsets: list[int], length: int) -> list[int]:
    """Boundaries between the pixels finalised after each window along one axis."""
    return [0, *(min(max(o, 0), length) for o in offsets[1:]), length]


def chunk_columns(grid: WindowGrid, channels: int, budget: int) -> int:
    """Columns finalised at once so that the blending buffer fits *budget* bytes.

    Args:
        grid: The window layout.
        channels: Values per pixel (classes, plus one weight if accumulated).
        budget: Buffer size limit in bytes.

    Returns:
        The chunk width: the scene width when a whole row band fits, else at least
        one window stride.
    """
    wh, ww = grid.window
    fit = budget // (channels * wh * 4) - ww
    stride = max(ww - grid.overlap[1], 1)
    return grid.width if fit >= grid.width else max(fit, stride)


class StreamingBlender:
    """Blends window logits arriving in raster order and emits final blocks to a sink."""

    def __init__(
        self,
        grid: WindowGrid,
        num_classes: int,
        sink: BlockSink,
        device: torch.device | str = "cpu",
        buffer_bytes: int | None = None,
        carry_bytes: int | None = None,
        weights: bool = True,
    ) -> None:
        """Initialise a blender for one scene.

        Args:
            grid: The window layout.
            num_classes: Number of logit channels.
            sink: Receives final blocks in raster order of window rows.
            device: Where the buffers live and blending runs (the model's device).
            buffer_bytes: Blending buffer budget (default :data:`BUFFER_BYTES`).
            carry_bytes: Budget of the carry on the device (default :data:`CARRY_BYTES`).
            weights: Accumulate weight sums. Without them the buffer holds one plane
                less and the sink gets ``None``: for windows that are valid everywhere,
                whose every pixel has a positive weight sum (the Hann weights are
                floored above zero), when only the classes are wanted. Masked windows
                are then refused.
        """
        self.grid = grid
        self.k = num_classes
        self.sink = sink
        self.device = torch.device(device)
        kind = "cuda" if self.device.type == "cuda" else "cpu"
        self.rows, self.cols = grid.rows, grid.cols
        self.row_bounds = _final_bounds(self.rows, grid.height)
        self.col_bounds = _final_bounds(self.cols, grid.width)
        self.weight = torch.from_numpy(hann_2d(*grid.window)).to(self.device)
        wh, ww = grid.window
        #: Whether weight sums are accumulated (as the buffer's last plane).
        self.weights = weights
        channels = self.k + int(weights)
        budget = BUFFER_BYTES[kind] if buffer_bytes is None else buffer_bytes
        self.chunk = chunk_columns(grid, channels, budget)
        #: Logit bytes blended per operation (see :data:`CHUNK_BYTES`).
        self.chunk_bytes = CHUNK_BYTES[kind]
        width = min(self.chunk + ww, grid.width)
        self.buffer = torch.zeros((channels, wh, width), dtype=torch.float32, device=self.device)
        self._product = torch.empty((self.k, wh, ww), dtype=torch.float32, device=self.device)
        self._weight = torch.empty((wh, ww), dtype=torch.float32, device=self.device)
        carries = [self._band(i)[1] - self.row_bounds[i + 1] for i in range(len(self.rows))]
        max_carry = max(0, *carries)
        carry_budget = CARRY_BYTES[kind] if carry_bytes is None else carry_bytes
        #: Whether the buffer spans the scene width, so the carry moves up inside it.
        self.carry_in_buffer = self.chunk >= grid.width
        store = DeviceCarry if channels * max_carry * grid.width * 4 <= carry_budget else CarryStore
        own_store = max_carry and not self.carry_in_buffer
        self.store = store(channels, max_carry, grid.width, self.device) if own_store else None
        self._i, self._j = 0, 0
        self._origin = 0
        self._filled = 0
        self._carry_rows = 0
        #: Buffer row of the carry's first row while it stays where its window row left it.
        self._carry_row = 0

    def _band(self, i: int) -> tuple[int, int]:
        """Scene rows touched while window row *i* is processed."""
        return self.row_bounds[i], min(self.rows[i] + self.grid.window[0], self.grid.height)

    def push(
        self,
        logits: torch.Tensor | np.ndarray | None,
        valid: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        """Add the next window in raster order.

        Args:
            logits: ``(K, wh, ww)`` float32 logits, or ``None`` for a skipped window.
            valid: ``(wh, ww)`` boolean validity mask of the window, or ``None`` when
                every pixel is valid (ignored for a skipped window).
        """
        i, j = self._i, self._j
        top, bottom = self._band(i)
        right = min(self.cols[j] + self.grid.window[1], self.grid.width)
        first = self._filled
        self._extend(right, bottom - top, zero=logits is None)
        if logits is not None:
            self._add(self._tensor(logits), self._tensor(valid), top, bottom, first, right)
        last = j == len(self.cols) - 1
        if last or self.col_bounds[j + 1] - self._origin >= self.chunk:
            self._finalise_columns(j, top, bottom)
        self._j += 1
        if last:
            self._carry_rows = bottom - self.row_bounds[i + 1]
            self._i, self._j = i + 1, 0
            self._origin = self._filled = 0

    def _tensor(self, array: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
        if array is None or isinstance(array, torch.Tensor):
            return array
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def _extend(self, right: int, band_height: int, zero: bool) -> None:
        """Take buffer columns up to *right*; for a skipped window, its carry rows and zeros below.

        A window that is not skipped adds the carry rows of its new columns as it
        blends them (:meth:`_add`).
        """
        if right <= self._filled:
            return
        lo, hi = self._filled - self._origin, right - self._origin
        if zero:
            carry = self._carry_rows
            if carry and not (self.carry_in_buffer and self._carry_row == 0):
                source = self._carry_source(self._filled, right - self._filled)
                self.buffer[:, :carry, lo:hi] = source
            self.buffer[:, carry:band_height, lo:hi] = 0.0
        self._filled = right

    def _carry_source(self, col: int, cols: int) -> torch.Tensor:
        """The carry rows of *cols* columns from scene column *col* on, where they are kept."""
        if not self.carry_in_buffer:
            return self.store.read(col, self._carry_rows, cols)
        rows = slice(self._carry_row, self._carry_row + self._carry_rows)
        return self.buffer[:, rows, col - self._origin : col - self._origin + cols]

    def _add(
        self,
        logits: torch.Tensor,
        valid: torch.Tensor | None,
        top: int,
        bottom: int,
        first: int,
        right: int,
    ) -> None:
        """Accumulate a window; columns from *first* on are new to the window row.

        Below the carry rows, new pixels get ``logits * weight`` and ``weight``
        directly (the sum ``0 + x`` it replaces is ``x``); in the carry rows they get
        the carried sums plus those, written in place of the carry's old copy; the
        pixels an earlier window of the row touched add them.
        """
        row, col = self.rows[self._i], self.cols[self._j]
        left = max(col, 0)
        rows, cols = slice(top - row, bottom - row), slice(left - col, right - col)
        weight = self.weight[rows, cols]
        if valid is not None:
            if not self.weights:
                raise ValueError("a masked window needs a blender with weight sums")
            h, w = bottom - top, right - left
            weight = torch.mul(weight, valid[rows, cols], out=self._weight[:h, :w])
        logits = logits[:, rows, cols]
        carry, own = self._carry_rows, first - left
        for r0, r1 in self._row_chunks(0, carry, own):
            self._accumulate(logits[:, r0:r1, :own], weight[r0:r1, :own], r0, left)
        if carry and right > first:
            source = self._carry_source(first, right - first)
            for r0, r1 in self._row_chunks(0, carry, right - first):
                part = (slice(None), slice(r0, r1), slice(own, None))
                self._accumulate(logits[part], weight[part[1:]], r0, first, source[:, r0:r1])
        for r0, r1 in self._row_chunks(carry, bottom - top, own):
            self._accumulate(logits[:, r0:r1, :own], weight[r0:r1, :own], r0, left)
        cols = slice(first - self._origin, right - self._origin)
        for r0, r1 in self._row_chunks(carry, bottom - top, right - first):
            torch.mul(
                logits[:, r0:r1, own:], weight[r0:r1, own:], out=self.buffer[: self.k, r0:r1, cols]
            )
            if self.weights:
                self.buffer[self.k, r0:r1, cols] = weight[r0:r1, own:]

    def _row_chunks(self, start: int, stop: int, width: int) -> list[tuple[int, int]]:
        """Split rows ``start:stop`` of a *width*-wide region into chunks of :attr:`chunk_bytes`."""
        if stop <= start or width <= 0:
            return []
        step = max(1, self.chunk_bytes // (self.k * width * 4))
        return [(r, min(r + step, stop)) for r in range(start, stop, step)]

    def _accumulate(
        self,
        logits: torch.Tensor,
        weight: torch.Tensor,
        row: int,
        col: int,
        onto: torch.Tensor | None = None,
    ) -> None:
        """Add ``logits * weight`` (and ``weight``) at band row *row*, scene column *col*.

        They are added to the buffer's values there, or to *onto* (``(channels, h,
        w)`` carried sums) with the result written there.
        """
        h, w = weight.shape
        product = torch.mul(logits, weight, out=self._product[:, :h, :w])
        dst = (slice(row, row + h), slice(col - self._origin, col - self._origin + w))
        sums = self.buffer[(slice(0, self.k), *dst)]
        torch.add(sums if onto is None else onto[: self.k], product, out=sums)
        if self.weights:
            weights = self.buffer[(self.k, *dst)]
            torch.add(weights if onto is None else onto[self.k], weight, out=weights)

    def _finalise_columns(self, j: int, top: int, bottom: int) -> None:
        """Hand on the columns complete after window *j*: final rows to the sink, the rest to the carry."""
        c0, c1 = self._origin, self.col_bounds[j + 1]
        split = self.row_bounds[self._i + 1]
        hi = c1 - c0
        if c1 > c0 and split > top:
            block = self.buffer[:, : split - top, :hi]
            self.sink(top, c0, block[: self.k], block[self.k] if self.weights else None)
        if c1 > c0 and bottom > split:
            carry = self.buffer[:, split - top : bottom - top, :hi]
            if not self.carry_in_buffer:
                self.store.write(c0, carry)
            elif split - top < bottom - split:
                self.buffer[:, : bottom - split, :hi] = carry.clone()
                self._carry_row = 0
            else:
                self._carry_row = split - top
        keep = self._filled - c1
        if keep > 0 and hi > 0:
            self.buffer[:, :, :keep] = self.buffer[:, :, hi : hi + keep].clone()
        self._origin = c1

    @property
    def done(self) -> bool:
        """Whether every window has been pushed."""
        return self._i == len(self.rows)

    def close(self) -> None:
        """Release the carry and the buffer."""
        if self.store is not None:
            self.store.close()
        self.buffer = torch.empty(0)
