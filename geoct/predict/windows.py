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
    """

    height: int
    width: int
    window: tuple[int, int]
    overlap: tuple[int, int]

    @property
    def rows(self) -> list[int]:
        """Row offsets of the window rows."""
        return window_offsets(self.height, self.window[0], self.overlap[0])

    @property
    def cols(self) -> list[int]:
        """Column offsets of the windows in each row."""
        return window_offsets(self.width, self.window[1], self.overlap[1])

    def __len__(self) -> int:
        """Return the number of windows."""
        return len(self.rows) * len(self.cols)
