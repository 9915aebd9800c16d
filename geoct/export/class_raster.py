"""Reading class rasters: their class table, their grid and their blocks.

A class raster written by ``geoct predict`` is a single-band uint8 GeoTIFF whose
nodata value is the ignore index, with a colour table and the class names stored
as metadata tags and as GDAL category names (in the ``.aux.xml`` sidecar). Rasters
from elsewhere may lack some of this; :func:`read_class_table` falls back to ids.
"""

import argparse
import json
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from rasterio.io import DatasetReader
from rasterio.windows import Window

from ..classes import RGB, ClassTable
from ..errors import AlignmentError, InputError
from ..raster_io import open_raster

#: Metadata tags (dataset or band 1) that may hold the class names, as a JSON list
#: of names or a JSON :meth:`ClassTable.to_dict`.
NAME_TAGS = ("CLASS_NAMES", "CLASSES", "GEOCT_CLASSES", "class_names", "classes")

#: Colours given to classes when a raster has no colour table (matplotlib ``tab20``).
DEFAULT_COLORS: tuple[RGB, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
    (247, 182, 210),
    (199, 199, 199),
    (219, 219, 141),
    (158, 218, 229),
)


def block_windows(height: int, width: int, size: int) -> Iterator[Window]:
    """Tile a grid into square windows, row by row.

    Args:
        height: Grid rows.
        width: Grid columns.
        size: Side of a window in pixels; edge windows are smaller.

    Yields:
        Windows covering the grid without overlap.
    """
    for row in range(0, height, size):
        for col in range(0, width, size):
            yield Window(col, row, min(size, width - col), min(size, height - row))


def check_same_grid(reference: DatasetReader, other: DatasetReader, hint: str = "") -> None:
    """Check that two rasters share CRS, transform and shape.

    Args:
        reference: Raster whose grid is authoritative.
        other: Raster that must match it.
        hint: What the user can do about it, appended to the message.

    Raises:
        AlignmentError: Naming what differs.
    """
    problems = []
    if reference.crs != other.crs:
        problems.append(f"CRS {other.crs} != {reference.crs}")
    if (other.height, other.width) != (reference.height, reference.width):
        problems.append(
            f"shape {other.height}x{other.width} != {reference.height}x{reference.width}"
        )
    tolerance = 1e-6 * max(abs(reference.transform.a), abs(reference.transform.e))
    if not other.transform.almost_equals(reference.transform, precision=tolerance):
        problems.append(
            f"transform {tuple(other.transform)[:6]} != {tuple(reference.transform)[:6]}"
        )
    if problems:
        raise AlignmentError(
            other.name, f"not on the grid of {reference.name}: " + "; ".join(problems) + hint
        )


def ignore_value(src: DatasetReader, default: int = 255) -> int:
    """Return a class raster's nodata value, or *default* when it has none."""
    return int(src.nodata) if src.nodata is not None else default


def _names_from_value(value: str) -> list[str] | None:
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        return None
    if isinstance(parsed, dict) and "names" in parsed:
        parsed = parsed["names"]
    if isinstance(parsed, list) and all(isinstance(n, str) for n in parsed):
        return parsed
    return None


def _names_from_tags(src: DatasetReader) -> list[str] | None:
    for tags in (src.tags(), src.tags(1)):
        for key in NAME_TAGS:
            if key in tags and (names := _names_from_value(tags[key])):
                return names
    return None


def _names_from_aux_xml(path: Path) -> list[str] | None:
    aux = path.with_name(path.name + ".aux.xml")
    if not aux.exists():
        return None
    try:
        root = ET.parse(aux).getroot()
    except ET.ParseError:
        return None
    band = root.find("PAMRasterBand[@band='1']")
    categories = band.find("CategoryNames") if band is not None else None
    if categories is None:
        return None
    names = [c.text or "" for c in categories.findall("Category")]
    while names and not names[-1]:
        names.pop()
    return names or None


def _colors_from_colormap(src: DatasetReader, count: int) -> tuple[RGB, ...] | None:
    try:
        colormap = src.colormap(1)
    except ValueError:
        return None
    return tuple(tuple(colormap.get(i, (0, 0, 0, 255))[:3]) for i in range(count))


