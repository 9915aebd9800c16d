import itertools

import numpy as np
import pytest

from geoct.predict.windows import WEIGHT_FLOOR, WindowGrid, hann_1d, hann_2d, window_offsets


@pytest.mark.parametrize(
    "length, window, overlap",
    [(300, 64, 16), (217, 64, 0), (10, 64, 16), (64, 64, 16), (65, 64, 63), (1, 8, 2)],
)
def test_offsets_cover_scene_with_margin(length: int, window: int, overlap: int) -> None:
    offsets = window_offsets(length, window, overlap)
    margin = overlap // 2
    assert offsets[0] == -margin
    assert offsets == sorted(set(offsets))
    assert offsets[-1] + window >= length + margin
    assert all(b - a <= window - overlap for a, b in itertools.pairwise(offsets))


def test_offsets_reject_bad_overlap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        window_offsets(100, 32, 32)


def test_hann_is_symmetric_positive_and_peaks_in_the_centre() -> None:
    w = hann_1d(64)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, w[::-1])
    assert w.min() >= WEIGHT_FLOOR
    assert w.argmax() in (31, 32)
    assert hann_2d(5, 7).shape == (5, 7)


def test_grid_length() -> None:
    grid = WindowGrid(217, 300, (64, 64), (16, 16))
    assert len(grid) == len(grid.rows) * len(grid.cols)
