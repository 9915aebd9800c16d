import hashlib
import shutil
import subprocess
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from geoct.errors import AlignmentError, ConfigError, InputError, OutputExistsError
from geoct.predict.engine import PredictOptions, predict_scene
from geoct.predict.writer import CLASS_NODATA

pytestmark = pytest.mark.filterwarnings("ignore:.*checkpoint's GSD:UserWarning")

FAST = PredictOptions(window=64, overlap=16, progress=False)


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.mark.parametrize(
    "shape, window, overlap",
    [
        ((217, 300), 64, 16),
        ((217, 300), 64, 0),
        ((217, 300), 48, 40),
        ((217, 300), 37, 5),
        ((30, 45), 64, 16),
        ((1, 70), 16, 4),
    ],
)
def test_colour_model_reproduced_exactly(data: ModuleType, tmp_path: Path, shape, window, overlap):
    truth = data.write_scene(tmp_path / "scene.tif", *shape)
    options = PredictOptions(window=window, overlap=overlap, progress=False, batch_size=3)
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=options)
    classes = read(result.outputs["classes"])[0]
    np.testing.assert_array_equal(classes, truth)
    assert result.windows_run == result.windows


def test_exact_georeferencing(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 217, 300)
    options = PredictOptions(
        window=64, overlap=16, progress=False, confidence=True, probabilities=True
    )
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=options)
    with rasterio.open(tmp_path / "scene.tif") as scene:
        for kind in ("classes", "confidence", "probabilities"):
            with rasterio.open(result.outputs[kind]) as out:
                assert out.crs == scene.crs
                assert out.transform == scene.transform
                assert tuple(out.transform) == tuple(data.TRANSFORM)
                assert out.shape == scene.shape


def test_default_output_names(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 40, 50)
    options = PredictOptions(
        window=64, overlap=16, progress=False, confidence=True, probabilities=True
    )
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=options)
    names = {k: p.name for k, p in result.outputs.items()}
    assert names["classes"] == "scene.classes.tif"
    assert names["confidence"] == "scene.confidence.tif"
    assert names["probabilities"] == "scene.probabilities.tif"
    assert names["style"] == "scene.classes.qml"
    assert "PalettedRasterRenderer" in (tmp_path / "scene.classes.qml").read_text() or (
        tmp_path / "scene.classes.qml"
    ).read_text().startswith("<")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert "scene.tif" in result.summary() and "MP/s" in result.summary()


def test_gis_ready_outputs(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 217, 300)
    options = PredictOptions(
        window=64, overlap=16, progress=False, confidence=True, probabilities=True
    )
    result = predict_scene(
        data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=options, checkpoint=None
    )
    names = data.SPEC.classes.names
    with rasterio.open(result.outputs["classes"]) as src:
        assert src.profile["tiled"] and src.block_shapes[0] == (512, 512)
        assert src.compression.name.lower() == "deflate"
        assert src.overviews(1)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.nodata == CLASS_NODATA
        cmap = src.colormap(1)
        for i, colour in enumerate(data.SPEC.classes.colors):
            assert cmap[i][:3] == colour
        assert src.tags()["WINDOW"] == "64x64" and src.tags()["OVERLAP"] == "16x16"
        assert "GEOCT_VERSION" in src.tags()
        assert src.tags(1)["CLASS_0"] == names[0]
    aux = ET.parse(f"{result.outputs['classes']}.aux.xml")
    assert tuple(c.text for c in aux.iter("Category")) == names
    if shutil.which("gdalinfo"):
        info = subprocess.run(
            ["gdalinfo", result.outputs["classes"]], capture_output=True, text=True
        )
        assert "Categories:" in info.stdout and names[1] in info.stdout
    with rasterio.open(result.outputs["probabilities"]) as src:
        assert src.descriptions == names
        assert src.overviews(1)
        assert src.tags(ns="IMAGE_STRUCTURE").get("OVERVIEW_RESAMPLING", "AVERAGE") == "AVERAGE"
        sums = src.read().astype(int).sum(axis=0)
    assert np.abs(sums - 255).max() <= data.SPEC.classes.num_classes // 2 + 1
    confidence = read(result.outputs["confidence"])[0]
    assert confidence.min() >= 255 // data.SPEC.classes.num_classes


def test_provenance_records_checkpoint(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 20, 20)
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"weights")
    result = predict_scene(
        data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=FAST, checkpoint=ckpt
    )
    with rasterio.open(result.outputs["classes"]) as src:
        tags = src.tags()
    assert tags["CHECKPOINT"] == "model.ckpt"
    assert tags["CHECKPOINT_SHA256"] == hashlib.sha256(b"weights").hexdigest()


