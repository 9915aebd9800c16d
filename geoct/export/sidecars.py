"""Style files written beside class rasters and polygon layers, for QGIS and GeoServer.

QGIS applies ``NAME.qml`` automatically when it opens ``NAME.EXT`` (the last
extension replaced), so each file that QGIS should open styled gets a QML with its
base name: ``SCENE.classes.qml`` for ``SCENE.classes.tif`` and ``SCENE.polygons.qml``
for ``SCENE.polygons.geojson``. A GeoPackage carries its QGIS style inside (the
``layer_styles`` table), so it needs none. SLDs are not loaded automatically and
are named after the whole file name of a polygon layer (``SCENE.polygons.gpkg.sld``,
``SCENE.polygons.geojson.sld``), so the GeoPackage and the GeoJSON of one layer can
sit side by side in one folder.
"""

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


def vector_style_paths(layer: str | Path) -> dict[str, Path]:
    """Return the style files written beside a polygon layer.

    Args:
        layer: ``NAME.gpkg`` or ``NAME.geojson`` (or ``NAME.json``) polygon layer.

    Returns:
        ``{"sld": NAME.EXT.sld}``, plus ``{"qml": NAME.qml}`` (which QGIS loads with
        the layer) for formats that cannot store a style themselves, i.e. all but
        GeoPackage.
    """
    layer = Path(layer)
    paths = {"sld": layer.with_name(f"{layer.name}.sld")}
    if layer.suffix.lower() != ".gpkg":
        paths["qml"] = layer.with_suffix(".qml")
    return paths


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
