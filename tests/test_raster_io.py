import os
import subprocess
import sys
from pathlib import Path

import pytest

from geoct.errors import InputError, OutputExistsError
from geoct.raster_io import atomic_output, check_output, open_raster, output_set


def test_renames_file_and_sidecars_on_success(tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    with atomic_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".tif" and not tmp.exists()
        tmp.write_text("data")
        Path(f"{tmp}.aux.xml").write_text("aux")
    assert out.read_text() == "data"
    assert (tmp_path / "map.tif.aux.xml").read_text() == "aux"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.tif", "map.tif.aux.xml"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_cleans_up_on_error(tmp_path: Path, error: type[BaseException]) -> None:
    with pytest.raises(error), atomic_output(tmp_path / "map.shp") as tmp:
        tmp.write_text("partial")
        tmp.with_suffix(".dbf").write_text("partial")
        raise error
    assert list(tmp_path.iterdir()) == []


def test_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "map.tif"
    out.write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_output(out):
        pass
    with atomic_output(out, overwrite=True) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new"


def test_nothing_written_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nothing was written"), atomic_output(tmp_path / "a.tif"):
        pass


def test_bad_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        check_output(tmp_path / "missing" / "a.tif", overwrite=False)
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path, overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output(folder / "a.tif", overwrite=False)
    finally:
        folder.chmod(0o755)


def test_output_set_is_all_or_nothing(tmp_path: Path) -> None:
    old = tmp_path / "a.tif"
    old.write_text("old")
    paths = [old, tmp_path / "a.qml", tmp_path / "a.json"]
    with pytest.raises(KeyboardInterrupt), output_set(paths, overwrite=True):
        for path in paths[:2]:
            with atomic_output(path, overwrite=True) as tmp:
                tmp.write_text("new")
        raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif"]
    assert old.read_text() == "old"
    with output_set(paths, overwrite=True):
        for path in paths:
            with atomic_output(path, overwrite=True) as tmp:
                tmp.write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.qml", "a.tif"]
    assert all(p.read_text() == "new" for p in paths)


def test_output_set_recovers_after_the_process_died(tmp_path: Path) -> None:
    paths = [tmp_path / "a.tif", tmp_path / "a.qml"]
    script = (
        "import os, sys\n"
        "from geoct.raster_io import output_set, atomic_output\n"
        "paths = sys.argv[1:]\n"
        "with output_set(paths):\n"
        "    with atomic_output(paths[0]) as tmp:\n"
        "        tmp.write_text('half')\n"
        "    os._exit(9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, paths)], check=False)
    assert proc.returncode == 9 and paths[0].exists() and not paths[1].exists()
    with output_set(paths):
        for path in paths:
            with atomic_output(path) as tmp:
                tmp.write_text("whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.qml", "a.tif"]
    assert paths[0].read_text() == "whole"


def test_open_raster_refuses_missing_georeferencing(tmp_path: Path) -> None:
    import numpy as np
    import rasterio

    path = tmp_path / "plain.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8", crs="EPSG:32633"
    ) as dst:
        dst.write(np.zeros((1, 4, 4), np.uint8))
    assert open_raster(path).crs is not None
    with pytest.raises(InputError, match="no geotransform"):
        open_raster(path, georeferenced=True)
    (tmp_path / "junk.tif").write_text("not a raster")
    with pytest.raises(InputError, match="not a raster GDAL can read"):
        open_raster(tmp_path / "junk.tif")
