"""The strip reader: the windows of windowed reads, each pixel read once, several threads."""

import contextlib
import os
import re
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.enums import ColorInterp

from geoct.cli import main
from geoct.errors import InputError
from geoct.predict import engine, staging
from geoct.predict.device_blend import InputNormaliser
from geoct.predict.engine import PredictOptions, predict_scene, scene_grid
from geoct.predict.reader import SceneReader
from geoct.predict.strips import StripReader
from geoct.predict.transfer import HostBatch
from geoct.predict.windows import WindowGrid

pytestmark = pytest.mark.filterwarnings("ignore:.*(checkpoint's GSD|warping).*:UserWarning")


def _profile(data: ModuleType, array: np.ndarray, block: int, **extra) -> dict:
    profile = {
        "driver": "GTiff",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": array.shape[0],
        "dtype": array.dtype.name,
        "crs": data.CRS,
        "transform": data.TRANSFORM,
        "photometric": "MINISBLACK",
        "tiled": True,
        "blockxsize": block,
        "blockysize": block,
        "compress": "DEFLATE",
    }
    return {**profile, **extra}


def tiled_scene(data: ModuleType, path: Path, height: int, width: int, block: int = 16, **extra):
    """Write a colour scene as a tiled DEFLATE GeoTIFF with small blocks; return its classes."""
    classes = data.class_map(height, width)
    image = data.COLOURS[classes].transpose(2, 0, 1).copy()
    with rasterio.open(path, "w", **_profile(data, image, block, **extra)) as dst:
        dst.write(image)
    return classes


def assert_cut_into_batch_equals(strip, col: int, batch: HostBatch, window: tuple) -> None:
    """Cutting the window at *col* into a batch slot gives the arrays of ``strip.window``."""
    image, valid, height = window
    batch.reset()
    slot = batch.slot()
    slot[0][...] = image + 1  # every value must be overwritten
    slot[1][...] = ~valid
    if height is not None:
        slot[2][...] = height + 1
    strip.cut(col, *slot)
    np.testing.assert_array_equal(batch.image[0].numpy(), image.transpose(1, 2, 0))
    np.testing.assert_array_equal(batch.valid[0].numpy(), valid)
    if height is not None:
        np.testing.assert_array_equal(batch.height[0].numpy(), height)
    assert batch.keep() == valid.any()
    assert batch.slots == [0 if valid.any() else -1]
    assert batch.masked == ([not valid.all()] if valid.any() else [])


def assert_strips_match_windowed_reads(
    reader: SceneReader, grid: WindowGrid, threads: int, lookahead: int | None = None
):
    normalise = InputNormaliser(reader.mean, reader.inv_std, torch.device("cpu"))
    wh, ww = grid.window
    lookahead = (wh if threads > 1 else 0) if lookahead is None else lookahead
    with StripReader(reader, grid, threads=threads, lookahead=lookahead) as strips:
        channels, dsm = len(reader.indexes), reader.dsm is not None
        batch = HostBatch(1, channels, grid.window, strips.dtype, dsm, pinned=False)
        seen = 0
        for strip, row in zip(strips, grid.rows, strict=True):
            assert strip.top == row
            for col in grid.cols:
                image, valid, height = strip.window(col, ww)
                assert_cut_into_batch_equals(strip, col, batch, (image, valid, height))
                expected, expected_valid = reader.read(row, col, wh, ww)
                np.testing.assert_array_equal(valid, expected_valid)
                if expected is None:
                    assert not valid.any()
                else:
                    h = None if height is None else torch.from_numpy(height[None].copy())
                    got = normalise(
                        torch.from_numpy(image[None].copy()),
                        torch.from_numpy(valid[None].copy()),
                        h,
                    )
                    np.testing.assert_array_equal(got[0].numpy(), expected)
                seen += 1
    assert seen == len(grid)