def test_nodata_pixels_and_windows(data: ModuleType, tmp_path: Path) -> None:
    classes = data.class_map(200, 200)
    image = data.COLOURS[classes].transpose(2, 0, 1).copy()
    image[:, :100, :] = 0
    image[:, 150, 150] = 0
    data.write_raster(tmp_path / "scene.tif", image, nodata=0)
    options = PredictOptions(
        window=32, overlap=8, progress=False, probabilities=True, confidence=True
    )
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=options)
    out = read(result.outputs["classes"])[0]
    nodata = (image == 0).all(axis=0)
    assert (out[nodata] == CLASS_NODATA).all()
    np.testing.assert_array_equal(out[~nodata], classes[~nodata])
    assert result.windows_run < result.windows
    assert (read(result.outputs["confidence"])[0][nodata] == 0).all()
    with rasterio.open(result.outputs["probabilities"]) as src:
        assert (src.read_masks(1)[nodata] == 0).all() and (src.read_masks(1)[~nodata] == 255).all()


def test_mask_band_marks_nodata(data: ModuleType, tmp_path: Path) -> None:
    truth = data.write_scene(tmp_path / "scene.tif", 60, 60)
    with rasterio.open(tmp_path / "scene.tif", "r+") as dst:
        mask = np.full((60, 60), 255, np.uint8)
        mask[:, :10] = 0
        dst.write_mask(mask)
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=FAST)
    out = read(result.outputs["classes"])[0]
    assert (out[:, :10] == CLASS_NODATA).all()
    np.testing.assert_array_equal(out[:, 10:], truth[:, 10:])


