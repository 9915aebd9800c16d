"""``geoct predict TILES... --mosaic OUT_DIR``: seamless, resumable, shared between processes."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from geoct.cli import main
from geoct.errors import AlignmentError
from geoct.predict.distributed import Workers
from geoct.predict.engine import PredictOptions, predict_scene
from geoct.predict.mosaic import MosaicPredictor
from geoct.predict.tiles import expand_tiles, mosaic_grid, vrt_xml
from geoct.raster_io import publishing_journal

OPTIONS = PredictOptions(window=32, overlap=8, batch_size=3, progress=False, confidence=True)


@pytest.fixture
def tiles(mosaic_data: ModuleType, tmp_path: Path) -> list[Path]:
    folder = tmp_path / "tiles"
    folder.mkdir()
    return mosaic_data.write_tiles(folder)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def one_scene(data: ModuleType, tiles: list[Path], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Classes and confidence of the whole mosaic predicted as one VRT scene."""
    grid = mosaic_grid(tiles)
    vrt = folder / "all.vrt"
    vrt.write_text(vrt_xml(grid, folder))
    result = predict_scene(data.ColourModel(), data.SPEC, vrt, options=OPTIONS)
    return read(result.outputs["classes"]), read(result.outputs["confidence"])


def test_tiles_equal_one_scene_bit_for_bit(data: ModuleType, tiles: list[Path], tmp_path):
    grid = mosaic_grid(tiles)
    out = tmp_path / "out"
    out.mkdir()
    predictor = MosaicPredictor(data.ColourModel(), data.SPEC, grid, out, OPTIONS)
    workers = Workers()
    predictor.prepare(workers)
    run = predictor.run(workers, keep_going=False, progress=False)
    assert (run.done, run.skipped, run.failed) == (8, 0, {})
    classes, confidence = one_scene(data, tiles, tmp_path)
    for tile in grid.tiles:
        w = tile.window
        region = np.s_[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        with rasterio.open(out / f"{tile.name}.classes.tif") as src:
            assert src.transform == grid.transform @ Affine.translation(w.col_off, w.row_off)
            assert (src.read(1) == classes[region]).all()
        assert (read(out / f"{tile.name}.confidence.tif") == confidence[region]).all()
    layers = predictor.publish_mosaic()
    with rasterio.open(layers["classes"]) as src:
        assert src.shape == classes.shape and (src.read(1) == classes).all()
        assert src.colormap(1)[0][:3] == data.SPEC.classes.colors[0]
    missing = np.s_[2 * 48 :, :48]
    assert (classes[missing] == 255).all()
    again = predictor.run(Workers(), keep_going=False, progress=False)
    assert (again.done, again.skipped) == (0, 8)


def test_tiles_on_other_grids_are_refused(tiles: list[Path], tmp_path: Path) -> None:
    odd = tmp_path / "odd.tif"
    with rasterio.open(tiles[0]) as src:
        profile = src.profile | {"transform": src.transform @ Affine.translation(0.5, 0)}
        with rasterio.open(odd, "w", **profile) as dst:
            dst.write(src.read())
    with pytest.raises(AlignmentError, match=r"odd\.tif: is not on the mosaic's pixel grid"):
        mosaic_grid([*tiles, odd])
    other = tmp_path / "other.tif"
    with rasterio.open(tiles[0]) as src:
        pixels, profile = src.read(), src.profile | {"crs": "EPSG:32633"}
    with rasterio.open(other, "w", **profile) as dst:
        dst.write(pixels)
    with pytest.raises(AlignmentError, match=r"other\.tif: has CRS"):
        mosaic_grid([*tiles, other])


def test_tile_arguments(tiles: list[Path], tmp_path: Path) -> None:
    listing = tmp_path / "tiles.txt"
    listing.write_text("\n".join(f"tiles/{p.name}" for p in tiles) + "\n")
    vrt = tmp_path / "tiles" / "all.vrt"
    vrt.write_text(vrt_xml(mosaic_grid(tiles), vrt.parent))
    assert expand_tiles([f"@{listing}"]) == [tmp_path / "tiles" / p.name for p in tiles]
    assert expand_tiles([str(tmp_path / "tiles" / "tile_*.tif")]) == sorted(tiles)
    assert [p.resolve() for p in expand_tiles([vrt])] == [p.resolve() for p in tiles]


def geoct(*args: str, env: dict[str, str] | None = None, runner: list[str] | None = None):
    command = runner or [sys.executable, "-m", "geoct"]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        cwd=Path(__file__).resolve().parents[2],
    )


def cli_args(tiles: list[Path], out: Path, checkpoint: Path) -> list[str]:
    return [
        "predict", *map(str, tiles), "--mosaic", str(out), "--checkpoint", str(checkpoint),
        "--window", "64", "--batch-size", "2", "--device", "cpu", "--quiet", "--confidence",
    ]  # fmt: skip


def tile_files(out: Path) -> dict[str, np.ndarray]:
    return {p.name: read(p) for p in sorted(out.glob("tile_*.classes.tif"))}


