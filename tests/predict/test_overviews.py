"""Overviews built while streaming equal GDAL's mode and average, level by level, pixel for pixel."""

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from geoct.predict.engine import PredictOptions, predict_scene
from geoct.predict.overviews import (
    OverviewPyramid,
    OverviewThread,
    average,
    edge_weights,
    mode,
    source_windows,
    window_mode,
)
from geoct.predict.writer import (
    CLASS_NODATA,
    CONFIDENCE_NODATA,
    PROBABILITY_NODATA,
    overview_count,
)


def gdal_overviews(
    path: Path, band: np.ndarray, profile: dict, resampling: Resampling = Resampling.mode
) -> list[np.ndarray]:
    """Write *band* as a paletted GeoTIFF, let GDAL build its overviews, read them back."""
    h, w = band.shape
    factors = [2**i for i in range(1, overview_count(w, h) + 1)]
    with rasterio.open(path, "w", width=w, height=h, **profile) as dst:
        dst.write(band, 1)
        if resampling == Resampling.mode:
            dst.write_colormap(1, {i: (i, 2 * i, 3 * i, 255) for i in range(8)})
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews(factors, resampling)
    levels = []
    for level in range(len(factors)):
        with rasterio.open(path, OVERVIEW_LEVEL=level) as src:
            levels.append(src.read(1))
    return levels


def stream_pyramid(
    band: np.ndarray, shapes: list[tuple[int, int]], resample, seed: int, step: int = 0
) -> OverviewPyramid:
    """Feed *band* to a pyramid in strips of *step* rows (random heights if 0)."""
    levels = [np.full(shape, 77, dtype=np.uint8) for shape in shapes]

    def sink(level: np.ndarray):
        def write(row: int, rows: np.ndarray) -> None:
            assert (level[row : row + len(rows)] == 77).all(), "a row was emitted twice"
            level[row : row + len(rows)] = rows

        return write

    pyramid = OverviewPyramid(band.shape, shapes, resample, [sink(x) for x in levels])
    pyramid.outputs = levels
    rng, row = np.random.default_rng(seed), 0
    while row < band.shape[0]:
        n = step or int(rng.choice([1, 2, 3, 17, 512, 700]))
        pyramid.push(row, band[row : row + n])
        row += n
    return pyramid


