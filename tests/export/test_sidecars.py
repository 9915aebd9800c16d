from pathlib import Path

import pytest

from geoct.errors import OutputExistsError
from geoct.export.sidecars import write_raster_styles


def test_raster_styles_beside_raster(tmp_path: Path, classes_tif: Path) -> None:
    qml, sld = write_raster_styles(classes_tif)
    assert qml == tmp_path / "scene.classes.qml" and sld == tmp_path / "scene.classes.sld"
    assert 'label="water &amp; &lt;lake&gt;"' in qml.read_text()
    assert "<ColorMap" in sld.read_text()
    with pytest.raises(OutputExistsError):
        write_raster_styles(classes_tif)
    write_raster_styles(classes_tif, overwrite=True)
