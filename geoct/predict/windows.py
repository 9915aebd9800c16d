"""Window grid and blending weights for sliding-window prediction.

Windows are laid out on one grid per axis: the first starts ``margin = overlap // 2``
pixels before the scene, consecutive windows are ``window - overlap`` apart and the
last ends ``margin`` pixels after the scene. The margin is filled by reflect padding,
so scene edge pixels are predicted with context rather than at a window border. A
scene (axis) smaller than one window gets a single window.

Each window's logits are weighted by a separable Hann (raised cosine) window,
floored at :data:`WEIGHT_FLOOR` so that no pixel gets zero weight, and the weighted
sum is divided by the sum of weights, so every pixel's weights sum to one.
"""

from dataclasses import dataclass

import numpy as np

#: Smallest blending weight, relative to the window centre's weight of one.
WEIGHT_FLOOR = 1e-3


def window_offsets(length: int, window: int, overlap: int) -> list[int]:
    """Return window start offsets along one axis of a scene.

    Args:
        length: Scene size along the axis, in pixels.
        window: Window size, in pixels.
        overlap: Overlap of neighbouring windows, in pixels (``0 <= overlap < window``).

    Returns:
        Increasing offsets; the first may be negative and the last window may
        extend past *length* (that part is padded).
    """
    if not 0 <= overlap < window:
        raise ValueError("overlap must be at least 0 and smaller than the window")
    margin = overlap // 2
    start, stop = -margin, length + margin - window
    if stop <= start:
        return [start]
    return [*range(start, stop, window - overlap), stop]


def hann_1d(size: int) -> np.ndarray:
    """Return a symmetric raised-cosine window of *size* samples, floored at :data:`WEIGHT_FLOOR`.

    Args:
        size: Number of samples.

    Returns:
        float32 weights in ``[WEIGHT_FLOOR, 1]``.
    """
    centres = (np.arange(size, dtype=np.float64) + 0.5) / size
    return np.maximum(np.sin(np.pi * centres) ** 2, WEIGHT_FLOOR).astype(np.float32)


def hann_2d(height: int, width: int) -> np.ndarray:
    """Return the separable 2-D blending weights of a window.

    Args:
        height: Window height.
        width: Window width.

    Returns:
        float32 array of shape ``(height, width)``.
    """
    return np.outer(hann_1d(height), hann_1d(width))


@dataclass(frozen=True)
class WindowGrid:
    """Sliding-window layout over a scene, in scene pixels.

    Attributes:
        height: Scene height.
        width: Scene width.
        window: Window size ``(rows, cols)`` in scene pixels.
        overlap: Overlap ``(rows, cols)`` in scene pixels.
        row_offsets: Explicit window row offsets (a part of a larger grid, see
            :meth:`part`), or ``None`` for the scene's own layout.
        col_offsets: Explicit window column offsets, likewise.
    """

    height: int
    width: int
    window: tuple[int, int]
    overlap: tuple[int, int]
    row_offsets: tuple[int, ...] | None = None
    col_offsets: tuple[int, ...] | None = None

    @property
    def rows(self) -> list[int]:
        """Row offsets of the window rows."""
        if self.row_offsets is not None:
            return list(self.row_offsets)
        return window_offsets(self.height, self.window[0], self.overlap[0])

    @property
    def cols(self) -> list[int]:
        """Column offsets of the windows in each row."""
        if self.col_offsets is not None:
            return list(self.col_offsets)
        return window_offsets(self.width, self.window[1], self.overlap[1])

    def part(
        self, row: int, col: int, height: int, width: int
    ) -> tuple[tuple[int, int], "WindowGrid"]:
        """Return the windows of this grid that touch a region, as a grid of their own.

        The returned grid covers the *context* of the region: the rows and columns
        of this grid's scene that those windows span (clipped to the scene, so
        windows keep their reflect padding only at the scene's own edges), with
        offsets relative to the context's origin. Blending it gives every pixel
        of the region exactly the windows, weights and summation order that
        blending the whole grid gives it.

        Args:
            row: Top row of the region in scene pixels.
            col: Left column of the region.
            height: Region rows.
            width: Region columns.

        Returns:
            The context's origin ``(row, col)`` in scene pixels, and its grid.
        """
        wh, ww = self.window
        rows = [r for r in self.rows if r < row + height and r + wh > row]
        cols = [c for c in self.cols if c < col + width and c + ww > col]
        top, left = max(rows[0], 0), max(cols[0], 0)
        bottom, right = min(rows[-1] + wh, self.height), min(cols[-1] + ww, self.width)
        grid = WindowGrid(
            bottom - top,
            right - left,
            self.window,
            self.overlap,
            tuple(r - top for r in rows),
            tuple(c - left for c in cols),
        )
        return (top, left), grid

    def __len__(self) -> int:
        """Return the number of windows."""
        return len(self.rows) * len(self.cols)
