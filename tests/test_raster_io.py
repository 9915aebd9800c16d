import os
from pathlib import Path

import pytest

from geoct.errors import InputError, OutputExistsError
from geoct.raster_io import atomic_output, check_output


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
