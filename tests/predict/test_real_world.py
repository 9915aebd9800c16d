"""Rasters as GIS users have them: GCPs, RGBA, uint16, 0..1 floats, lon/lat, rotated grids."""

import dataclasses
import json
import math
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp

from geoct.cli import main
from geoct.errors import InputError
from geoct.predict import values as value_checks
from geoct.predict.engine import PredictOptions, predict_scene, scene_grid
from geoct.predict.reader import SceneReader
from geoct.predict.values import ValueOptions

FAST = PredictOptions(window=32, overlap=8, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def range_spec(data: ModuleType):
    """The colour model's spec with a recorded uint8 training range."""
    return dataclasses.replace(data.SPEC, dtype="uint8", value_range=((10.0, 250.0),) * 4)


def outputs_in(folder: Path, scene: str) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name != scene)


def predict_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    code = main(["predict", *args, "--window", "64", "--device", "cpu", "--quiet"])
    return code, capsys.readouterr().err


def read_classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_gcp_raster_is_refused(data: ModuleType, checkpoint: Path, tmp_path: Path, capsys) -> None:
    scene = tmp_path / "gcps.tif"
    pixels = data.COLOURS[data.class_map(40, 40)].transpose(2, 0, 1).copy()
    gcps = [
        GroundControlPoint(row=r, col=c, x=368000 + c * 0.05, y=5808000 - r * 0.05)
        for r, c in ((0, 0), (0, 40), (40, 0), (40, 40))
    ]
    profile = dict(driver="GTiff", width=40, height=40, count=4, dtype="uint8")
    with rasterio.open(scene, "w", photometric="MINISBLACK", **profile) as dst:
        dst.write(pixels)
        dst.gcps = (gcps, "EPSG:25833")
    points = "".join(
        f'<GCP Id="{i}" Pixel="{g.col}" Line="{g.row}" X="{g.x}" Y="{g.y}"/>'
        for i, g in enumerate(gcps)
    )
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">gcps.tif</SourceFilename>'
        f"<SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b in range(1, 5)
    )
    no_crs = tmp_path / "gcps-no-crs.vrt"
    no_crs.write_text(
        f'<VRTDataset rasterXSize="40" rasterYSize="40"><GCPList>{points}</GCPList>'
        f"{bands}</VRTDataset>"
    )
    for path in (scene, no_crs):
        code, err = predict_cli(capsys, str(path), "--checkpoint", str(checkpoint))
        assert code == 2
        assert "4 ground control points" in err and "gdalwarp" in err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [no_crs.name, scene.name]


def test_uint16_and_unit_floats_are_refused_then_scaled(
    data: ModuleType, range_spec, tmp_path: Path
) -> None:
    byte = tmp_path / "byte.tif"
    data.write_scene(byte, 50, 60, seed=2)
    with rasterio.open(byte) as src:
        pixels = src.read()
    reference = predict_scene(data.ColourModel(), range_spec, byte, options=FAST)
    expected = read_classes(reference.outputs["classes"])
    cases = {
        "uint16.tif": (pixels.astype(np.uint16) * 4, (0.25,)),
        "unit.tif": (pixels.astype(np.float32) / 255, (255.0,)),
    }
    for name, (values, scale) in cases.items():
        data.write_raster(tmp_path / name, values)
        with pytest.raises(InputError, match=r"out of the range .*trained 10\.\.250"):
            predict_scene(data.ColourModel(), range_spec, tmp_path / name, options=FAST)
        assert not (tmp_path / name.replace(".tif", ".classes.tif")).exists()
        options = dataclasses.replace(FAST, values=ValueOptions(scale=scale))
        result = predict_scene(data.ColourModel(), range_spec, tmp_path / name, options=options)
        assert (read_classes(result.outputs["classes"]) == expected).all()
        options = dataclasses.replace(FAST, values=ValueOptions(force=True), overwrite=True)
        with pytest.warns(UserWarning, match="--force"):
            predict_scene(data.ColourModel(), range_spec, tmp_path / name, options=options)


