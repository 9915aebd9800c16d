import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from geoct.classes import POTSDAM, ClassTable
from geoct.errors import AlignmentError, ConfigError, InputError
from geoct.export.evaluate import evaluate, format_table, plot_report, write_report

NAMES = ["bare", "field", "water & <lake>"]


def run_geoct(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoct", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def labels_tif(tmp_path: Path, raster_writer, scene: np.ndarray) -> Path:
    return raster_writer(tmp_path / "labels.tif", scene)


def perturbed(scene: np.ndarray) -> np.ndarray:
    pred = scene.copy()
    pred[0:10, 100:120] = 1  # 200 bare pixels predicted as field
    pred[30:35, 30:45] = 0  # 75 water pixels predicted as bare
    pred[145:150, 190:200] = 255  # 50 bare pixels without prediction
    return pred


def test_identical_prediction_scores_one(
    classes_tif: Path, labels_tif: Path, scene: np.ndarray
) -> None:
    evaluation = evaluate(classes_tif, labels_tif, block_size=64)
    scores = evaluation.per_class()
    assert np.all(scores["iou"] == 1) and np.all(scores["f1"] == 1)
    summary = evaluation.summary()
    assert summary["overall_accuracy"] == 1 and summary["mean_iou"] == 1
    assert evaluation.confusion.sum() == (scene != 255).sum()
    assert evaluation.ignored_pixels == (scene == 255).sum() == 25
    assert evaluation.excluded == ()


def test_known_perturbation_counts(
    tmp_path: Path, raster_writer, classes: ClassTable, labels_tif: Path, scene: np.ndarray
) -> None:
    pred = raster_writer(tmp_path / "pred.tif", perturbed(scene), classes=classes)
    with pytest.warns(UserWarning, match="50 labelled pixels have no prediction"):
        evaluation = evaluate(pred, labels_tif, block_size=64)
    counts = np.bincount(scene[scene != 255], minlength=3)
    expected = np.diag(counts).astype(np.int64)
    expected[0, 0] -= 200 + 50
    expected[0, 1] += 200
    expected[2, 2] -= 75
    expected[2, 0] += 75
    np.testing.assert_array_equal(evaluation.confusion, expected)
    assert evaluation.unpredicted_pixels == 50
    scores = evaluation.per_class()
    tp = np.diag(expected)
    assert scores["iou"][0] == pytest.approx(tp[0] / (tp[0] + 75 + 200))
    assert scores["precision"][1] == pytest.approx(tp[1] / (tp[1] + 200))
    assert scores["recall"][2] == pytest.approx(tp[2] / (tp[2] + 75))
    assert scores["f1"][1] == pytest.approx(2 * tp[1] / (2 * tp[1] + 200))
    summary = evaluation.summary()
    assert summary["overall_accuracy"] == pytest.approx(tp.sum() / expected.sum())
    assert summary["mean_iou"] == pytest.approx(scores["iou"].mean())


def test_exclusion_and_ignore_index(
    tmp_path: Path, raster_writer, classes: ClassTable, labels_tif: Path, scene: np.ndarray
) -> None:
    pred = raster_writer(tmp_path / "pred.tif", perturbed(scene), classes=classes)
    with pytest.warns(UserWarning, match="no prediction"):
        evaluation = evaluate(pred, labels_tif, exclude=["water & <lake>"], ignore_index=2)
    assert evaluation.excluded == ("water & <lake>",)
    assert evaluation.confusion[2].sum() == 0
    summary = evaluation.summary()
    iou = evaluation.per_class()["iou"]
    assert summary["mean_iou_excluding"] == pytest.approx(iou[:2].mean())
    assert evaluation.ignored_pixels == (scene == 2).sum() + (scene == 255).sum()
    with pytest.raises(ConfigError, match="not a class"):
        evaluate(pred, labels_tif, exclude=["forest"])


def potsdam_colour_labels(ids: np.ndarray) -> np.ndarray:
    palette = np.array([*POTSDAM.colors, *[(0, 0, 0)] * 248, (1, 2, 3), (0, 0, 0)], np.uint8)
    return np.moveaxis(palette[ids], -1, 0)


def test_colour_coded_labels(tmp_path: Path, raster_writer) -> None:
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 6, (40, 50)).astype(np.uint8)
    labels = ids.copy()
    labels[0, :10] = 255  # black boundary: ignored
    labels[1, :7] = 254  # colour (1, 2, 3): unknown
    pred = raster_writer(tmp_path / "p.tif", ids, classes=POTSDAM)
    rgb = raster_writer(tmp_path / "l.tif", potsdam_colour_labels(labels), nodata=None)
    with pytest.warns(UserWarning, match=": 7 pixels with unknown label colours"):
        evaluation = evaluate(pred, rgb, block_size=16)
    assert evaluation.ignored_pixels == 10 and evaluation.unknown_label_pixels == 7
    assert evaluation.confusion.sum() == 40 * 50 - 17
    assert np.all(evaluation.per_class()["iou"] == 1)
    assert evaluation.excluded == ("clutter",)


