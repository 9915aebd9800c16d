import numpy as np
import pytest

from geoct.predict.accumulator import StreamingBlender
from geoct.predict.windows import WindowGrid, hann_2d


def naive_blend(grid: WindowGrid, logits: list[np.ndarray], valid: list[np.ndarray]):
    """Whole-scene reference: pad, accumulate every window, crop."""
    wh, ww = grid.window
    pad = max(wh, ww) * 2
    k = logits[0].shape[0]
    sums = np.zeros((k, grid.height + 2 * pad, grid.width + 2 * pad), np.float64)
    weights = np.zeros(sums.shape[1:], np.float64)
    it = iter(zip(logits, valid, strict=True))
    for r in grid.rows:
        for c in grid.cols:
            lg, v = next(it)
            w = hann_2d(wh, ww) * v
            sl = (slice(r + pad, r + pad + wh), slice(c + pad, c + pad + ww))
            sums[(slice(None), *sl)] += lg * w
            weights[sl] += w
    crop = (slice(pad, pad + grid.height), slice(pad, pad + grid.width))
    return sums[(slice(None), *crop)], weights[crop]


@pytest.mark.parametrize(
    "shape, window, overlap",
    [
        ((217, 300), (64, 64), (16, 16)),
        ((50, 40), (64, 64), (16, 16)),
        ((90, 70), (20, 24), (15, 7)),
    ],
)
def test_streaming_equals_whole_scene_blend(shape, window, overlap) -> None:
    grid = WindowGrid(*shape, window, overlap)
    rng = np.random.default_rng(0)
    logits = [rng.standard_normal((3, *window), dtype=np.float32) for _ in range(len(grid))]
    valid = [rng.random(window) > 0.1 for _ in range(len(grid))]
    sums = np.zeros((3, *shape), np.float32)
    weights = np.full(shape, -1.0, np.float32)

    def sink(row: int, col: int, s: np.ndarray, w: np.ndarray) -> None:
        assert (weights[row : row + w.shape[0], col : col + w.shape[1]] == -1).all()
        sums[:, row : row + w.shape[0], col : col + w.shape[1]] = s
        weights[row : row + w.shape[0], col : col + w.shape[1]] = w

    blender = StreamingBlender(grid, 3, sink)
    for lg, v in zip(logits, valid, strict=True):
        blender.push(lg, v)
    blender.close()
    assert blender.done
    ref_sums, ref_weights = naive_blend(grid, logits, valid)
    np.testing.assert_allclose(weights, ref_weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-4, atol=1e-4)


def test_skipped_windows_leave_zero_weight() -> None:
    grid = WindowGrid(40, 40, (16, 16), (4, 4))
    weights = np.full((40, 40), -1.0, np.float32)

    def sink(row: int, col: int, s: np.ndarray, w: np.ndarray) -> None:
        weights[row : row + w.shape[0], col : col + w.shape[1]] = w

    blender = StreamingBlender(grid, 2, sink)
    for _ in range(len(grid)):
        blender.push(None, None)
    assert (weights == 0).all()