@pytest.mark.parametrize(
    "shape, window, overlap",
    [
        ((217, 300), 64, 16),
        ((217, 300), 37, 5),
        ((217, 300), 48, 40),
        ((30, 45), 64, 16),
        ((1, 70), 16, 4),
        ((70, 1), 16, 4),
    ],
)
@pytest.mark.parametrize("threads", [1, 3])
def test_strip_windows_equal_windowed_reads(
    data: ModuleType, tmp_path: Path, shape, window, overlap, threads
) -> None:
    tiled_scene(data, tmp_path / "scene.tif", *shape)
    with SceneReader(tmp_path / "scene.tif", data.SPEC) as reader:
        grid = WindowGrid(*shape, (window, window), (overlap, overlap))
        assert_strips_match_windowed_reads(reader, grid, threads)


@pytest.mark.parametrize("interleave", ["pixel", "band"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float64"])
def test_strips_of_any_layout_and_dtype_equal_windowed_reads(
    data: ModuleType, tmp_path: Path, interleave: str, dtype: str
) -> None:
    """Pieces are held pixel-interleaved whatever the file's layout; float64 becomes float32."""
    classes = data.class_map(90, 110)
    image = data.COLOURS[classes].transpose(2, 0, 1).astype(dtype)
    profile = _profile(data, image, 32, interleave=interleave)
    with rasterio.open(tmp_path / "scene.tif", "w", **profile) as dst:
        dst.write(image)
    with SceneReader(tmp_path / "scene.tif", data.SPEC) as reader:
        grid = WindowGrid(90, 110, (40, 40), (8, 8))
        assert_strips_match_windowed_reads(reader, grid, threads=2)


def test_strips_with_nodata_and_masks(data: ModuleType, tmp_path: Path) -> None:
    classes = data.class_map(150, 170)
    image = data.COLOURS[classes].transpose(2, 0, 1).copy()
    image[:, :60] = 0
    image[:, 100, 100] = 0
    path = tmp_path / "nodata.tif"
    with rasterio.open(path, "w", **_profile(data, image, 32, nodata=0)) as dst:
        dst.write(image)
    with SceneReader(path, data.SPEC) as reader:
        assert reader.mask_mode == "masks"
        assert_strips_match_windowed_reads(reader, WindowGrid(150, 170, (32, 32), (8, 8)), 2)
    masked = tmp_path / "masked.tif"
    tiled_scene(data, masked, 90, 100, block=32)
    with rasterio.open(masked, "r+") as dst:
        mask = np.full((90, 100), 255, np.uint8)
        mask[:, :13] = 0
        dst.write_mask(mask)
    with SceneReader(masked, data.SPEC) as reader:
        assert_strips_match_windowed_reads(reader, WindowGrid(90, 100, (32, 32), (8, 8)), 3)


@pytest.mark.parametrize("warped", [False, True])
def test_strips_with_dsm_companion(data: ModuleType, tmp_path: Path, warped: bool) -> None:
    tiled_scene(data, tmp_path / "scene.tif", 100, 130)
    rng = np.random.default_rng(0)
    if warped:
        t = data.TRANSFORM
        transform = Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f)
        height = rng.random((50, 65)).astype(np.float32) * 30
        height[:5, :5] = -9999
        data.write_raster(tmp_path / "dsm.tif", height, transform=transform, nodata=-9999)
    else:
        height = rng.random((100, 130)).astype(np.float32) * 30
        height[10:20, 30:40] = -9999
        data.write_raster(tmp_path / "dsm.tif", height, nodata=-9999)
    with SceneReader(tmp_path / "scene.tif", data.HEIGHT_SPEC, tmp_path / "dsm.tif") as reader:
        assert_strips_match_windowed_reads(reader, WindowGrid(100, 130, (32, 32), (8, 8)), 2)


def test_strips_on_match_gsd_grid(data: ModuleType, tmp_path: Path) -> None:
    tiled_scene(data, tmp_path / "scene.tif", 120, 140)
    options = PredictOptions(window=32, overlap=8, match_gsd=True)
    with SceneReader(tmp_path / "scene.tif", data.SPEC) as reader:
        grid = scene_grid(reader, data.SPEC, options)
        assert grid.window == (23, 32)
        assert_strips_match_windowed_reads(reader, grid, 2)


def test_strips_on_a_vrt_mosaic(data: ModuleType, tmp_path: Path) -> None:
    tiled_scene(data, tmp_path / "a.tif", 60, 40)
    t = data.TRANSFORM @ Affine.translation(40, 0)
    tiled_scene(data, tmp_path / "b.tif", 60, 30, transform=t)
    vrt = tmp_path / "mosaic.vrt"
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">'
        + "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="60"/>'
            f'<DstRect xOff="{x}" yOff="0" xSize="{w}" ySize="60"/></SimpleSource>'
            for name, x, w in (("a.tif", 0, 40), ("b.tif", 40, 30))
        )
        + "</VRTRasterBand>"
        for b in range(1, 5)
    )
    g = data.TRANSFORM
    gt = ", ".join(repr(v) for v in (g.c, g.a, g.b, g.f, g.d, g.e))
    vrt.write_text(
        f'<VRTDataset rasterXSize="70" rasterYSize="60"><SRS>{data.CRS}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )
    with SceneReader(vrt, data.SPEC) as reader:
        assert_strips_match_windowed_reads(reader, WindowGrid(60, 70, (32, 32), (8, 8)), 3)


def _masked_scene(data: ModuleType, path: Path, kind: str) -> None:
    """A 130 x 150 scene whose left columns and one pixel are nodata, found by *kind*."""
    image = data.COLOURS[data.class_map(130, 150)].transpose(2, 0, 1).copy()
    image[:, :, :23] = 0
    image[:, 70, 90] = 0
    extra: dict = {"nodata": 0} if kind in ("masks", "nodata") else {}
    if kind == "alpha":
        alpha = np.where(image[:1] == 0, 0, 200).astype(image.dtype)
        image = np.concatenate([image, alpha])
    with rasterio.open(path, "w", **_profile(data, image, 16, **extra)) as dst:
        if kind in ("nodata", "alpha"):
            dst.colorinterp = [ColorInterp.gray] * (len(image) - 1) + [ColorInterp.alpha]
        if kind == "nodata":
            dst.set_band_description(4, "IR")  # the alpha band is data: mask by value
        dst.write(image)


@pytest.mark.filterwarnings("ignore:.*shadowing the alpha band:UserWarning")
@pytest.mark.parametrize("kind", ["none", "masks", "nodata", "alpha", "dsm"])
def test_piece_buffers_are_reused(data: ModuleType, tmp_path: Path, monkeypatch, kind: str) -> None:
    """With one block per piece, buffers of dropped pieces take later pieces.

    About a window row of pieces is held: those of the row groups the window row
    touches, plus those read ahead (2 per thread); passed pieces of which later
    window rows need at most half the rows are trimmed to them.
    """
    monkeypatch.setattr("geoct.predict.strips.MIN_PIECE_ROWS", 1)
    monkeypatch.setattr("geoct.predict.strips.MIN_PIECE_COLS", 1)
    taken, halves, original = [], [], StripReader._take_buffers

    def take(self, half=False):
        buffers = original(self, half)
        (halves if half else taken).append(id(buffers[0]))
        return buffers

    monkeypatch.setattr(StripReader, "_take_buffers", take)
    scene = tmp_path / "scene.tif"
    _masked_scene(data, scene, kind if kind != "dsm" else "none")
    dsm, spec = None, data.SPEC
    if kind == "dsm":
        height = np.random.default_rng(0).random((130, 150)).astype(np.float32) * 30
        height[40:50, 60:75] = -9999
        dsm, spec = data.write_raster(tmp_path / "dsm.tif", height, nodata=-9999), data.HEIGHT_SPEC
    with SceneReader(scene, spec, dsm) as reader:
        assert reader.mask_mode == ("none" if kind == "dsm" else kind)
        grid = WindowGrid(130, 150, (37, 41), (9, 6))
        assert_strips_match_windowed_reads(reader, grid, 3, lookahead=0)
    groups, pieces, ahead = 9, 10, 6  # 16 px blocks, 3 threads
    assert len(taken) == groups * pieces
    assert len(set(taken)) <= (-(-37 // 16) + 1) * pieces + ahead
    assert halves  # trimmed pieces


def test_windows_cut_out_of_order_are_refused(
    data: ModuleType, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr("geoct.predict.strips.MIN_PIECE_ROWS", 1)
    monkeypatch.setattr("geoct.predict.strips.MIN_PIECE_COLS", 1)
    tiled_scene(data, tmp_path / "scene.tif", 130, 150)
    with SceneReader(tmp_path / "scene.tif", data.SPEC) as reader:
        grid = WindowGrid(130, 150, (32, 32), (8, 8))
        with StripReader(reader, grid, threads=2) as strips:
            rows = iter(strips)
            first = next(rows)
            first.window(grid.cols[-1], 32)
            with pytest.raises(RuntimeError, match="left to right"):
                first.window(0, 32)
            second = next(rows)
            second.window(0, 32)
            with pytest.raises(RuntimeError, match="before the next strip"):
                first.window(grid.cols[-1], 32)


def test_each_pixel_is_read_once(data: ModuleType, tmp_path: Path, monkeypatch) -> None:
    tiled_scene(data, tmp_path / "scene.tif", 217, 300)
    areas = []
    original = SceneReader._read_raw

    def counting(self, win, *args, **kwargs):
        areas.append((int(win.row_off), int(win.col_off), int(win.height), int(win.width)))
        return original(self, win, *args, **kwargs)

    monkeypatch.setattr(SceneReader, "_read_raw", counting)
    with SceneReader(tmp_path / "scene.tif", data.SPEC) as reader:
        grid = WindowGrid(217, 300, (64, 64), (16, 16))
        with StripReader(reader, grid, threads=3) as strips:
            for strip in strips:
                for col in grid.cols:
                    strip.window(col, 64)
    covered = np.zeros((217, 300), int)
    for r, c, h, w in areas:
        covered[r : r + h, c : c + w] += 1
    assert (covered == 1).all()


@pytest.mark.parametrize("run", range(4))
@pytest.mark.parametrize("direct", [True, False])
def test_parallel_readers_lose_no_block(
    data: ModuleType, tmp_path: Path, monkeypatch, run: int, direct: bool
) -> None:
    """Stress: 4 reader threads, a 1 MB GDAL cache, three staging files, run several times."""
    truth = tiled_scene(data, tmp_path / "scene.tif", 700, 650, block=64)
    monkeypatch.setattr(engine, "GDAL_CACHE_MB", 1)
    monkeypatch.setattr("geoct.predict.strips.read_threads", lambda: 4)
    if not direct:
        monkeypatch.setattr(staging.TileStager, "open", classmethod(lambda cls, path: None))
    options = PredictOptions(
        window=64, overlap=16, batch_size=8, progress=False, confidence=True, probabilities=True
    )
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=options)
    with rasterio.open(result.outputs["classes"]) as src:
        np.testing.assert_array_equal(src.read(1), truth)
    with rasterio.open(result.outputs["confidence"]) as src:
        assert (src.read(1) > 200).all()
    with rasterio.open(result.outputs["probabilities"]) as src:
        probabilities = src.read()
    assert (np.take_along_axis(probabilities, truth[None].astype(int), 0) > 200).all()


def corrupt_tile(path: Path, row: int, col: int) -> None:
    """Overwrite the data of one DEFLATE tile with garbage."""
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(os.urandom(size))


def test_broken_tile_is_one_line_error_and_nothing_written(
    data: ModuleType, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    scene = tmp_path / "scene.tif"
    tiled_scene(data, scene, 600, 600, block=32, interleave="pixel")
    corrupt_tile(scene, 2, 2)  # rows and columns 64-95, between the value-check samples
    args = ["predict", str(scene), "--checkpoint", str(checkpoint), "--confidence"]
    code = main([*args, "--window", "64", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(scene) in err
    found = re.search(r"cannot read rows (\d+)-(\d+), columns (\d+)-(\d+): \S", err)
    assert found, err
    r0, r1, c0, c1 = map(int, found.groups())
    assert r0 <= 64 and r1 >= 95 and c0 <= 64 and c1 >= 95
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_broken_dsm_tile_names_the_dsm(data: ModuleType, tmp_path: Path) -> None:
    tiled_scene(data, tmp_path / "scene.tif", 150, 150)
    dsm = tmp_path / "dsm.tif"
    height = np.random.default_rng(0).random((1, 150, 150)).astype(np.float32)
    with rasterio.open(dsm, "w", **_profile(data, height, 64)) as dst:
        dst.write(height)
    corrupt_tile(dsm, 1, 1)
    with pytest.raises(InputError, match=r"dsm\.tif: cannot read rows \d+-\d+, columns"):
        predict_scene(
            data.ColourModel(5),
            data.HEIGHT_SPEC,
            tmp_path / "scene.tif",
            dsm=dsm,
            options=PredictOptions(window=32, overlap=8, progress=False),
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dsm.tif", "scene.tif"]


def test_staging_files_take_direct_tile_writes(data: ModuleType, tmp_path: Path) -> None:
    from geoct.predict.writer import Grid, OutputPaths, PredictionWriter

    paths = OutputPaths.beside(tmp_path / "scene.tif", None, True, True)
    grid = Grid(data.CRS, data.TRANSFORM, 700, 600)
    writer = PredictionWriter(paths, grid, data.SPEC.classes, {})
    try:
        assert writer.begin() is None
        assert all(isinstance(t, staging.TileStager) for t in writer.tiles.values())
        assert set(writer.pyramids) == {"classes", "confidence", "probabilities"}
        levels = [(300, 350), (150, 175)]
        assert [(t.height, t.width) for t in writer.overview_tiles] == levels * 3
        assert writer.overview_tiles[-1].count == data.SPEC.classes.num_classes
    finally:
        writer.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("run", range(3))
@pytest.mark.parametrize("direct", [True, False])
def test_staging_under_read_load_loses_no_block(
    data: ModuleType, tmp_path: Path, run: int, direct: bool
) -> None:
    """Stress: three reader threads hammer a DEFLATE scene through a 1 MB cache while rows are staged."""
    import threading

    from rasterio.windows import Window

    scene = tmp_path / "scene.tif"
    tiled_scene(data, scene, 800, 800, block=64)
    size, counts, step = 1100, (1, 1, 6), 96
    profile = {"driver": "GTiff", "width": size, "height": size, "dtype": "uint8", "crs": data.CRS}
    profile |= {"transform": data.TRANSFORM}
    profile |= {"tiled": True, "blockxsize": 512, "blockysize": 512, "interleave": "pixel"}
    lock = staging.SharedLock()
    stagers, shared = [], lock.shared if not direct else None
    for i, count in enumerate(counts):
        path = tmp_path / f"stage{i}.tif"
        with rasterio.open(path, "w", count=count, photometric="MINISBLACK", **profile):
            pass
        stager = staging.TileStager.open(path) if direct else staging.GdalStager(path, lock)
        assert stager is not None
        stagers.append(stager)
    stop = threading.Event()

    def hammer() -> None:
        rng = np.random.default_rng()
        with rasterio.open(scene) as src:
            while not stop.is_set():
                r, c = rng.integers(0, 600, 2)
                with shared() if shared else contextlib.nullcontext():
                    src.read(window=Window(int(c), int(r), 200, 200))

    with rasterio.Env(GDAL_CACHEMAX=1 << 20):
        readers = [threading.Thread(target=hammer) for _ in range(3)]
        for reader in readers:
            reader.start()
        try:
            for k, row in enumerate(range(0, size, step)):
                for left, right in ((0, 500), (500, size)):
                    for stager, count in zip(stagers, counts, strict=True):
                        h = min(step, size - row)
                        block = np.full((count, h, right - left), k % 250 + 1, np.uint8)
                        stager.write(row, left, block)
        finally:
            stop.set()
            for reader in readers:
                reader.join()
        for stager in stagers:
            assert stager.complete
            stager.close()
    expected = (np.arange(size) // step % 250 + 1).astype(np.uint8)[:, None]
    for i in range(len(counts)):
        with rasterio.open(tmp_path / f"stage{i}.tif") as src:
            assert (src.read() == expected).all()
