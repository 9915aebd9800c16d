import json
from pathlib import Path

import numpy as np
import rasterio

from geoct.datasets.layout import read_dataset_json


def test_synthetic_layout(tmp_path: Path, run_script) -> None:
    out = tmp_path / "syn"
    args = ("--out", out, "--tiles", "3", "--size", "64", "--seed", "3")
    proc = run_script("synthetic_potsdam.py", *args)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"] == {"train": ["2_10"], "val": ["2_11"], "test": ["2_13"]}
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "top_potsdam_2_10_RGBIR.tif", "top_potsdam_2_11_RGBIR.tif", "top_potsdam_2_13_RGBIR.tif",
    ]  # fmt: skip
    assert (out / "dsm/dsm_potsdam_02_13.tif").exists()
    assert (out / "ndsm/dsm_potsdam_02_11_normalized_lastools.tif").exists()
    assert set(info["stats"]) == {"R", "G", "B", "IR", "dsm", "ndsm"}
    assert read_dataset_json(out).block_size == 64

    again = run_script("synthetic_potsdam.py", "--out", tmp_path / "again", *args[2:])
    assert again.returncode == 0
    for rel in ("images/top_potsdam_2_10_RGBIR.tif", "labels/top_potsdam_2_13_label.tif"):
        with rasterio.open(out / rel) as a, rasterio.open(tmp_path / "again" / rel) as b:
            np.testing.assert_array_equal(a.read(), b.read())
            assert a.transform == b.transform and a.crs == b.crs

    refused = run_script("synthetic_potsdam.py", *args)
    assert refused.returncode == 2 and "already exists" in refused.stderr


def test_synthetic_root_fixture(synthetic_root: Path) -> None:
    info = read_dataset_json(synthetic_root)
    assert len(info.tiles) == 4 and all(info.splits[s] for s in ("train", "val", "test"))