def test_source_windows_are_gdal_s() -> None:
    start, stop = source_windows(8, 4)
    assert start.tolist() == [0, 2, 4, 6] and stop.tolist() == [2, 4, 6, 8]
    start, stop = source_windows(7, 4)  # ratio 1.75: windows overlap, up to 3 wide
    assert start.tolist() == [0, 1, 3, 5] and stop.tolist() == [2, 4, 6, 7]
    start, stop = source_windows(1, 1)
    assert start.tolist() == [0] and stop.tolist() == [1]
    first, last = edge_weights(7, 4)  # windows [0, 1.75), [1.75, 3.5), [3.5, 5.25), [5.25, 7)
    np.testing.assert_allclose(first, [1, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(last, [0.75, 0.5, 0.25, 1])


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


SHAPES = [(1024, 1024), (1001, 515), (600, 601), (257, 1999), (2, 777)]


@pytest.mark.parametrize("shape", SHAPES)
def test_streamed_mode_equals_gdal_s(
    data: ModuleType, tmp_path: Path, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(sum(shape))
    classes = rng.integers(0, 4, shape).astype(np.uint8)
    classes[rng.random(shape) < 0.15] = CLASS_NODATA
    classes[: shape[0] // 3, : shape[1] // 4] = CLASS_NODATA
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "crs": data.CRS}
    profile |= {"transform": data.TRANSFORM, "nodata": CLASS_NODATA, "tiled": True}
    expected = gdal_overviews(tmp_path / "gdal.tif", classes, profile)
    assert expected, "the case needs overviews"
    shapes = [level.shape for level in expected]
    pyramid = stream_pyramid(classes, shapes, mode(CLASS_NODATA), seed=shape[1])
    assert pyramid.complete
    for ours, gdal in zip(pyramid.outputs, expected, strict=True):
        np.testing.assert_array_equal(ours, gdal)


@pytest.mark.parametrize("shape", SHAPES)
def test_streamed_average_equals_gdal_s(
    data: ModuleType, tmp_path: Path, shape: tuple[int, int]
) -> None:
    """Confidence-like values 1..255 with nodata 0, odd sizes (weighted edge pixels) included."""
    rng = np.random.default_rng(sum(shape) + 1)
    confidence = rng.integers(1, 256, shape).astype(np.uint8)
    confidence[rng.random(shape) < 0.2] = CONFIDENCE_NODATA
    confidence[-(shape[0] // 3) :, : shape[1] // 5] = CONFIDENCE_NODATA
    profile = {"driver": "GTiff", "count": 1, "dtype": "uint8", "crs": data.CRS}
    profile |= {"transform": data.TRANSFORM, "nodata": CONFIDENCE_NODATA, "tiled": True}
    expected = gdal_overviews(tmp_path / "gdal.tif", confidence, profile, Resampling.average)
    shapes = [level.shape for level in expected]
    for step in (0, 50):  # a strip ending one row before a weighted window's last row
        pyramid = stream_pyramid(confidence, shapes, average(CONFIDENCE_NODATA), shape[0], step)
        assert pyramid.complete
        for ours, gdal in zip(pyramid.outputs, expected, strict=True):
            np.testing.assert_array_equal(ours, gdal)


@pytest.mark.parametrize("shape", [(1024, 512), (301, 555)])
def test_streamed_band_by_band_average_equals_gdal_s(
    data: ModuleType, tmp_path: Path, shape: tuple[int, int]
) -> None:
    """A pixel-interleaved 6-band raster with nodata 255, like the probabilities."""
    rng = np.random.default_rng(shape[1])
    bands = rng.integers(0, 255, (*shape, 6)).astype(np.uint8)
    bands[rng.random(shape) < 0.2] = PROBABILITY_NODATA
    h, w = shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 6, "dtype": "uint8"}
    profile |= {"crs": data.CRS, "transform": data.TRANSFORM, "nodata": PROBABILITY_NODATA}
    profile |= {"tiled": True, "interleave": "pixel", "photometric": "MINISBLACK"}
    path = tmp_path / "gdal.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(bands.transpose(2, 0, 1))
    factors = [2**i for i in range(1, overview_count(w, h) + 1)]
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path, "r+") as dst:
        dst.build_overviews(factors, Resampling.average)
    expected = []
    for level in range(len(factors)):
        with rasterio.open(path, OVERVIEW_LEVEL=level) as src:
            expected.append(src.read().transpose(1, 2, 0))
    shapes = [level.shape[:2] for level in expected]
    outputs = [np.zeros(level.shape, np.uint8) for level in expected]
    sinks = [lambda r, x, out=out: out.__setitem__(slice(r, r + len(x)), x) for out in outputs]
    pyramid = OverviewPyramid(shape, shapes, average(PROBABILITY_NODATA), sinks)
    for row in range(0, h, 100):
        pyramid.push(row, bands[row : row + 100])
    assert pyramid.complete
    for ours, gdal in zip(outputs, expected, strict=True):
        np.testing.assert_array_equal(ours, gdal)


def test_rows_out_of_order_are_refused() -> None:
    pyramid = OverviewPyramid((8, 8), [(4, 4)], mode(CLASS_NODATA), [lambda row, rows: None])
    pyramid.push(0, np.zeros((2, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="in order"):
        pyramid.push(4, np.zeros((2, 8), dtype=np.uint8))


def test_predicted_overviews_are_gdal_s(data: ModuleType, tmp_path: Path) -> None:
    """Through predict_scene: an odd-sized scene with nodata; every COG overview is GDAL's."""
    scene = tmp_path / "scene.tif"
    truth = data.write_scene(scene, 301, 555, seed=3)
    with rasterio.open(scene, "r+") as dst:
        pixels = dst.read()
        pixels[:, 40:120, 100:260] = 0
        dst.write(pixels)
        dst.nodata = 0
    options = PredictOptions(
        window=64, overlap=16, batch_size=4, progress=False, confidence=True, probabilities=True
    )
    result = predict_scene(data.ColourModel(), data.SPEC, scene, options=options)
    with rasterio.open(result.outputs["probabilities"]) as src:
        probabilities = src.read()
        assert src.overviews(1) == [2, 4] and src.interleaving.name.lower() == "pixel"
        profile = {k: src.profile[k] for k in ("count", "dtype", "crs", "transform", "nodata")}
    path = tmp_path / "gdal-probabilities.tif"
    profile |= {
        "driver": "GTiff",
        "tiled": True,
        "interleave": "pixel",
        "photometric": "MINISBLACK",
    }
    with rasterio.open(path, "w", width=555, height=301, **profile) as dst:
        dst.write(probabilities)
    with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), rasterio.open(path, "r+") as dst:
        dst.build_overviews([2, 4], Resampling.average)
    for level in (0, 1):
        with (
            rasterio.open(result.outputs["probabilities"], OVERVIEW_LEVEL=level) as ours,
            rasterio.open(path, OVERVIEW_LEVEL=level) as gdal,
        ):
            np.testing.assert_array_equal(ours.read(), gdal.read())
    for kind, resampling in (("classes", Resampling.mode), ("confidence", Resampling.average)):
        with rasterio.open(result.outputs[kind]) as src:
            band = src.read(1)
            assert src.overviews(1) == [2, 4]
            assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            profile = {k: src.profile[k] for k in ("count", "dtype", "crs", "transform", "nodata")}
        assert (band[40:120, 100:260] == src.nodata).all()
        if kind == "classes":
            assert (band[:40] == truth[:40]).all()
        profile |= {"driver": "GTiff", "tiled": True}
        expected = gdal_overviews(tmp_path / f"gdal-{kind}.tif", band, profile, resampling)
        for level, gdal in enumerate(expected):
            with rasterio.open(result.outputs[kind], OVERVIEW_LEVEL=level) as src:
                np.testing.assert_array_equal(src.read(1), gdal)


def test_overview_thread_builds_in_order_and_reports_failures() -> None:
    classes = np.random.default_rng(1).integers(0, 3, (64, 40)).astype(np.uint8)
    expected = stream_pyramid(classes, [(32, 20), (16, 10)], mode(CLASS_NODATA), seed=0).outputs
    levels = [np.zeros((32, 20), np.uint8), np.zeros((16, 10), np.uint8)]
    sinks = [lambda r, x, out=out: out.__setitem__(slice(r, r + len(x)), x) for out in levels]
    worker = OverviewThread(OverviewPyramid((64, 40), [(32, 20), (16, 10)], mode(255), sinks))
    for row in range(0, 64, 8):
        worker.push(row, classes[row : row + 8])
    worker.finish()
    assert worker.complete
    for ours, reference in zip(levels, expected, strict=True):
        np.testing.assert_array_equal(ours, reference)
    broken = OverviewThread(OverviewPyramid((8, 8), [(4, 4)], mode(255), [lambda r, x: 1 / 0]))
    broken.push(0, np.zeros((8, 8), np.uint8))
    with pytest.raises(ZeroDivisionError):
        broken.finish()


def test_failing_overviews_stop_the_scene_and_leave_nothing(
    data: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self, row: int, rows: np.ndarray) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(OverviewPyramid, "push", full_disk)
    scene = tmp_path / "scene.tif"
    data.write_scene(scene, 300, 520, seed=4)
    options = PredictOptions(window=64, overlap=16, batch_size=4, progress=False, confidence=True)
    with pytest.raises(OSError, match="No space left"):
        predict_scene(data.ColourModel(), data.SPEC, scene, options=options)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]
