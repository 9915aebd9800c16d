import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from geoct.classes import POTSDAM
from geoct.cli import main
from geoct.errors import ConfigError, OutputExistsError
from geoct.export.onnx import TOLERANCE, export_onnx
from geoct.metadata import CHECKPOINT_KEY, ModelSpec
from geoct.tasks import ContrastiveSemanticSegmentationTask, load_model

FAMILIES: dict[str, dict[str, Any]] = {
    "swin": {
        "backbone": "swin_tiny_patch4_window7_224",
        "backbone_kwargs": {
            "embed_dim": 16,
            "depths": [1, 1, 1, 1],
            "num_heads": [1, 1, 1, 1],
            "window_size": 4,
        },
    },
    "vit": {
        "backbone": "vit_small_patch16_224",
        "backbone_kwargs": {"embed_dim": 32, "depth": 4, "num_heads": 2},
    },
    "poolformer": {"backbone": "poolformer_s12", "backbone_kwargs": {}},
}

#: R, G, B, IR (uint8 orthophoto) and a height band in metres.
SPEC = ModelSpec(
    bands=("R", "G", "B", "IR", "height"),
    mean=(120.0, 110.0, 100.0, 90.0, 4.0),
    std=(50.0, 45.0, 40.0, 35.0, 6.0),
    gsd=0.08,
    patch_size=64,
    classes=POTSDAM,
    height_source="ndsm",
)


def write_checkpoint(path: Path, family: str) -> Path:
    """A checkpoint as geoct fit writes it, without training (random weights)."""
    torch.manual_seed(0)
    task = ContrastiveSemanticSegmentationTask(
        **FAMILIES[family],
        decoder="fpn",
        decoder_channels=16,
        in_channels=SPEC.in_channels,
        num_classes=SPEC.classes.num_classes,
        contrastive=False,
        model_spec=SPEC.to_dict(),
    )
    ckpt = {
        CHECKPOINT_KEY: SPEC.to_dict(),
        "hyper_parameters": dict(task.hparams),
        "state_dict": task.state_dict(),
    }
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("onnx") / "vit.ckpt", "vit")


def orthophoto_window(size: int = 64) -> np.ndarray:
    """A (H, W, 5) window as Deepness reads it: uint8 optical bands, float height."""
    rng = np.random.default_rng(1)
    optical = rng.integers(0, 256, (size, size, 4)).astype(np.float32)
    height = rng.gamma(1.0, 4.0, (size, size, 1)).astype(np.float32)
    return np.concatenate([optical, height], axis=2)


def deepness_input(tiles: np.ndarray, metadata: dict[str, str]) -> np.ndarray:
    """Deepness's ModelBase.preprocessing: /255, standardise, NHWC to NCHW."""
    mean = np.array(json.loads(metadata["standardization_mean"]), dtype=np.float32)
    std = np.array(json.loads(metadata["standardization_std"]), dtype=np.float32)
    x = np.float32(tiles * 1.0 / 255.0)
    return np.transpose((x - mean) / std, (0, 3, 1, 2))


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_reproduces_geoct_on_a_deepness_tile(family: str, tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "model.ckpt", family)
    report = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert report.tile_size == 64 and report.max_difference <= TOLERANCE
    session = onnxruntime.InferenceSession(tmp_path / "model.onnx")
    (image,) = session.get_inputs()
    assert image.name == "image" and image.shape[1:] == [5, 64, 64]
    assert isinstance(image.shape[0], str)
    metadata = session.get_modelmeta().custom_metadata_map
    tiles = np.stack([orthophoto_window(), orthophoto_window()[::-1].copy()])
    (probabilities,) = session.run(None, {"image": deepness_input(tiles, metadata)})
    model, spec = load_model(checkpoint)
    normalised = (tiles - np.float32(spec.mean)) / np.float32(spec.std)
    with torch.no_grad():
        expected = model(torch.from_numpy(normalised).permute(0, 3, 1, 2)).softmax(1).numpy()
    assert probabilities.shape == (2, 6, 64, 64)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=TOLERANCE)
    assert (probabilities.argmax(1) == expected.argmax(1)).mean() > 0.999


def test_deepness_metadata_keys_and_encodings(vit_checkpoint: Path, tmp_path: Path) -> None:
    export_onnx(vit_checkpoint, tmp_path / "m.onnx", tile_size=96, overlap=10)
    model = onnx.load(tmp_path / "m.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["model_type"]) == "Segmentor"
    names = json.loads(meta["class_names"])
    assert [names[k] for k in sorted(names, key=int)] == list(POTSDAM.names)
    assert json.loads(meta["resolution"]) == 8.0
    assert json.loads(meta["tile_size"]) == json.loads(meta["tiles_size"]) == 96
    assert json.loads(meta["tiles_overlap"]) == 10
    assert json.loads(meta["standardization_mean"]) == pytest.approx([m / 255 for m in SPEC.mean])
    assert json.loads(meta["standardization_std"]) == pytest.approx([s / 255 for s in SPEC.std])
    assert json.loads(meta["seg_thresh"]) == 0 and json.loads(meta["seg_small_segment"]) == 0
    assert ModelSpec.from_dict(json.loads(meta["geoct_model_spec"])) == SPEC
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [5, 96, 96]


def test_export_command(
    vit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "model.onnx"
    assert main(["export", str(vit_checkpoint), "--onnx", str(out)]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith(f"wrote {out}: Deepness Segmentor, 6 classes, 5 bands")
    assert "64 px tiles at 8 cm/px; ONNX Runtime matches PyTorch within" in printed.out
    assert printed.err == ""
    before = out.read_bytes()
    assert main(["export", str(vit_checkpoint), "--onnx", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"geoct: error: {out}: already exists (use --overwrite to replace it)\n"
    assert out.read_bytes() == before
    argv = ["export", str(vit_checkpoint), "--onnx", str(out), "--overwrite", "--tile-size", "32"]
    assert main(argv) == 0
    assert "32 px tiles" in capsys.readouterr().out


def test_export_bad_input_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    out = tmp_path / "model.onnx"
    for checkpoint, problem in [
        (junk, "not a readable checkpoint"),
        (tmp_path / "no.ckpt", "not found"),
    ]:
        assert main(["export", str(checkpoint), "--onnx", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"geoct: error: {checkpoint}: ") and problem in err
        assert len(err.splitlines()) == 1
    assert main(["export", str(junk), "--onnx", str(out), "--overlap", "100"]) == 2
    assert "--overlap 100" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [junk]
    with pytest.raises(OutputExistsError):
        export_onnx(junk, junk)


def test_unexportable_model_is_a_clear_error(
    vit_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("Unsupported operator aten::frobnicate\nlong trace")

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(
        ConfigError,
        match=r"cannot be exported to ONNX \(RuntimeError: Unsupported operator aten::frobnicate\)$",
    ):
        export_onnx(vit_checkpoint, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_missing_onnx_packages(
    vit_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(ConfigError, match=r"pip install 'geoct\[onnx\]'"):
        export_onnx(vit_checkpoint, tmp_path / "m.onnx")
