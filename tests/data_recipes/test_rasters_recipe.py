import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

CLASSES = {"names": ["water", "land"], "colors": [[0, 0, 255], [0, 255, 0]]}

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def write(path: Path, data: np.ndarray, transform: Affine | None, crs: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"transform": transform, "crs": crs} if transform is not None else {}
    with rasterio.open(
        path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
        count=data.shape[0], dtype=data.dtype, **kwargs,
    ) as dst:  # fmt: skip
        dst.write(data)


def make_rasters(root: Path, n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    labels = {}
    for i in range(n):
        t = Affine(10, 0, 500000 + i * 1000, 0, -10, 4000000)
        image = rng.integers(0, 4000, (3, 40, 50), dtype=np.uint16)
        write(root / "img" / f"scene{i}.tif", image, t, "EPSG:32611")
        ids = rng.integers(0, 2, (40, 50), dtype=np.uint8)
        labels[f"scene{i}"] = ids
        if i == 0:  # colour-coded, not georeferenced
            colours = np.array(CLASSES["colors"], dtype=np.uint8)[ids].transpose(2, 0, 1)
            write(root / "lab" / f"scene{i}.tif", colours, None, None)
        else:
            write(root / "lab" / f"scene{i}.tif", ids[None], t, "EPSG:32611")
        # DSM at half resolution: resampled with a warning
        dsm = np.full((1, 20, 25), 100.0 + i, dtype=np.float32)
        write(root / "dsm" / f"scene{i}.tif", dsm, t @ Affine.scale(2), "EPSG:32611")
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return labels


def test_user_rasters(tmp_path: Path, run_script) -> None:
    labels = make_rasters(tmp_path)
    out = tmp_path / "out"
    proc = run_script(
        "rasters.py", "--images", f"{tmp_path}/img/*.tif", "--labels", f"{tmp_path}/lab/*.tif",
        "--dsm", f"{tmp_path}/dsm/*.tif", "--classes", tmp_path / "classes.json", "--out", out,
        "--bands", "R,G,NIR",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("rasters.py: warning:") == 3 and "resampled (bilinear)" in proc.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["bands"] == ["R", "G", "NIR"] and info["crs"] == "EPSG:32611"
    assert info["gsd"] == 10 and info["height"] == "dsm"
    assert sorted(t for v in info["splits"].values() for t in v) == ["scene0", "scene1", "scene2"]
    assert all(len(v) == 1 for v in info["splits"].values())
    for tile, ids in labels.items():
        with rasterio.open(out / info["tiles"][tile]["label"]) as src:
            np.testing.assert_array_equal(src.read(1), ids)
            assert src.crs.to_epsg() == 32611
        with rasterio.open(out / info["tiles"][tile]["dsm"]) as src:
            assert src.shape == (40, 50) and src.dtypes[0] == "float32"
            assert np.allclose(src.read(1)[2:-2, 2:-2], 100 + int(tile[-1]))
        with rasterio.open(out / info["tiles"][tile]["image"]) as src:
            assert src.dtypes[0] == "uint16" and src.count == 3


def test_user_rasters_in_datamodule(tmp_path: Path) -> None:
    from geoct.classes import ClassTable
    from geoct.datasets import PotsdamDataModule
    from geoct.datasets.recipes import prepare_rasters

    make_rasters(tmp_path, n=3)
    with pytest.warns(UserWarning):
        prepare_rasters(
            f"{tmp_path}/img/*.tif", f"{tmp_path}/lab/*.tif",
            ClassTable.from_dict(CLASSES), tmp_path / "out", dsm=f"{tmp_path}/dsm/*.tif",
        )  # fmt: skip
    dm = PotsdamDataModule(tmp_path / "out", bands=("B3", "B1"), height="dsm", patch_size=16)
    assert dm.model_spec.bands == ("B3", "B1", "height")
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16)
    assert set(batch["mask"].unique().tolist()) <= {0, 1}


def test_bad_user_input(tmp_path: Path, run_script) -> None:
    make_rasters(tmp_path, n=1)
    base = ["--classes", tmp_path / "classes.json", "--out", tmp_path / "out"]
    proc = run_script("rasters.py", "--images", f"{tmp_path}/none/*.tif", "--labels", "x", *base)
    assert proc.returncode == 2 and "no image files match" in proc.stderr
    write(tmp_path / "lab" / "scene0.tif", np.full((1, 40, 50), 7, np.uint8), None, None)
    proc = run_script(
        "rasters.py", "--images", f"{tmp_path}/img/*.tif", "--labels", f"{tmp_path}/lab/*.tif",
        *base,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "scene0.tif: 1 unknown class id(s): 7: 2000 px" in proc.stderr.splitlines()[-1]
