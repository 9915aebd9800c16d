import numpy as np
import pytest
import torch

from geoct.predict.accumulator import StreamingBlender
from geoct.predict.windows import WindowGrid, hann_2d


def naive_blend(grid: WindowGrid, windows: list, dtype: type = np.float64):
    """Whole-scene reference: pad, accumulate ``logits * w`` window by window from zero, crop.

    *windows* holds ``(logits, valid)`` in raster order, ``logits`` ``None`` for a
    skipped window; in float32 the sums are those of a raster-order float32 blend.
    """
    wh, ww = grid.window
    pad = max(wh, ww) * 2
    k = next(lg for lg, _ in windows if lg is not None).shape[0]
    sums = np.zeros((k, grid.height + 2 * pad, grid.width + 2 * pad), dtype)
    weights = np.zeros(sums.shape[1:], dtype)
    it = iter(windows)
    for r in grid.rows:
        for c in grid.cols:
            lg, v = next(it)
            if lg is None:
                continue
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
    ref_sums, ref_weights = naive_blend(grid, list(zip(logits, valid, strict=True)))
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


@pytest.mark.parametrize(
    "window, overlap",
    [
        ((40, 48), (12, 16)),  # the carry is shorter than the rows finished per window row
        ((40, 48), (30, 16)),  # the carry is longer: it moves up in the buffer
    ],
)
@pytest.mark.parametrize(
    "budgets",
    [
        {},  # a whole row band fits: the carry stays in the buffer
        {"buffer_bytes": 5 * 40 * 100 * 4},  # tiled by columns, the carry on the device
        {"buffer_bytes": 5 * 40 * 100 * 4, "carry_bytes": 0},  # the carry in a file
    ],
)
def test_carried_sums_equal_float32_raster_order_blend(window, overlap, budgets) -> None:
    """Bit for bit, with skipped windows between blended ones."""
    grid = WindowGrid(150, 230, window, overlap)
    rng = np.random.default_rng(5)
    windows = []
    for n in range(len(grid)):
        skipped = n % 7 == 3
        lg = None if skipped else rng.standard_normal((4, *window), dtype=np.float32)
        windows.append((lg, rng.random(window) > 0.2))
    sums = np.full((4, 150, 230), np.nan, np.float32)
    weights = np.full((150, 230), np.nan, np.float32)

    def sink(row: int, col: int, s: torch.Tensor, w: torch.Tensor) -> None:
        assert np.isnan(weights[row : row + w.shape[0], col : col + w.shape[1]]).all()
        sums[:, row : row + s.shape[1], col : col + s.shape[2]] = s.numpy()
        weights[row : row + w.shape[0], col : col + w.shape[1]] = w.numpy()

    blender = StreamingBlender(grid, 4, sink, **budgets)
    for lg, v in windows:
        blender.push(lg, v)
    assert blender.done
    blender.close()
    ref_sums, ref_weights = naive_blend(grid, windows, np.float32)
    np.testing.assert_array_equal(sums, ref_sums)
    np.testing.assert_array_equal(weights, ref_weights)