def test_vrt_mosaic_predicts_as_one_scene(data: ModuleType, tmp_path: Path) -> None:
    left = data.write_scene(tmp_path / "a.tif", 50, 40, seed=1)
    t = data.TRANSFORM
    right = data.write_scene(
        tmp_path / "b.tif", 50, 30, seed=2, transform=t @ Affine.translation(40, 0)
    )
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">'
        + "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="50"/>'
            f'<DstRect xOff="{x}" yOff="0" xSize="{w}" ySize="50"/></SimpleSource>'
            for name, x, w in (("a.tif", 0, 40), ("b.tif", 40, 30))
        )
        + "</VRTRasterBand>"
        for b in range(1, 5)
    )
    gt = ", ".join(repr(v) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    (tmp_path / "mosaic.vrt").write_text(
        f'<VRTDataset rasterXSize="70" rasterYSize="50"><SRS>{data.CRS}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "mosaic.vrt", options=FAST)
    assert result.outputs["classes"].name == "mosaic.classes.tif"
    np.testing.assert_array_equal(read(result.outputs["classes"])[0], np.hstack([left, right]))


def test_gsd_mismatch_warns(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 20, 20)
    with pytest.warns(UserWarning, match="--match-gsd"):
        predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=FAST)


def test_tta_and_match_gsd(data: ModuleType, tmp_path: Path) -> None:
    truth = data.write_scene(tmp_path / "scene.tif", 80, 90)
    options = PredictOptions(window=32, overlap=8, progress=False, tta=True, match_gsd=True)
    result = predict_scene(data.ColourModel(), data.SPEC, tmp_path / "scene.tif", options=options)
    out = read(result.outputs["classes"])[0]
    assert out.shape == truth.shape
    assert (out == truth).mean() > 0.8
    with rasterio.open(result.outputs["classes"]) as src:
        assert src.tags()["WINDOW"] == "23x32" and src.tags()["TTA"] == "True"


class HeightModel(torch.nn.Module):
    """Class 1 where the height channel is high, else class 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x[:, -1:]
        return torch.cat([-h, h, *(torch.full_like(h, -9) for _ in range(4))], dim=1)


def test_dsm_on_another_grid_is_warped(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 60, 80)
    height = np.zeros((30, 40), np.float32)
    height[:, 20:] = 20.0
    t = data.TRANSFORM
    dsm_transform = Affine(t.a * 2, 0, t.c, 0, t.e * 2, t.f)
    data.write_raster(tmp_path / "dsm.tif", height, transform=dsm_transform, nodata=-9999)
    with pytest.warns(UserWarning, match="warping"):
        result = predict_scene(
            HeightModel(),
            data.HEIGHT_SPEC,
            tmp_path / "scene.tif",
            dsm=tmp_path / "dsm.tif",
            options=FAST,
        )
    out = read(result.outputs["classes"])[0]
    assert (out[:, :38] == 0).all() and (out[:, 42:] == 1).all()


def test_dsm_same_grid_no_warning(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 30, 30)
    data.write_raster(tmp_path / "dsm.tif", np.full((30, 30), 20.0, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", ".*checkpoint's GSD")
        result = predict_scene(
            HeightModel(),
            data.HEIGHT_SPEC,
            tmp_path / "scene.tif",
            dsm=tmp_path / "dsm.tif",
            options=PredictOptions(window=64, overlap=16, progress=False),
        )
    assert (read(result.outputs["classes"]) == 1).all()


def test_missing_and_disjoint_dsm(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 30, 30)
    with pytest.raises(ConfigError, match="--dsm"):
        predict_scene(HeightModel(), data.HEIGHT_SPEC, tmp_path / "scene.tif", options=FAST)
    far = data.TRANSFORM @ Affine.translation(10_000, 0)
    data.write_raster(tmp_path / "dsm.tif", np.zeros((30, 30), np.float32), transform=far)
    with pytest.raises(AlignmentError, match="does not overlap"):
        predict_scene(
            HeightModel(),
            data.HEIGHT_SPEC,
            tmp_path / "scene.tif",
            dsm=tmp_path / "dsm.tif",
            options=FAST,
        )


def test_bad_inputs(data: ModuleType, tmp_path: Path) -> None:
    model, spec = data.ColourModel(), data.SPEC
    (tmp_path / "text.tif").write_text("not a raster")
    with pytest.raises(InputError, match="not a raster"):
        predict_scene(model, spec, tmp_path / "text.tif", options=FAST)
    with pytest.raises(InputError, match="not found"):
        predict_scene(model, spec, tmp_path / "missing.tif", options=FAST)
    data.write_raster(tmp_path / "nocrs.tif", np.zeros((4, 10, 10), np.uint8), crs=None)
    with pytest.raises(InputError, match="no CRS"):
        predict_scene(model, spec, tmp_path / "nocrs.tif", options=FAST)
    data.write_raster(tmp_path / "three.tif", np.zeros((3, 10, 10), np.uint8))
    with pytest.raises(InputError, match="3 band"):
        predict_scene(model, spec, tmp_path / "three.tif", options=FAST)
    data.write_scene(tmp_path / "scene.tif", 10, 10)
    predict_scene(model, spec, tmp_path / "scene.tif", options=FAST)
    with pytest.raises(OutputExistsError):
        predict_scene(model, spec, tmp_path / "scene.tif", options=FAST)
    with pytest.raises(InputError, match="folder does not exist"):
        predict_scene(model, spec, tmp_path / "scene.tif", tmp_path / "no" / "x.tif", options=FAST)
    with pytest.raises(ConfigError, match="overlap"):
        predict_scene(
            model,
            spec,
            tmp_path / "scene.tif",
            tmp_path / "o.tif",
            options=PredictOptions(window=16, overlap=16, progress=False),
        )


class Exploding(torch.nn.Module):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.after:
            raise KeyboardInterrupt
        return torch.zeros(x.shape[0], 6, *x.shape[2:])


def test_interrupted_run_leaves_nothing(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 100, 100)
    before = sorted(tmp_path.iterdir())
    options = PredictOptions(window=16, overlap=4, batch_size=2, progress=False, probabilities=True)
    with pytest.raises(KeyboardInterrupt):
        predict_scene(Exploding(3), data.SPEC, tmp_path / "scene.tif", options=options)
    assert sorted(tmp_path.iterdir()) == before


def test_wrong_model_output_is_reported(data: ModuleType, tmp_path: Path) -> None:
    data.write_scene(tmp_path / "scene.tif", 20, 20)
    with pytest.raises(ConfigError, match="logits of shape"):
        predict_scene(torch.nn.Conv2d(4, 3, 1), data.SPEC, tmp_path / "scene.tif", options=FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif"]


def test_dsm_on_the_scene_grid_with_another_extent_is_read_at_an_offset(
    data: ModuleType, tmp_path: Path
) -> None:
    """A larger or partial DSM on the same pixel grid is read unresampled; outside it is nodata."""
    data.write_scene(tmp_path / "scene.tif", 30, 40)
    height = np.zeros((50, 60), np.float32)
    height[:, 7 + 23 :] = 20.0  # scene column 23 on
    data.write_raster(
        tmp_path / "big.tif", height, transform=data.TRANSFORM @ Affine.translation(-7, -5)
    )
    data.write_raster(
        tmp_path / "left.tif", height[5:35, 7:37], transform=data.TRANSFORM, nodata=-9999
    )
    options = PredictOptions(window=16, overlap=4, progress=False, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", ".*checkpoint's GSD")
        big = predict_scene(
            HeightModel(), data.HEIGHT_SPEC, tmp_path / "scene.tif", dsm=tmp_path / "big.tif",
            options=options,
        )  # fmt: skip
        left = predict_scene(
            HeightModel(), data.HEIGHT_SPEC, tmp_path / "scene.tif", dsm=tmp_path / "left.tif",
            output=tmp_path / "left.classes.tif", options=options,
        )  # fmt: skip
    expected = np.zeros((30, 40), np.uint8)
    expected[:, 23:] = 1
    np.testing.assert_array_equal(read(big.outputs["classes"])[0], expected)
    expected[:, 30:] = 255
    np.testing.assert_array_equal(read(left.outputs["classes"])[0], expected)


def test_cpu_model_starts_on_the_first_window(data: ModuleType, tmp_path: Path) -> None:
    """On CPU the first batch holds one window, so the model starts on the scene's first
    window; the others come in full batches, and the result is exact."""
    truth = data.write_scene(tmp_path / "scene.tif", 150, 230)
    sizes: list[int] = []
    model = data.ColourModel()
    model.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    options = PredictOptions(window=64, overlap=16, progress=False, batch_size=3, device="cpu")
    result = predict_scene(model, data.SPEC, tmp_path / "scene.tif", options=options)
    np.testing.assert_array_equal(read(result.outputs["classes"])[0], truth)
    assert sizes[0] == 1
    assert sizes[1:-1] == [3] * (len(sizes) - 2)
    assert sum(sizes) == result.windows
