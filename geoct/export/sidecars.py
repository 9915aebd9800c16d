"""Style files written beside a class raster, for QGIS and GeoServer."""

from contextlib import ExitStack
from pathlib import Path

from ..classes import ClassTable
from ..raster_io import atomic_output, check_output
from .class_raster import read_class_table
from .styles import raster_qml, raster_sld


def raster_style_paths(raster: str | Path) -> dict[str, Path]:
    """Return ``NAME.qml`` (loaded by QGIS with ``NAME.tif``) and ``NAME.sld`` for a raster."""
    raster = Path(raster)
    return {"qml": raster.with_suffix(".qml"), "sld": raster.with_suffix(".sld")}


def write_raster_styles(
    raster: str | Path, classes: ClassTable | None = None, overwrite: bool = False
) -> list[Path]:
    """Write a QGIS ``.qml`` and an SLD beside a class raster.

    Args:
        raster: Class raster, e.g. ``SCENE.classes.tif``.
        classes: Class table; read from the raster when not given.
        overwrite: Whether existing style files may be replaced.

    Returns:
        The written files.

    Raises:
        OutputExistsError: If a style file exists and *overwrite* is false.
        InputError: If the raster names no classes and *classes* is not given.
    """
    paths = raster_style_paths(raster)
    for path in paths.values():
        check_output(path, overwrite)
    table = classes or read_class_table(raster)
    texts = {"qml": raster_qml(table), "sld": raster_sld(table, name=Path(raster).stem)}
    with ExitStack() as stack:
        for kind, path in paths.items():
            tmp = stack.enter_context(atomic_output(path, overwrite))
            tmp.write_text(texts[kind], encoding="utf-8")
    return list(paths.values())