def test_cli_resumes_and_refuses_another_checkpoint(
    data: ModuleType, checkpoint: Path, tiles: list[Path], tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    args = cli_args(tiles, out, checkpoint)
    assert main([*args, "--vector", "--stac"]) == 0, capsys.readouterr().err
    first = tile_files(out)
    assert len(first) == 8 and (out / "mosaic.classes.vrt").exists()
    assert (out / "mosaic.classes.qml").exists()
    assert "8 predicted, 0 skipped" in capsys.readouterr().out
    collection = json.loads((out / "collection.json").read_text())
    assert collection["type"] == "Collection"
    assert sum(link["rel"] == "item" for link in collection["links"]) == 8
    polygons = __import__("geopandas").read_file(
        out / "mosaic.polygons.gpkg", layer="mosaic.polygons"
    )
    assert len(polygons) > 0
    for name in ("tile_01.classes.tif", "tile_22.classes.tif"):
        (out / name).unlink()
    (out / "tile_22.confidence.tif").unlink()
    assert main([*args, "--vector", "--stac"]) == 0
    assert "2 predicted, 6 skipped" in capsys.readouterr().out
    assert tile_files(out).keys() == first.keys()
    assert all((tile_files(out)[k] == v).all() for k, v in first.items())
    other = data.save_checkpoint(tmp_path / "other.ckpt")
    assert main(cli_args(tiles, out, other)) == 2
    assert "another checkpoint" in capsys.readouterr().err


def test_killed_run_is_completed(checkpoint: Path, tiles: list[Path], tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert geoct(*cli_args(tiles, reference, checkpoint)).returncode == 0
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "geoct", *cli_args(tiles, out, checkpoint)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while proc.poll() is None and not list(out.glob("tile_*.classes.tif")):
            pass
    finally:
        proc.kill()
        proc.wait()
    done = sum(not publishing_journal(p).exists() for p in out.glob("tile_*.classes.tif"))
    rerun = geoct(*cli_args(tiles, out, checkpoint))
    assert rerun.returncode == 0, rerun.stderr
    assert f"{8 - done} predicted, {done} skipped" in rerun.stdout
    expected = tile_files(reference)
    assert tile_files(out).keys() == expected.keys()
    assert all((tile_files(out)[k] == v).all() for k, v in expected.items())
    assert not list(out.glob(".*"))


def test_torchrun_two_processes_equal_one(checkpoint: Path, tiles: list[Path], tmp_path: Path):
    single = tmp_path / "single"
    assert geoct(*cli_args(tiles, single, checkpoint)).returncode == 0
    double = tmp_path / "double"
    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone",
              "--nproc-per-node", "2", "-m", "geoct"]  # fmt: skip
    proc = geoct(*cli_args(tiles, double, checkpoint), runner=runner)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "8 predicted, 0 skipped" in proc.stdout and "rank 1:" in proc.stdout
    expected = tile_files(single)
    assert tile_files(double).keys() == expected.keys()
    assert all((tile_files(double)[k] == v).all() for k, v in expected.items())


class _ColourHeightModel(torch.nn.Module):
    """The colour model's logits, plus the height channel pushing classes 0 and 1 apart."""

    def __init__(self, colour: torch.nn.Module) -> None:
        super().__init__()
        self.colour = colour

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.colour(x[:, :4]) * 0.1
        h = x[:, 4:5]
        return logits + torch.cat([-h, h, *(torch.zeros_like(h) for _ in range(4))], dim=1)


def test_dsm_mosaic_equals_one_scene_bit_for_bit(
    data: ModuleType, mosaic_data: ModuleType, tiles: list[Path], tmp_path: Path
) -> None:
    """One DSM larger than the mosaic, on its grid, is read at each tile's offset, unresampled."""
    grid = mosaic_grid(tiles)
    rng = np.random.default_rng(5)
    height = (rng.random((grid.height + 9, grid.width + 4)) * 20).astype(np.float32)
    dsm = tmp_path / "dsm.tif"
    data.write_raster(dsm, height, transform=grid.transform @ Affine.translation(-3, -6))
    model = _ColourHeightModel(data.ColourModel())
    out = tmp_path / "out"
    out.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", ".*checkpoint's GSD")
        predictor = MosaicPredictor(model, data.HEIGHT_SPEC, grid, out, OPTIONS, dsm=dsm)
        workers = Workers()
        predictor.prepare(workers)
        run = predictor.run(workers, keep_going=False, progress=False)
        vrt = tmp_path / "all.vrt"
        vrt.write_text(vrt_xml(grid, tmp_path))
        whole = predict_scene(model, data.HEIGHT_SPEC, vrt, dsm=dsm, options=OPTIONS)
    assert (run.done, run.failed) == (8, {})
    classes, confidence = read(whole.outputs["classes"]), read(whole.outputs["confidence"])
    assert 0 < (classes == 1).mean() < 1
    for tile in grid.tiles:
        w = tile.window
        region = np.s_[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        assert (read(out / f"{tile.name}.classes.tif") == classes[region]).all()
        assert (read(out / f"{tile.name}.confidence.tif") == confidence[region]).all()


def test_cli_mosaic_with_dsm_equals_one_scene(
    data: ModuleType, tiles: list[Path], tmp_path: Path, capsys
) -> None:
    checkpoint = data.save_checkpoint(tmp_path / "height.ckpt", data.HEIGHT_SPEC)
    grid = mosaic_grid(tiles)
    rng = np.random.default_rng(6)
    dsm = tmp_path / "dsm.tif"
    height = (rng.random((grid.height, grid.width)) * 20).astype(np.float32)
    data.write_raster(dsm, height, transform=grid.transform)
    out = tmp_path / "out"
    assert main([*cli_args(tiles, out, checkpoint), "--dsm", str(dsm)]) == 0, (
        capsys.readouterr().err
    )
    vrt = tmp_path / "all.vrt"
    vrt.write_text(vrt_xml(grid, tmp_path))
    args = ["predict", str(vrt), "--checkpoint", str(checkpoint), "--dsm", str(dsm)]
    assert main([*args, "--window", "64", "--batch-size", "2", "--device", "cpu", "--quiet"]) == 0
    whole = read(tmp_path / "all.classes.tif")
    for tile in grid.tiles:
        w = tile.window
        region = np.s_[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        assert (read(out / f"{tile.name}.classes.tif") == whole[region]).all()
    assert 0 < (whole == 255).mean() < 0.5