def test_colour_labels_need_colours(tmp_path: Path, raster_writer) -> None:
    ids = np.zeros((8, 8), np.uint8)
    pred = raster_writer(tmp_path / "p.tif", ids)
    rgb = raster_writer(tmp_path / "l.tif", potsdam_colour_labels(ids), nodata=None)
    with pytest.raises(InputError, match="colour table"), pytest.warns(UserWarning):
        evaluate(pred, rgb)
    evaluation = evaluate(pred, rgb, classes=POTSDAM)
    assert evaluation.confusion[0, 0] == 64


def test_misaligned_refused_unless_align(
    tmp_path: Path, raster_writer, classes_tif: Path, scene: np.ndarray
) -> None:
    padded = np.full((170, 220), 255, np.uint8)
    padded[10:160, 10:210] = scene
    shifted = Affine(0.5, 0, 500_000.0 - 5, 0, -0.5, 5_800_000.0 + 5)
    labels = raster_writer(tmp_path / "big.tif", padded, transform=shifted)
    with pytest.raises(AlignmentError, match="--align"):
        evaluate(classes_tif, labels)
    evaluation = evaluate(classes_tif, labels, align=True, block_size=64)
    assert np.all(evaluation.per_class()["iou"] == 1)
    assert evaluation.confusion.sum() == (scene != 255).sum()
    other_crs = raster_writer(tmp_path / "crs.tif", scene, crs="EPSG:32632")
    with pytest.raises(AlignmentError, match="CRS"):
        evaluate(classes_tif, other_crs)


def test_report_table_and_plot(
    tmp_path: Path, raster_writer, classes: ClassTable, labels_tif: Path, scene: np.ndarray
) -> None:
    pred = raster_writer(tmp_path / "pred.tif", perturbed(scene), classes=classes)
    with pytest.warns(UserWarning):
        evaluation = evaluate(pred, labels_tif)
    report = json.loads(write_report(evaluation, tmp_path / "r.json").read_text())
    assert report["classes"] == NAMES
    assert report["confusion_matrix"] == evaluation.confusion.tolist()
    assert report["per_class"]["field"]["iou"] == pytest.approx(evaluation.per_class()["iou"][1])
    assert report["unpredicted_pixels"] == 50
    table = format_table(evaluation)
    assert "water & <lake>" in table and "overall accuracy" in table
    png = plot_report(evaluation, tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli(tmp_path: Path, raster_writer, classes: ClassTable, labels_tif: Path, scene):
    pred = raster_writer(tmp_path / "pred.tif", perturbed(scene), classes=classes)
    report, plot = tmp_path / "report.json", tmp_path / "report.png"
    result = run_geoct("evaluate", pred, labels_tif, "--report", report, "--plot", plot)
    assert result.returncode == 0, result.stderr
    assert "field" in result.stdout and "overall accuracy" in result.stdout
    assert "geoct: warning: " in result.stderr
    assert json.loads(report.read_text())["evaluated_pixels"] == (scene != 255).sum() - 50
    assert plot.stat().st_size > 0
    again = run_geoct("evaluate", pred, labels_tif, "--report", report)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert (
        run_geoct("evaluate", pred, labels_tif, "--report", report, "--overwrite").returncode == 0
    )


def test_cli_misaligned(tmp_path: Path, raster_writer, classes_tif: Path, scene) -> None:
    labels = raster_writer(tmp_path / "l.tif", scene[:, :-1])
    result = run_geoct("evaluate", classes_tif, labels, "--report", tmp_path / "r.json")
    assert result.returncode == 2
    assert result.stderr.startswith("geoct: error:") and "--align" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("r.*")) and not list(tmp_path.glob(".r*"))
