import json
import subprocess
import sys
from pathlib import Path

import rasterio


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    args = ["--out", str(out), "--epochs", "1", "--length", "8", "--tiles", "3", "--size", "128"]
    proc = subprocess.run(
        [sys.executable, "-m", "geoct.demo", *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "geoct demo summary" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["mean_iou"] <= 1
    for path in summary["outputs"].values():
        assert Path(path).is_file()
    data = json.loads((out / "data" / "dataset.json").read_text())
    scene = out / "data" / data["tiles"][data["splits"]["test"][0]]["image"]
    with rasterio.open(scene) as src, rasterio.open(summary["outputs"]["class COG"]) as pred:
        assert (pred.crs, pred.transform, pred.shape) == (src.crs, src.transform, src.shape)
        assert pred.nodata == 255 and pred.colormap(1)[1][:3] == (0, 0, 255)
