"""Device-side blending and finalising equal the NumPy pipeline they replaced, bit for bit."""

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import torch

from geoct.predict.accumulator import BUFFER_BYTES, CARRY_BYTES, StreamingBlender
from geoct.predict.device_blend import (
    InputNormaliser,
    finalise,
    finalise_torch,
    greater,
    to_uint8,
)
from geoct.predict.engine import PredictOptions, predict_scene, scene_grid
from geoct.predict.reader import SceneReader
from geoct.predict.windows import WindowGrid, hann_2d
from geoct.predict.writer import CLASS_NODATA, CONFIDENCE_NODATA, PROBABILITY_NODATA

pytestmark = pytest.mark.filterwarnings("ignore:.*checkpoint's GSD:UserWarning")

KINDS = frozenset({"classes", "confidence", "probabilities"})


def numpy_finalise(sums: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The NumPy finalisation of the previous writer (``PredictionWriter.write``)."""
    valid = weights > 0
    classes = sums.argmax(axis=0).astype(np.uint8)
    classes[~valid] = CLASS_NODATA
    x = sums / np.where(valid, weights, 1.0)
    e = np.exp(x - x.max(axis=0, keepdims=True))
    e /= e.sum(axis=0, keepdims=True)
    confidence = np.rint(e.max(axis=0) * 255.0).astype(np.uint8)
    confidence[~valid] = CONFIDENCE_NODATA
    probabilities = np.minimum(np.rint(e * 255.0).astype(np.uint8), PROBABILITY_NODATA - 1)
    probabilities[:, ~valid] = PROBABILITY_NODATA
    return {"classes": classes, "confidence": confidence, "probabilities": probabilities}


def numpy_predict(model: torch.nn.Module, spec, scene: Path, options: PredictOptions) -> dict:
    """The previous pipeline: per-window reads, NCHW float32 batches, a float32 NumPy blend.

    A whole-scene float32 accumulation in raster order adds every pixel's windows in
    the same order as the previous streaming blender (its carry was stored exactly).
    """
    with SceneReader(scene, spec) as reader:
        grid = scene_grid(reader, spec, options)
        wh, ww = grid.window
        pad = max(wh, ww)
        k = spec.classes.num_classes
        sums = np.zeros((k, grid.height + 2 * pad, grid.width + 2 * pad), np.float32)
        weights = np.zeros(sums.shape[1:], np.float32)
        hann = hann_2d(wh, ww)
        windows = [(r, c, *reader.read(r, c, wh, ww)) for r in grid.rows for c in grid.cols]
    ready = [w for w in windows if w[2] is not None]
    for start in range(0, len(ready), options.batch_size):
        chunk = ready[start : start + options.batch_size]
        with torch.inference_mode():
            logits = model(torch.from_numpy(np.stack([w[2] for w in chunk]))).float().numpy()
        for (r, c, _, valid), lg in zip(chunk, logits, strict=True):
            weight = hann * valid
            rows, cols = slice(r + pad, r + pad + wh), slice(c + pad, c + pad + ww)
            product = np.multiply(lg, weight)
            sums[:, rows, cols] += product
            weights[rows, cols] += weight
    crop = (slice(pad, pad + grid.height), slice(pad, pad + grid.width))
    return numpy_finalise(np.ascontiguousarray(sums[(slice(None), *crop)]), weights[crop].copy())


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.parametrize(
    "shape, window, overlap",
    [((217, 300), 64, 16), ((217, 300), 37, 5), ((217, 300), 48, 40), ((30, 45), 64, 16)],
)
def test_pipeline_equals_numpy_pipeline_bit_for_bit(
    data: ModuleType, tmp_path: Path, shape, window, overlap
) -> None:
    data.write_scene(tmp_path / "scene.tif", *shape)
    options = PredictOptions(
        window=window,
        overlap=overlap,
        batch_size=3,
        progress=False,
        confidence=True,
        probabilities=True,
        device="cpu",
    )
    model = data.ColourModel()
    result = predict_scene(model, data.SPEC, tmp_path / "scene.tif", options=options)
    expected = numpy_predict(model, data.SPEC, tmp_path / "scene.tif", options)
    np.testing.assert_array_equal(read(result.outputs["classes"])[0], expected["classes"])
    np.testing.assert_array_equal(read(result.outputs["confidence"])[0], expected["confidence"])
    np.testing.assert_array_equal(read(result.outputs["probabilities"]), expected["probabilities"])


@pytest.mark.parametrize("carry_bytes", [32 << 20, 0])
def test_scene_wider_than_the_buffer_is_tiled_and_exact(
    data: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, carry_bytes: int
) -> None:
    """Past the blending buffer a row band is tiled by columns (carry on the device, or in a file)."""
    tiled = []

    class Recording(StreamingBlender):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            tiled.append((not self.carry_in_buffer, type(self.store).__name__))

    monkeypatch.setattr("geoct.predict.engine.StreamingBlender", Recording)
    monkeypatch.setitem(BUFFER_BYTES, "cpu", 8 * 64 * 150 * 4)
    monkeypatch.setitem(CARRY_BYTES, "cpu", carry_bytes)
    data.write_scene(tmp_path / "scene.tif", 217, 300)
    options = PredictOptions(
        window=64, overlap=16, batch_size=3, progress=False, confidence=True, device="cpu"
    )
    model = data.ColourModel()
    result = predict_scene(model, data.SPEC, tmp_path / "scene.tif", options=options)
    expected = numpy_predict(model, data.SPEC, tmp_path / "scene.tif", options)
    assert tiled == [(True, "DeviceCarry" if carry_bytes else "CarryStore")]
    np.testing.assert_array_equal(read(result.outputs["classes"])[0], expected["classes"])
    np.testing.assert_array_equal(read(result.outputs["confidence"])[0], expected["confidence"])


@pytest.mark.parametrize("shape, window, overlap", [((217, 300), 37, 5), ((30, 45), 64, 16)])
def test_classes_alone_blend_without_weight_sums(
    data: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape, window, overlap
) -> None:
    """Classes of a scene valid everywhere skip the weight sums, and stay bit for bit."""
    built = []

    class Recording(StreamingBlender):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self.weights)

    monkeypatch.setattr("geoct.predict.engine.StreamingBlender", Recording)
    data.write_scene(tmp_path / "scene.tif", *shape)
    image = read(tmp_path / "scene.tif")
    image[:, :9] = 0
    data.write_raster(tmp_path / "nodata.tif", image, nodata=0)
    options = PredictOptions(
        window=window, overlap=overlap, batch_size=3, progress=False, device="cpu"
    )
    model = torch.nn.Sequential(data.ColourModel(), _Scale(0.05))
    for name in ("scene.tif", "nodata.tif"):
        result = predict_scene(model, data.SPEC, tmp_path / name, options=options)
        expected = numpy_predict(model, data.SPEC, tmp_path / name, options)
        np.testing.assert_array_equal(read(result.outputs["classes"])[0], expected["classes"])
    assert built == [False, True]
    assert (read(result.outputs["classes"])[0, :9] == CLASS_NODATA).all()


def test_blender_without_weight_sums() -> None:
    grid = WindowGrid(150, 230, (40, 48), (12, 16))
    rng = np.random.default_rng(4)
    logits = [rng.standard_normal((4, 40, 48), dtype=np.float32) for _ in range(len(grid))]

    def blend(weights: bool, **budgets) -> np.ndarray:
        sums = np.full((4, 150, 230), np.nan, np.float32)

        def sink(row: int, col: int, s: torch.Tensor, w: torch.Tensor | None) -> None:
            assert (w is None) == (not weights)
            sums[:, row : row + s.shape[1], col : col + s.shape[2]] = s.numpy()
            if weights:
                assert (w > 0).all()

        blender = StreamingBlender(grid, 4, sink, weights=weights, **budgets)
        for lg in logits:
            blender.push(lg)
        blender.close()
        return sums

    with_weights = blend(True)
    assert not np.isnan(with_weights).any()
    np.testing.assert_array_equal(blend(False), with_weights)
    np.testing.assert_array_equal(blend(False, buffer_bytes=4 * 40 * 100 * 4), with_weights)
    np.testing.assert_array_equal(
        blend(False, buffer_bytes=4 * 40 * 100 * 4, carry_bytes=0), with_weights
    )
    sums = torch.from_numpy(with_weights)
    np.testing.assert_array_equal(
        finalise(sums, None, {"classes"})["classes"].numpy(),
        finalise(sums, torch.ones(150, 230), {"classes"})["classes"].numpy(),
    )
    with pytest.raises(ValueError, match="weight sums"):
        finalise(sums, None, {"classes", "confidence"})
    blender = StreamingBlender(grid, 4, lambda *a: None, weights=False)
    with pytest.raises(ValueError, match="masked window"):
        blender.push(logits[0], np.ones((40, 48), bool))


def test_nodata_scene_equals_numpy_pipeline(data: ModuleType, tmp_path: Path) -> None:
    classes = data.class_map(120, 150)
    image = data.COLOURS[classes].transpose(2, 0, 1).copy()
    image[:, :50, :] = 0
    image[:, 90:, 100:] = 0
    image[:, 70, 70] = 0
    data.write_raster(tmp_path / "scene.tif", image, nodata=0)
    options = PredictOptions(
        window=32, overlap=8, batch_size=4, progress=False, confidence=True, probabilities=True
    )
    # Scale the logits so that the softmax is not saturated and rounding is exercised.
    model = torch.nn.Sequential(data.ColourModel(), _Scale(0.05))
    result = predict_scene(model, data.SPEC, tmp_path / "scene.tif", options=options)
    expected = numpy_predict(model, data.SPEC, tmp_path / "scene.tif", options)
    assert result.windows_run < result.windows
    for kind in ("classes", "confidence"):
        np.testing.assert_array_equal(read(result.outputs[kind])[0], expected[kind])
    np.testing.assert_array_equal(read(result.outputs["probabilities"]), expected["probabilities"])


class _Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_finalise_equals_numpy_with_ties_and_nodata() -> None:
    rng = np.random.default_rng(0)
    sums = rng.standard_normal((6, 300, 400)).astype(np.float32) * 3
    sums[:, :5] = np.round(sums[:, :5])  # ties: the first maximum wins
    sums[2:4, 10:20] = sums[1, 10:20]
    weights = rng.random((300, 400)).astype(np.float32) + 0.01
    weights[30:40, :7] = 0
    got = finalise(torch.from_numpy(sums), torch.from_numpy(weights), KINDS)
    expected = numpy_finalise(sums, weights)
    for kind in KINDS:
        np.testing.assert_array_equal(got[kind].numpy(), expected[kind])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_numpy_and_torch_finalise_give_the_same_bytes(masked: bool) -> None:
    """The CPU path (NumPy, in chunks) and the device path (torch, whole) agree."""
    rng = np.random.default_rng(4)
    sums = torch.from_numpy(rng.standard_normal((5, 97, 130)).astype(np.float32) * 4)
    sums[:, :3] = sums[:, :3].round()
    sums[:, 3, :5] = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, -0.0])
    weights = torch.from_numpy(rng.random((97, 130)).astype(np.float32) + 0.01)
    if masked:
        weights[40:60, 20:90] = 0
    for kinds in (frozenset(), KINDS):
        expected = finalise_torch(sums, weights, kinds)
        for chunk_pixels in (None, 3 * 130 + 7, 10**9):
            got = finalise(sums, weights, kinds, chunk_pixels=chunk_pixels)
            assert got.keys() == expected.keys()
            for kind, band in expected.items():
                assert got[kind].dtype == torch.uint8
                np.testing.assert_array_equal(got[kind].numpy(), band.numpy())
    np.testing.assert_array_equal(
        finalise(sums, None, frozenset())["classes"].numpy(),
        finalise_torch(sums, None, frozenset())["classes"].numpy(),
    )


def test_cpu_comparison_and_cast_equal_torch() -> None:
    """NumPy's comparison and uint8 cast on CPU give torch's results (NaN, infinities, halves)."""
    rng = np.random.default_rng(1)
    a = torch.from_numpy(rng.standard_normal((5, 64, 70)).astype(np.float32))
    b = a.roll(1, dims=0).clone()
    a[0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])[:, None]
    b[0, :2, :5] = a[0, :2, :5]
    for x, y in ((a[1:3], b[1:3]), (a[0], b[0]), (a[:, 5:20, 3:50], 0.0)):
        out = torch.empty(x.shape, dtype=torch.bool)
        np.testing.assert_array_equal(greater(x, y, out).numpy(), torch.gt(x, y).numpy())
    p = torch.cat([torch.rand(5000), torch.arange(256) / 255.0, (torch.arange(255) + 0.5) / 255.0])
    np.testing.assert_array_equal(to_uint8(p).numpy(), torch.round(p * 255.0).to(torch.uint8))


@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "int32", "float32"])
@pytest.mark.parametrize("with_height", [False, True])
def test_normaliser_equals_numpy(dtype: str, with_height: bool) -> None:
    """Every band type the device takes; int32 beyond 2**24, where float32 rounds it."""
    rng = np.random.default_rng(2)
    shape = (3, 4, 16, 20)
    if dtype == "float32":
        raw = (rng.random(shape) * 1000).astype(dtype)
        raw[0, 1, 2, 3] = np.nan
    else:
        info = np.iinfo(dtype)
        raw = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    height = rng.standard_normal((3, 16, 20)).astype(np.float32) if with_height else None
    valid = rng.random((3, 16, 20)) > 0.1
    channels = 5 if with_height else 4
    mean = rng.random((channels, 1, 1)).astype(np.float32) * 100
    inv_std = (1 / (rng.random((channels, 1, 1)) + 0.5)).astype(np.float32)
    expected = np.empty((3, channels, 16, 20), np.float32)
    expected[:, :4] = raw
    if with_height:
        expected[:, 4] = height
    expected -= mean
    expected *= inv_std
    expected[~np.broadcast_to(valid[:, None], expected.shape)] = 0
    expected = np.nan_to_num(expected, nan=0.0, posinf=0.0, neginf=0.0)
    normalise = InputNormaliser(mean, inv_std, torch.device("cpu"))
    interleaved = torch.from_numpy(raw.transpose(0, 2, 3, 1).copy()).permute(0, 3, 1, 2)
    for image in (torch.from_numpy(raw), interleaved):
        got = normalise(
            image, torch.from_numpy(valid), None if height is None else torch.from_numpy(height)
        )
        np.testing.assert_array_equal(got.numpy(), expected)


def test_chunked_blend_finalise_and_normalise_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cache-sized chunks of rows (the CPU path) give the sums and bands of whole blocks."""
    grid = WindowGrid(150, 230, (40, 48), (12, 16))
    rng = np.random.default_rng(3)
    logits = [rng.standard_normal((4, 40, 48), dtype=np.float32) for _ in range(len(grid))]
    valid = [rng.random((40, 48)) > 0.2 for _ in range(len(grid))]

    def blend(chunk_bytes: int) -> dict[str, np.ndarray]:
        bands: dict[str, np.ndarray] = {}

        def sink(row: int, col: int, s: torch.Tensor, w: torch.Tensor) -> None:
            chunk_pixels = 7 * w.shape[1] if chunk_bytes < 1 << 20 else None
            for kind, band in finalise(s, w, KINDS, chunk_pixels=chunk_pixels).items():
                out = bands.setdefault(kind, np.zeros((*band.shape[:-2], 150, 230), np.uint8))
                out[..., row : row + w.shape[0], col : col + w.shape[1]] = band.numpy()

        blender = StreamingBlender(grid, 4, sink)
        blender.chunk_bytes = chunk_bytes
        for lg, v in zip(logits, valid, strict=True):
            blender.push(lg, v)
        blender.close()
        return bands

    whole, chunked = blend(1 << 30), blend(4 * 48 * 4 * 5)
    for kind in KINDS:
        np.testing.assert_array_equal(whole[kind], chunked[kind])

    raw = torch.from_numpy(rng.integers(0, 255, (2, 32, 32, 4), dtype=np.uint8)).permute(0, 3, 1, 2)
    mean = np.full((4, 1, 1), 100, np.float32)
    inv_std = np.full((4, 1, 1), 1 / 37, np.float32)
    expected = InputNormaliser(mean, inv_std, torch.device("cpu"))(raw).clone()
    monkeypatch.setattr("geoct.predict.device_blend.CPU_CHUNK_PIXELS", 64 * 5)
    got = InputNormaliser(mean, inv_std, torch.device("cpu"))(raw)
    np.testing.assert_array_equal(got.numpy(), expected.numpy())
