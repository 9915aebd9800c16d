"""Mode overviews built while streaming equal GDAL's, level by level, pixel for pixel."""

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from geoct.predict.engine import PredictOptions, predict_scene
from geoct.predict.overviews import ModePyramid, source_windows, window_mode
from geoct.predict.writer import CLASS_NODATA, overview_count


def gdal_mode_overviews(path: Path, classes: np.ndarray, profile: dict) -> list[np.ndarray]:
    """Write *classes* as a paletted GeoTIFF, let GDAL build its mode overviews, read them."""
    h, w = classes.shape
    factors = [2**i for i in range(1, overview_count(w, h) + 1)]
    with rasterio.open(path, "w", width=w, height=h, **profile) as dst:
        dst.write(classes, 1)
        dst.write_colormap(1, {i: (i, 2 * i, 3 * i, 255) for i in range(8)})
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews(factors, Resampling.mode)
    levels = []
    for level in range(len(factors)):
        with rasterio.open(path, OVERVIEW_LEVEL=level) as src:
            levels.append(src.read(1))
    return levels


def stream_pyramid(classes: np.ndarray, shapes: list[tuple[int, int]], seed: int) -> ModePyramid:
    levels = [np.full(shape, 77, dtype=np.uint8) for shape in shapes]

    def sink(level: np.ndarray):
        def write(row: int, rows: np.ndarray) -> None:
            assert (level[row : row + len(rows)] == 77).all(), "a row was emitted twice"
            level[row : row + len(rows)] = rows

        return write

    pyramid = ModePyramid(classes.shape, shapes, CLASS_NODATA, [sink(x) for x in levels])
    pyramid.outputs = levels
    rng, row = np.random.default_rng(seed), 0
    while row < classes.shape[0]:
        n = int(rng.choice([1, 2, 3, 17, 512, 700]))
        pyramid.push(row, classes[row : row + n])
        row += n
    return pyramid


def test_source_windows_are_gdal_s() -> None:
    start, stop = source_windows(8, 4)
    assert start.tolist() == [0, 2, 4, 6] and stop.tolist() == [2, 4, 6, 8]
    start, stop = source_windows(7, 4)  # ratio 1.75: windows overlap, up to 3 wide
    assert start.tolist() == [0, 1, 3, 5] and stop.tolist() == [2, 4, 6, 7]
    start, stop = source_windows(1, 1)
    assert start.tolist() == [0] and stop.tolist() == [1]


def test_window_mode_takes_the_value_first_to_reach_the_highest_count() -> None:
    n = CLASS_NODATA
    blocks = {
        (1, 2, 3, 4): 1,  # all different: the first
        (1, 2, 2, 1): 2,  # 2 reaches two first (third pixel), 1 only at the fourth
        (1, 2, 1, 2): 1,
        (3, 1, 2, 2): 2,
        (n, 4, 5, 5): 5,
        (n, 4, n, 6): 4,  # nodata skipped: the first valid value
        (n, n, n, n): n,
    }
    src = np.array([[a, b] for a, b, _, _ in blocks] + [[c, d] for _, _, c, d in blocks])
    src = src.astype(np.uint8).reshape(2, len(blocks), 2).transpose(1, 0, 2).reshape(-1, 2)
    modes = window_mode(src, source_windows(len(src), len(blocks)), source_windows(2, 1), n)
    assert modes[:, 0].tolist() == list(blocks.values())


@pytest.mark.parametrize("shape", [(1024, 1024), (1001, 515), (600, 601), (257, 1999), (2, 777)])
def test_streamed_pyramid_equals_gdal_mode(
    data: ModuleType, tmp_path: Path, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(shape))
    classes = rng.integers(0, 4, shape).astype(np.uint8)
    classes[rng.random(shape) < 0.15] = CLASS_NODATA
    classes[: shape[0] // 3, : shape[1] // 4] = CLASS_NODATA
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "crs": data.CRS}
    profile |= {"transform": data.TRANSFORM, "nodata": CLASS_NODATA, "tiled": True}
    expected = gdal_mode_overviews(tmp_path / "gdal.tif", classes, profile)
    assert expected, "the case needs overviews"
    pyramid = stream_pyramid(classes, [level.shape for level in expected], seed=shape[1])
    assert pyramid.complete
    for ours, gdal in zip(pyramid.outputs, expected, strict=True):
        np.testing.assert_array_equal(ours, gdal)


def test_rows_out_of_order_are_refused() -> None:
    pyramid = ModePyramid((8, 8), [(4, 4)], CLASS_NODATA, [lambda row, rows: None])
    pyramid.push(0, np.zeros((2, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="in order"):
        pyramid.push(4, np.zeros((2, 8), dtype=np.uint8))


def test_predicted_class_overviews_are_gdal_mode(data: ModuleType, tmp_path: Path) -> None:
    """Through predict_scene: an odd-sized scene with nodata; each COG overview is GDAL's mode."""
    scene = tmp_path / "scene.tif"
    truth = data.write_scene(scene, 301, 555, seed=3)
    with rasterio.open(scene, "r+") as dst:
        pixels = dst.read()
        pixels[:, 40:120, 100:260] = 0
        dst.write(pixels)
        dst.nodata = 0
    options = PredictOptions(window=64, overlap=16, batch_size=4, progress=False)
    result = predict_scene(data.ColourModel(), data.SPEC, scene, options=options)
    with rasterio.open(result.outputs["classes"]) as src:
        classes = src.read(1)
        assert src.overviews(1) == [2, 4]
        profile = {k: src.profile[k] for k in ("driver", "count", "dtype", "crs", "transform")}
    assert (classes[40:120, 100:260] == CLASS_NODATA).all()
    assert (classes[:40] == truth[:40]).all()
    profile |= {"driver": "GTiff", "nodata": CLASS_NODATA, "tiled": True}
    expected = gdal_mode_overviews(tmp_path / "gdal.tif", classes, profile)
    for level, gdal in enumerate(expected):
        with rasterio.open(result.outputs["classes"], OVERVIEW_LEVEL=level) as src:
            np.testing.assert_array_equal(src.read(1), gdal)
