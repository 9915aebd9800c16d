"""``rasters.py`` with label polygons, then ``geoct fit`` and ``geoct predict``: an analyst's own data."""

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio

from geoct.cli import main as geoct

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "synthetic_tiny.yaml"


@pytest.fixture(scope="module")
def rasters_cli() -> ModuleType:
    """``data_recipes/rasters.py`` imported as a module, to call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location(
        "rasters_recipe", REPO / "data_recipes/rasters.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def own(own_data: ModuleType, tmp_path: Path) -> dict[str, Path]:
    return own_data.make(tmp_path / "src")


def test_fit_and_predict_on_own_polygons(
    own: dict[str, Path], tmp_path: Path, run_script, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "data"
    proc = run_script(
        "rasters.py", "--images", own["image"], "--labels", own["labels"], "--label-field",
        "class", "--classes", own["classes"], "--bands", "R,G,B", "--patch-size", "64",
        "--out", out,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "rasters.py: warning:" in proc.stderr
    assert "1 feature with an empty geometry skipped (feature 5)" in proc.stderr
    assert "1 invalid geometry repaired with make_valid (feature 4" in proc.stderr
    assert (
        "one image and no split options, so a spatial split was made: blocks of 64 m "
        "(2 train, 1 val, 1 test), 32 m buffer between the sets, seed 0"
    ) in proc.stdout
    info = json.loads((out / "dataset.json").read_text())
    assert info["classes"]["names"] == ["grass", "building", "road", "tree", "water"]

    monkeypatch.chdir(tmp_path)
    status = geoct(
        [
            "fit", "--config", str(CONFIG), "--data.root", str(out),
            "--data.init_args.bands=[R, G, B]", "--data.init_args.length=4",
            "--model.in_channels=3", "--model.num_classes=5", "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=1", "--trainer.limit_val_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        ]
    )  # fmt: skip
    assert status == 0
    (checkpoint,) = tmp_path.glob("runs/synthetic_tiny/**/last.ckpt")

    prediction = tmp_path / "ortho.classes.tif"
    status = geoct(
        [
            "predict", str(own["image"]), "--checkpoint", str(checkpoint), "--output",
            str(prediction), "--device", "cpu", "--quiet",
        ]
    )  # fmt: skip
    assert status == 0
    with rasterio.open(own["image"]) as scene, rasterio.open(prediction) as classes:
        assert (classes.crs, classes.transform, classes.shape) == (
            scene.crs,
            scene.transform,
            scene.shape,
        )
        values = np.unique(classes.read(1))
    assert set(values.tolist()) <= {0, 1, 2, 3, 4, 255}


def bad_input(rasters_cli: ModuleType, capsys: pytest.CaptureFixture[str], *args: object) -> str:
    status = rasters_cli.main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len([line for line in err if "error" in line]) == 1
    return err[-1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_vector_inputs_are_one_line_errors(
    own_data: ModuleType,
    own: dict[str, Path],
    tmp_path: Path,
    rasters_cli: ModuleType,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = ["--images", own["image"], "--out", tmp_path / "out", "--patch-size", "64"]
    labels = ["--labels", own["labels"]]

    line = bad_input(rasters_cli, capsys, *base, *labels, "--label-field", "klass")
    assert line.startswith("rasters.py: error: ") and line.endswith(
        "labels.gpkg: has no field 'klass' (fields: class, code, priority)"
    )

    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"names": ["grass", "road"], "colors": [[0, 255, 0], [9, 9, 9]]}))
    line = bad_input(
        rasters_cli, capsys, *base, *labels, "--label-field", "class", "--classes", classes
    )
    assert (
        "labels.gpkg: 3 unknown classes in field 'class': 'tree': 2 features, 'building': "
        "1 feature, 'water': 1 feature (classes: grass, road); use --unknown-as-ignore"
    ) in line

    elsewhere = tmp_path / "elsewhere.gpkg"
    own_data.label_frame(shift=(0.5, 0.0)).to_file(elsewhere)
    line = bad_input(rasters_cli, capsys, *base, "--labels", elsewhere, "--label-field", "class")
    assert "elsewhere.gpkg: none of the 5 features lies on any image" in line
    assert "check the layer's CRS" in line

    line = bad_input(rasters_cli, capsys, *base, *labels)
    assert line.endswith("labels.gpkg: vector labels need --label-field (the class field)")

    line = bad_input(
        rasters_cli, capsys, *base, *labels, "--label-field", "class", "--split-buffer", "5"
    )
    assert "--split-buffer 5 m is less than one patch (64 px = 32 m)" in line
    assert not (tmp_path / "out" / "dataset.json").exists()