def has_class_names(path: str | Path) -> bool:
    """Return whether a class raster names its classes (tags or ``.aux.xml`` categories)."""
    with open_raster(path) as src:
        if _names_from_tags(src):
            return True
    return _names_from_aux_xml(Path(path)) is not None


def fallback_names(count: int) -> tuple[str, ...]:
    """Return the names ``class_0``, ``class_1``, ... given to unnamed classes."""
    return tuple(f"class_{i}" for i in range(count))


def read_class_table(
    path: str | Path,
    override: ClassTable | Sequence[str] | None = None,
    num_classes: int | None = None,
) -> ClassTable:
    """Work out the class table of a class raster.

    Names come from *override*, else the raster's metadata tags, else the GDAL
    category names in its ``.aux.xml``, else ids (``class_0``, ...) with a warning.
    Colours come from the colour table, else a default palette with a warning.

    Args:
        path: Class raster.
        override: A full class table, or class names (colours from the raster).
        num_classes: Number of classes when the raster does not name them,
            e.g. one more than its largest class id.

    Returns:
        The class table; its ignore index is the raster's nodata value.

    Raises:
        InputError: If the raster cannot be read or the number of classes is unknown.
    """
    path = Path(path)
    if isinstance(override, ClassTable):
        return override
    with open_raster(path) as src:
        ignore_index = ignore_value(src)
        names = list(override) if override else _names_from_tags(src)
        names = names or _names_from_aux_xml(path)
        if not names:
            if not num_classes:
                raise InputError(path, "names no classes and the number of classes is unknown")
            warnings.warn(f"{path}: no class names found; using class ids as names", stacklevel=2)
            names = list(fallback_names(num_classes))
        colors = _colors_from_colormap(src, len(names))
    if colors is None:
        warnings.warn(f"{path}: no colour table; using default colours", stacklevel=2)
        colors = tuple(DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(len(names)))
    try:
        return ClassTable(tuple(names), colors, ignore_index=ignore_index)
    except ValueError as e:
        raise InputError(path, f"inconsistent class table ({e})") from None


def max_class_id(src: DatasetReader, block_size: int = 1024) -> int:
    """Return the largest class id in a class raster, ignoring nodata; -1 if none.

    Args:
        src: Open class raster.
        block_size: Side of the blocks read at a time.

    Returns:
        The largest valid value.
    """
    ignore = ignore_value(src)
    largest = -1
    for window in block_windows(src.height, src.width, block_size):
        data = src.read(1, window=window)
        valid = data[data != ignore]
        if valid.size:
            largest = max(largest, int(valid.max()))
    return largest


def has_colour_table(path: str | Path) -> bool:
    """Return whether band 1 of a raster carries a colour table."""
    with open_raster(path) as src:
        try:
            src.colormap(1)
        except ValueError:
            return False
    return True


def classes_option(value: str | None) -> ClassTable | list[str] | None:
    """Parse a ``--classes`` option: a ``classes.json`` file or comma-separated names.

    Args:
        value: The option value, or None.

    Returns:
        A class table (from JSON), a list of names, or None.

    Raises:
        InputError: If a JSON file is missing or invalid.
    """
    if value is None:
        return None
    if value.lower().endswith(".json") or Path(value).is_file():
        return ClassTable.from_json(value)
    return [name.strip() for name in value.split(",") if name.strip()]


def add_raster_options(parser: argparse.ArgumentParser, classes_from: str) -> None:
    """Add the ``--classes``, ``--block-size`` and ``--overwrite`` options shared by the CLIs.

    Args:
        parser: Parser of a command that reads class rasters block by block.
        classes_from: Where class names come from by default, for the help text.
    """
    parser.add_argument(
        "--classes",
        dest="class_names",
        metavar="NAMES",
        help=f"classes.json or comma-separated class names (default: read from {classes_from})",
    )
    parser.add_argument(
        "--block-size", type=int, default=1024, help="pixels per block side (default: 1024)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
