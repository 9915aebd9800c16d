import json
import zipfile
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import rasterio

from geoct.classes import POTSDAM
from geoct.datasets.layout import ids_to_colors

TILES = "2_10,2_11,2_12,2_13"

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def test_round_trip_from_zips(tmp_path: Path, potsdam_data: ModuleType, run_script) -> None:
    source = tmp_path / "download"
    arrays = potsdam_data.make_download(source)
    out = tmp_path / "out"
    proc = run_script("potsdam.py", "--source", source, "--out", out, "--tiles", TILES)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "dataset.json").read_text())
    assert info["splits"] == {"train": ["2_10", "2_12"], "val": ["2_11"], "test": ["2_13"]}
    assert info["bands"] == ["R", "G", "B", "IR"] and info["height"] == ["dsm", "ndsm"]
    assert set(info["stats"]) == {"R", "G", "B", "IR", "dsm", "ndsm"}
    assert info["crs"] == "EPSG:32633" and info["gsd"] == pytest.approx(0.05)
    train_dsm = np.concatenate([arrays[t]["dsm"].ravel() for t in ("2_10", "2_12")])
    assert info["stats"]["dsm"]["mean"] == pytest.approx(train_dsm.mean(), rel=1e-6)

    tile = arrays["2_10"]
    with zipfile.ZipFile(source / "5_Labels_all.zip") as z:
        z.extract("5_Labels_all/top_potsdam_2_10_label.tif", tmp_path)
    with rasterio.open(tmp_path / "5_Labels_all/top_potsdam_2_10_label.tif") as src:
        original_colours = src.read()
    with rasterio.open(out / info["tiles"]["2_10"]["label"]) as src:
        ids = src.read(1)
        assert src.crs.to_epsg() == 32633
        assert src.transform == potsdam_data.transform_of("2_10", 96)
        assert src.nodata == 255 and src.block_shapes[0] == (256, 256)
    np.testing.assert_array_equal(ids, tile["ids"])
    np.testing.assert_array_equal(ids_to_colors(ids, POTSDAM), original_colours)
    with rasterio.open(out / "images/top_potsdam_2_10_RGBIR.tif") as src:
        np.testing.assert_array_equal(src.read(), tile["image"])
        assert src.transform == potsdam_data.transform_of("2_10", 96)
    with rasterio.open(out / "dsm/dsm_potsdam_02_10.tif") as src:
        np.testing.assert_array_equal(src.read(1), tile["dsm"])
        assert src.nodata == -9999
    assert (out / "ndsm/dsm_potsdam_02_10_normalized_lastools.tif").exists()

    again = run_script("potsdam.py", "--source", source, "--out", out, "--tiles", TILES)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_extracted_folders_and_in_process(tmp_path: Path, potsdam_data: ModuleType) -> None:
    from geoct.datasets.recipes import prepare_potsdam

    potsdam_data.make_download(tmp_path / "src", tiles=("2_10", "2_11"), zipped=False)
    info = prepare_potsdam(tmp_path / "src", tmp_path / "out", tiles=["02_10", "2_11"], ndsm=False)
    assert info.splits == {"train": ["2_10"], "val": ["2_11"], "test": []}
    assert info.height == ["dsm"] and "ndsm" not in info.tiles["2_10"]


def test_unknown_colours_reported_or_ignored(
    tmp_path: Path, potsdam_data: ModuleType, run_script
) -> None:
    potsdam_data.make_download(tmp_path / "src", tiles=("2_10",), unknown_colour=True)
    args = ("--source", tmp_path / "src", "--out", tmp_path / "out", "--tiles", "2_10")
    proc = run_script("potsdam.py", *args)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()[-1:]
    assert "top_potsdam_2_10_label.tif: 1 unknown label colour(s): (12,34,56): 6 px" in line
    proc = run_script("potsdam.py", *args, "--unknown-as-ignore")
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(tmp_path / "out/labels/top_potsdam_2_10_label.tif") as src:
        assert (src.read(1)[:2, :3] == 255).all()


BAD_INPUTS = {
    "label_shape": ({"label_size": 80}, "top_potsdam_2_10_label.tif: label shape 80x80 differs"),
    "dsm_crs": ({"dsm_crs": "EPSG:25833"}, "dsm_potsdam_02_10.tif: DSM CRS EPSG:25833 differs"),
    "no_georef": (
        {"ortho_georeferenced": False},
        "top_potsdam_2_10_RGBIR.tif: orthophoto has no georeferencing",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_tiles(tmp_path: Path, potsdam_data: ModuleType, run_script, case: str) -> None:
    kwargs, message = BAD_INPUTS[case]
    potsdam_data.make_download(tmp_path / "src", tiles=("2_10",), **kwargs)
    proc = run_script(
        "potsdam.py", "--source", tmp_path / "src", "--out", tmp_path / "out", "--tiles", "2_10"
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("potsdam.py: error: ") and message in last, proc.stderr
    assert "Traceback" not in proc.stderr


def test_misaligned_dsm_rejected_or_resampled(tmp_path: Path, potsdam_data: ModuleType) -> None:
    from geoct.datasets.recipes import prepare_potsdam
    from geoct.errors import AlignmentError

    potsdam_data.make_download(tmp_path / "src", tiles=("2_10",), zipped=False)
    dsm = tmp_path / "src/1_DSM/dsm_potsdam_02_10.tif"
    with rasterio.open(dsm) as src:
        profile, data = src.profile, src.read()
    profile["transform"] = profile["transform"] @ rasterio.Affine.translation(3, 2)
    with rasterio.open(dsm, "w", **profile) as dst:
        dst.write(data)
    with pytest.raises(AlignmentError, match="differs from the orthophoto"):
        prepare_potsdam(tmp_path / "src", tmp_path / "out", tiles=["2_10"])
    with pytest.warns(UserWarning, match="resampled"):
        prepare_potsdam(tmp_path / "src", tmp_path / "o2", tiles=["2_10"], resample_heights=True)


def test_missing_inputs(tmp_path: Path, potsdam_data: ModuleType, run_script) -> None:
    (tmp_path / "empty").mkdir()
    potsdam_data.make_download(tmp_path / "src", tiles=("2_10", "2_11"))
    (tmp_path / "src" / "1_DSM.zip").unlink()
    cases = [
        (("--source", tmp_path / "empty"), f"{tmp_path / 'empty'}: source folder is empty"),
        (("--source", tmp_path / "nope"), "nope: source folder does not exist"),
        (("--source", tmp_path / "src"), "1_DSM.zip: not found (use --no-dsm"),
        (
            ("--source", tmp_path / "src", "--no-dsm", "--tiles", "2_10,2_12"),
            "4_Ortho_RGBIR.zip: tile 2_12 missing (top_potsdam_2_12_RGBIR.tif not found)",
        ),
    ]
    for args, message in cases:
        proc = run_script("potsdam.py", *args, "--out", tmp_path / "out")
        assert proc.returncode == 2
        assert message in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not (tmp_path / "out").exists()