def test_value_check_samples_beside_prediction_and_refuses_before_publishing(
    data: ModuleType, range_spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = []
    sample = value_checks.sample_bands

    def recording(src, indexes):
        threads.append(threading.current_thread().name)
        return sample(src, indexes)

    monkeypatch.setattr(value_checks, "sample_bands", recording)
    data.write_scene(tmp_path / "byte.tif", 150, 130, seed=5)
    with rasterio.open(tmp_path / "byte.tif") as src:
        data.write_raster(tmp_path / "uint16.tif", src.read().astype(np.uint16) * 4)
    result = predict_scene(data.ColourModel(), range_spec, tmp_path / "byte.tif", options=FAST)
    assert threads == ["value-check"] and result.windows > 4 * FAST.batch_size
    with pytest.raises(InputError, match=r"uint16\.tif: uint16 values out of the range"):
        predict_scene(data.ColourModel(), range_spec, tmp_path / "uint16.tif", options=FAST)
    assert threads == ["value-check"] * 2
    written = {"byte.classes.tif", "byte.classes.tif.aux.xml", "byte.classes.qml"}
    assert {p.name for p in tmp_path.iterdir()} == {"byte.tif", "uint16.tif", *written}
    with SceneReader(tmp_path / "byte.tif", range_spec) as reader:
        assert reader.value_check is None
    assert threads[-1] == "MainThread"
    with pytest.raises(InputError, match="out of the range"):
        SceneReader(tmp_path / "uint16.tif", range_spec)


def test_same_range_float_and_old_checkpoints(data: ModuleType, range_spec, tmp_path) -> None:
    byte = tmp_path / "byte.tif"
    data.write_scene(byte, 40, 40, seed=4)
    with rasterio.open(byte) as src:
        data.write_raster(tmp_path / "float.tif", src.read().astype(np.float32))
        data.write_raster(tmp_path / "unit.tif", src.read().astype(np.float32) / 255)
    for spec in (range_spec, data.SPEC):
        ref = predict_scene(data.ColourModel(), spec, byte, options=FAST)
        same = predict_scene(data.ColourModel(), spec, tmp_path / "float.tif", options=FAST)
        assert (read_classes(ref.outputs["classes"]) == read_classes(same.outputs["classes"])).all()
        ref.outputs["classes"].unlink()
        same.outputs["classes"].unlink()
        with pytest.raises(InputError, match="out of the range"):
            predict_scene(data.ColourModel(), spec, tmp_path / "unit.tif", options=FAST)
    rescaled = dataclasses.replace(FAST, values=ValueOptions(rescale=True))
    assert predict_scene(data.ColourModel(), data.SPEC, tmp_path / "unit.tif", options=rescaled)


def _lonlat_transform(lat: float, metres: float) -> Affine:
    dx = metres / (111_320 * math.cos(math.radians(lat)))
    return Affine(dx, 0, 13.0, 0, -metres / 110_800, lat)


def test_lonlat_scene_gsd_in_metres(data: ModuleType, tmp_path: Path, recwarn) -> None:
    scene = tmp_path / "lonlat.tif"
    transform = _lonlat_transform(52.4, 0.05)
    data.write_scene(scene, 60, 60, crs="EPSG:4326", transform=transform)
    result = predict_scene(data.ColourModel(), data.SPEC, scene, options=FAST)
    assert not [w for w in recwarn if "pixel size" in str(w.message)]
    with rasterio.open(result.outputs["classes"]) as out:
        assert out.crs.to_epsg() == 4326 and out.transform == transform
        x, y = (float(v) for v in out.tags()["SCENE_GSD"].split("x"))
    assert x == pytest.approx(0.05, rel=0.01) and y == pytest.approx(0.05, rel=0.01)
    coarse = tmp_path / "coarse.tif"
    data.write_scene(coarse, 40, 40, crs="EPSG:4326", transform=_lonlat_transform(52.4, 0.2))
    options = dataclasses.replace(FAST, match_gsd=True)
    with SceneReader(coarse, data.SPEC) as reader:
        grid = scene_grid(reader, data.SPEC, options)
    assert grid.window == (8, 8)
    assert predict_scene(data.ColourModel(), data.SPEC, coarse, options=options)


@pytest.mark.parametrize("angle", [30, 90])
def test_rotated_grid_pixel_size(data: ModuleType, tmp_path: Path, angle: float) -> None:
    scene = tmp_path / "rotated.tif"
    transform = (
        Affine.translation(368000, 5808000) @ Affine.rotation(angle) @ Affine.scale(0.1, -0.1)
    )
    data.write_scene(scene, 40, 40, transform=transform)
    with pytest.warns(UserWarning, match=r"ground pixel size 0\.1 x 0\.1 m"):
        predict_scene(data.ColourModel(), data.SPEC, scene, options=FAST)
    options = dataclasses.replace(FAST, match_gsd=True, overwrite=True)
    with SceneReader(scene, data.SPEC) as reader:
        assert scene_grid(reader, data.SPEC, options).window == (16, 16)
    result = predict_scene(data.ColourModel(), data.SPEC, scene, options=options)
    with rasterio.open(result.outputs["classes"]) as out:
        assert out.transform.almost_equals(transform, precision=1e-9)


def test_extreme_gsd_ratio_is_refused(data: ModuleType, checkpoint: Path, tmp_path, capsys) -> None:
    scene = tmp_path / "landsat.tif"
    data.write_scene(scene, 40, 40, transform=Affine(30, 0, 368000, 0, -30, 5808000))
    code, err = predict_cli(capsys, str(scene), "--checkpoint", str(checkpoint), "--match-gsd")
    assert code == 2 and "up to 8x" in err and len(err.strip().splitlines()) == 1
    assert outputs_in(tmp_path, scene.name) == []


def test_output_never_replaces_an_input(
    data: ModuleType, checkpoint: Path, tmp_path: Path, capsys
) -> None:
    scene = tmp_path / "ortho.tif"
    data.write_scene(scene, 30, 30)
    before = scene.read_bytes()
    for target in (scene, checkpoint):
        args = [str(scene), "--checkpoint", str(checkpoint), "--output", str(target)]
        code, err = predict_cli(capsys, *args, "--overwrite")
        assert code == 2 and "is an input of this run" in err
    args = [str(scene), str(tmp_path / "ortho.classes.tif"), "--checkpoint", str(checkpoint)]
    data.write_scene(tmp_path / "ortho.classes.tif", 30, 30)
    code, err = predict_cli(capsys, *args, "--overwrite")
    assert code == 2 and "is an input of this run" in err
    assert scene.read_bytes() == before


def _write_rgba(path: Path, data: ModuleType, description: str | None = None) -> None:
    pixels = data.COLOURS[data.class_map(30, 30)].transpose(2, 0, 1).copy()
    profile = dict(driver="GTiff", width=30, height=30, count=4, dtype="uint8", crs=data.CRS)
    with rasterio.open(path, "w", transform=data.TRANSFORM, photometric="RGB", **profile) as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        dst.write(pixels)
        if description:
            dst.set_band_description(4, description)


def test_alpha_band_is_never_data(data: ModuleType, tmp_path: Path) -> None:
    _write_rgba(tmp_path / "rgba.tif", data)
    with pytest.raises(InputError, match="band 4 is an alpha band"):
        predict_scene(data.ColourModel(), data.SPEC, tmp_path / "rgba.tif", options=FAST)
    assert not (tmp_path / "rgba.classes.tif").exists()
    _write_rgba(tmp_path / "named.tif", data, description="IR")
    with SceneReader(tmp_path / "named.tif", data.SPEC) as reader:
        assert reader.indexes == [1, 2, 3, 4]
    five = tmp_path / "five.tif"
    pixels = data.COLOURS[data.class_map(30, 30)].transpose(2, 0, 1)
    alpha = np.full((1, 30, 30), 255, np.uint8)
    alpha[0, :, :10] = 0
    profile = dict(driver="GTiff", width=30, height=30, count=5, dtype="uint8", crs=data.CRS)
    with rasterio.open(five, "w", transform=data.TRANSFORM, **profile) as dst:
        dst.colorinterp = [ColorInterp.gray] * 4 + [ColorInterp.alpha]
        dst.write(np.concatenate([pixels, alpha]))
    with SceneReader(five, data.SPEC) as reader:
        assert reader.indexes == [1, 2, 3, 4] and reader.mask_mode == "alpha"
    result = predict_scene(data.ColourModel(), data.SPEC, five, options=FAST)
    classes = read_classes(result.outputs["classes"])
    assert (classes[:, :10] == 255).all() and (classes[:, 10:] != 255).all()


def test_missing_scene_is_reported_before_the_model_loads(
    data: ModuleType, tmp_path: Path, capsys
) -> None:
    fake = tmp_path / "not-a-checkpoint.ckpt"
    fake.write_bytes(b"not a checkpoint")
    code, err = predict_cli(capsys, str(tmp_path / "missing.tif"), "--checkpoint", str(fake))
    assert code == 2 and "missing.tif: file not found" in err


def test_interrupted_follow_up_leaves_nothing(
    data: ModuleType, checkpoint: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import geoct.export.stac

    scene = tmp_path / "scene.tif"
    data.write_scene(scene, 40, 40)
    args = [str(scene), "--checkpoint", str(checkpoint), "--confidence", "--vector", "--stac"]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(geoct.export.stac, "write_stac_item", interrupted)
    code, _ = predict_cli(capsys, *args)
    assert code == 130
    assert outputs_in(tmp_path, scene.name) == []
    monkeypatch.undo()
    code, err = predict_cli(capsys, *args)
    assert code == 0, err
    names = {p.name for p in outputs_in(tmp_path, scene.name)}
    assert {"scene.classes.tif", "scene.polygons.gpkg", "scene.item.json"} <= names
    assert not [n for n in names if n.startswith(".")]


def test_keep_going_lists_failures(data: ModuleType, checkpoint: Path, tmp_path: Path, capsys):
    data.write_scene(tmp_path / "a.tif", 30, 30)
    data.write_raster(tmp_path / "b.tif", np.zeros((3, 30, 30), np.uint8))
    data.write_scene(tmp_path / "c.tif", 30, 30, seed=1)
    scenes = [str(tmp_path / n) for n in ("a.tif", "b.tif", "c.tif")]
    code, err = predict_cli(capsys, *scenes, "--checkpoint", str(checkpoint))
    assert code == 2 and "b.tif: has 3 band(s)" in err
    assert not (tmp_path / "c.classes.tif").exists()
    report = tmp_path / "run.json"
    args = [*scenes, "--checkpoint", str(checkpoint), "--keep-going", "--report", str(report)]
    code, err = predict_cli(capsys, *args, "--overwrite")
    assert code == 2 and "1 of 3 scenes failed: b.tif" in err
    assert (tmp_path / "a.classes.tif").exists() and (tmp_path / "c.classes.tif").exists()
    assert not (tmp_path / "b.classes.tif").exists()
    run = json.loads(report.read_text())
    assert [Path(s["scene"]).name for s in run["scenes"]] == ["a.tif", "c.tif"]
    assert run["failed"][0]["scene"].endswith("b.tif") and "3 band" in run["failed"][0]["error"]


def test_class_names_attribute_table_and_probability_nodata(data: ModuleType, tmp_path) -> None:
    scene = tmp_path / "scene.tif"
    data.write_scene(scene, 40, 40, nodata=0)
    options = dataclasses.replace(FAST, probabilities=True)
    result = predict_scene(data.ColourModel(), data.SPEC, scene, options=options)
    aux = ET.parse(f"{result.outputs['classes']}.aux.xml")
    rows = [[f.text for f in row] for row in aux.iter("Row")]
    names, colours = data.SPEC.classes.names, data.SPEC.classes.colors
    assert rows == [
        [str(i), n, *map(str, c)] for i, (n, c) in enumerate(zip(names, colours, strict=True))
    ]
    with rasterio.open(result.outputs["probabilities"]) as src:
        assert src.nodata == 255 and src.count == len(names)
        assert all(flags != [rasterio.enums.MaskFlags.per_dataset] for flags in src.mask_flag_enums)
        assert src.read().max() <= 255
