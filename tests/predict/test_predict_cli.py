import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import rasterio
import torch

from geoct.cli import main
from geoct.geodesy import ground_pixel_size


def run_geoct(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "geoct", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


def test_cli_predicts_several_scenes(data: ModuleType, checkpoint: Path, tmp_path: Path) -> None:
    for name in ("a", "b"):
        data.write_scene(tmp_path / f"{name}.tif", 70, 90, seed=len(name))
    proc = run_geoct(
        "predict",
        str(tmp_path / "a.tif"),
        str(tmp_path / "b.tif"),
        "--checkpoint",
        str(checkpoint),
        "--confidence",
        "--probabilities",
        "--window",
        "64",
        "--overlap",
        "16",
        "--batch-size",
        "2",
        "--device",
        "cpu",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("MP/s") == 2
    for name in ("a", "b"):
        with rasterio.open(tmp_path / f"{name}.tif") as scene:
            for kind in ("classes", "confidence", "probabilities"):
                with rasterio.open(tmp_path / f"{name}.{kind}.tif") as out:
                    assert (out.crs, out.transform, out.shape) == (
                        scene.crs,
                        scene.transform,
                        scene.shape,
                    )
        with rasterio.open(tmp_path / f"{name}.classes.tif") as out:
            assert out.tags()["CHECKPOINT"] == "tiny.ckpt"
            assert len(out.tags()["CHECKPOINT_SHA256"]) == 64
            assert out.read().max() < 6
        assert (tmp_path / f"{name}.classes.qml").exists()


def test_cli_checkpoint_from_environment(
    data: ModuleType, checkpoint: Path, tmp_path: Path
) -> None:
    data.write_scene(tmp_path / "scene.tif", 40, 40)
    out = tmp_path / "custom.tif"
    env = {"GEOCT_CHECKPOINT": str(checkpoint)}
    args = ("predict", str(tmp_path / "scene.tif"), "--output", str(out), "--quiet")
    assert run_geoct(*args, env=env).returncode == 0
    assert out.exists()
    proc = run_geoct(*args, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "already exists" in proc.stderr


def predict_error(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert main(["predict", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("geoct: error: ") and err.count("\n") == 1
    return err


def test_cli_bad_input(
    data: ModuleType,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GEOCT_CHECKPOINT", raising=False)
    data.write_scene(tmp_path / "scene.tif", 20, 20)
    scene = str(tmp_path / "scene.tif")
    assert "--checkpoint" in predict_error(capsys, scene)
    not_geoct = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}}, not_geoct)
    assert "not a geoct checkpoint" in predict_error(capsys, scene, "--checkpoint", str(not_geoct))
    ckpt = ("--checkpoint", str(checkpoint))
    assert "not found" in predict_error(capsys, str(tmp_path / "nope.tif"), *ckpt)
    (tmp_path / "notes.tif").write_text("hello")
    assert "not a raster" in predict_error(capsys, str(tmp_path / "notes.tif"), *ckpt)
    assert "single scene" in predict_error(capsys, scene, scene, "--output", "x.tif", *ckpt)
    out = str(tmp_path / "missing" / "x.tif")
    assert "does not exist" in predict_error(capsys, scene, "--output", out, *ckpt)
    assert (
        "CUDA" in predict_error(capsys, scene, "--device", "cuda", *ckpt)
        or torch.cuda.is_available()
    )
    assert list(tmp_path.glob("scene.*")) == [tmp_path / "scene.tif"]


def test_cli_vector_stac_and_report(data: ModuleType, checkpoint: Path, tmp_path: Path) -> None:
    import json

    import geopandas as gpd
    import pystac

    scene = tmp_path / "scene.tif"
    data.write_scene(scene, 80, 70, seed=3)
    out = tmp_path / "out" / "scene.classes.tif"
    out.parent.mkdir()
    args = ["predict", str(scene), "--checkpoint", str(checkpoint), "--output", str(out)]
    args += ["--confidence", "--vector", "--stac", "--report", str(tmp_path / "run.json")]
    args += ["--window", "64", "--device", "cpu", "--quiet"]
    proc = run_geoct(*args)
    assert proc.returncode == 0, proc.stderr
    assert "polygonising" not in proc.stderr
    polygons = gpd.read_file(out.with_name("scene.polygons.gpkg"), layer="scene.polygons")
    with rasterio.open(out) as src:
        assert polygons.crs == src.crs
        dx, dy = ground_pixel_size(src.crs, src.transform, src.width, src.height)
        labelled = int((src.read(1) != 255).sum()) * dx * dy
    assert polygons["area_m2"].sum() == pytest.approx(labelled, rel=1e-4)
    assert polygons["mean_confidence"].between(0, 1).all()
    item = pystac.Item.from_file(str(out.with_name("scene.item.json")))
    assert {"classes", "confidence", "polygons"} <= set(item.assets)
    assert len(item.properties["geoct:checkpoint_sha256"]) == 64
    report = json.loads((tmp_path / "run.json").read_text())
    assert (report["scenes"][0]["height"], report["scenes"][0]["width"]) == (80, 70)
    assert report["scenes"][0]["outputs"]["polygons"].endswith("scene.polygons.gpkg")
    assert report["failed"] == []
    again = run_geoct(*args)
    assert again.returncode == 2
    assert "already exists" in again.stderr and len(again.stderr.strip().splitlines()) == 1
