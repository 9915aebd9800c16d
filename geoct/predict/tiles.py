"""Tiles of one mosaic: finding them, checking that they share a pixel grid, and a VRT over them.

A mosaic is given as tile files, glob patterns, a VRT whose sources are the tiles,
or ``@list.txt`` (one path per line, relative to the list's folder). All tiles must
share a CRS and a north-up pixel size, and their origins must lie on one pixel grid,
so that every tile is an exact block of mosaic pixels; tiles may be missing (holes).
"""

import glob
import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..errors import AlignmentError, InputError
from ..raster_io import open_raster

#: Largest misalignment of a tile's origin with the mosaic grid, in pixels.
GRID_TOLERANCE = 1e-6

#: GDAL data type names of numpy dtypes, for the VRT.
GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class Tile:
    """One tile and its place in the mosaic.

    Attributes:
        path: Tile file.
        window: Its pixels in mosaic pixel coordinates.
    """

    path: Path
    window: Window

    @property
    def name(self) -> str:
        """Output stem of the tile: its file name without the extension."""
        return self.path.stem


@dataclass(frozen=True)
class MosaicGrid:
    """The pixel grid shared by the tiles of a mosaic.

    Attributes:
        crs: The tiles' CRS.
        transform: Transform of the mosaic (origin at the top-left tile corner).
        width: Mosaic columns.
        height: Mosaic rows.
        count: Bands per tile.
        dtype: Data type of the tiles.
        tiles: The tiles, in input order.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    tiles: tuple[Tile, ...]


def _vrt_sources(path: Path) -> list[Path]:
    root = ET.parse(path).getroot()
    names = []
    for source in root.iter("SourceFilename"):
        name = Path(source.text or "")
        if source.get("relativeToVRT") == "1" or not name.is_absolute():
            name = path.parent / name
        if name not in names:
            names.append(name)
    if not names:
        raise InputError(path, "VRT names no source files")
    return names


def _list_file(path: Path) -> list[Path]:
    if not path.is_file():
        raise InputError(path, "tile list not found")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [
        (path.parent / line) if not Path(line).is_absolute() else Path(line)
        for line in lines
        if line and not line.startswith("#")
    ]


def expand_tiles(items: Sequence[str | Path]) -> list[Path]:
    """Turn files, glob patterns, VRTs and ``@list.txt`` arguments into tile files.

    Args:
        items: Command-line arguments naming tiles.

    Returns:
        Tile files in order, without duplicates.

    Raises:
        InputError: If a pattern matches nothing or a list or VRT is unreadable.
    """
    tiles: list[Path] = []
    for item in map(str, items):
        if item.startswith("@"):
            found = _list_file(Path(item[1:]))
        elif not Path(item).exists() and glob.has_magic(item):
            found = [Path(p) for p in sorted(glob.glob(item))]
            if not found:
                raise InputError(item, "no tile matches this pattern")
        elif Path(item).suffix.lower() == ".vrt" and Path(item).is_file():
            found = _vrt_sources(Path(item))
        else:
            found = [Path(item)]
        tiles += [p for p in found if p not in tiles]
    return tiles


def _offset(value: float, origin: float, step: float, path: Path) -> int:
    position = (value - origin) / step
    index = round(position)
    if abs(position - index) > GRID_TOLERANCE:
        raise AlignmentError(
            path,
            f"is not on the mosaic's pixel grid (offset {position:.6f} pixels from the first "
            "tile's grid); resample it onto one grid first, e.g. 'gdalwarp -tap -tr RES RES'",
        )
    return index


def mosaic_grid(paths: Sequence[Path]) -> MosaicGrid:
    """Check that the tiles share a grid and return it.

    Args:
        paths: Tile files; the first sets the CRS, pixel size, bands and data type.

    Returns:
        The mosaic grid with every tile's place.

    Raises:
        InputError: If a tile cannot be opened, is rotated, or has another CRS, pixel
            size, band count or data type than the first (naming the tile).
    """
    if not paths:
        raise InputError(".", "no tiles given")
    infos = []
    for path in paths:
        with open_raster(path, georeferenced=True) as src:
            infos.append(
                (path, src.crs, src.transform, src.width, src.height, src.count, src.dtypes[0])
            )
    _, crs, first, _, _, count, dtype = infos[0]
    for path, tile_crs, t, _, _, tile_count, tile_dtype in infos:
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise AlignmentError(path, "is not a north-up grid; mosaics need north-up tiles")
        if tile_crs != crs:
            raise AlignmentError(path, f"has CRS {tile_crs}, the first tile has {crs}")
        if not (
            math.isclose(t.a, first.a, rel_tol=1e-9) and math.isclose(t.e, first.e, rel_tol=1e-9)
        ):
            raise AlignmentError(
                path,
                f"has pixel size {t.a:g} x {-t.e:g}, the first tile has {first.a:g} x {-first.e:g}",
            )
        if (tile_count, tile_dtype) != (count, dtype):
            raise AlignmentError(
                path, f"has {tile_count} {tile_dtype} band(s), the first tile has {count} {dtype}"
            )
    cols = [_offset(t.c, first.c, first.a, p) for p, _, t, *_ in infos]
    rows = [_offset(t.f, first.f, first.e, p) for p, _, t, *_ in infos]
    c0, r0 = min(cols), min(rows)
    width = max(c + w for c, (_, _, _, w, *_) in zip(cols, infos, strict=True)) - c0
    height = max(r + h for r, (_, _, _, _, h, *_) in zip(rows, infos, strict=True)) - r0
    tiles = tuple(
        Tile(p, Window(c - c0, r - r0, w, h))
        for (p, _, _, w, h, *_), c, r in zip(infos, cols, rows, strict=True)
    )
    transform = first @ Affine.translation(c0, r0)
    return MosaicGrid(crs, transform, width, height, count, dtype, tiles)


def _source(path: Path, band: str, tile: Tile, relative_to: Path) -> str:
    try:
        name, relative = str(path.resolve().relative_to(relative_to.resolve())), "1"
    except ValueError:
        name, relative = str(path.resolve()), "0"
    w = tile.window
    return (
        f'<SimpleSource><SourceFilename relativeToVRT="{relative}">{escape(name)}</SourceFilename>'
        f"<SourceBand>{band}</SourceBand>"
        f'<SrcRect xOff="0" yOff="0" xSize="{w.width}" ySize="{w.height}"/>'
        f'<DstRect xOff="{w.col_off}" yOff="{w.row_off}" xSize="{w.width}" ySize="{w.height}"/>'
        "</SimpleSource>"
    )


def _entry(rgba: tuple[int, ...]) -> str:
    r, g, b, a = (*rgba, 255)[:4]
    return f'<Entry c1="{r}" c2="{g}" c3="{b}" c4="{a}"/>'


def vrt_xml(
    grid: MosaicGrid,
    relative_to: Path,
    files: Sequence[Path] | None = None,
    count: int | None = None,
    dtype: str | None = None,
    nodata: float | None = None,
    colormap: dict[int, tuple[int, ...]] | None = None,
    categories: Sequence[str] = (),
) -> str:
    """Return a GDAL VRT over the tiles of *grid* (or over other files on the same places).

    Pixels no tile covers are masked by a dataset mask band built from the tiles' own
    masks (``mask,1`` sources), so holes read as nodata.

    Args:
        grid: The mosaic grid.
        relative_to: Folder of the VRT; sources inside it are stored relative to it.
        files: One file per tile (default: the tiles themselves).
        count: Bands (default: the tiles').
        dtype: Data type (default: the tiles').
        nodata: Nodata value of the bands, if any.
        colormap: Colour table of band 1, if any.
        categories: Category (class) names of band 1, if any.

    Returns:
        The VRT document.
    """
    files = list(files) if files is not None else [t.path for t in grid.tiles]
    count = count or grid.count
    gdal_type = GDAL_TYPES[dtype or grid.dtype]
    geo = ", ".join(repr(v) for v in grid.transform.to_gdal())
    bands = []
    for b in range(1, count + 1):
        sources = "".join(
            _source(f, str(b), t, relative_to) for f, t in zip(files, grid.tiles, strict=True)
        )
        extra = f"<NoDataValue>{nodata!r}</NoDataValue>" if nodata is not None else ""
        if colormap and b == 1:
            entries = "".join(_entry(colormap.get(i, (0, 0, 0, 0))) for i in range(256))
            extra += f"<ColorInterp>Palette</ColorInterp><ColorTable>{entries}</ColorTable>"
        if categories and b == 1:
            names = "".join(f"<Category>{escape(n)}</Category>" for n in categories)
            extra += f"<CategoryNames>{names}</CategoryNames>"
        bands.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{b}">{extra}{sources}</VRTRasterBand>'
        )
    mask = ""
    if nodata is None:
        sources = "".join(
            _source(f, "mask,1", t, relative_to) for f, t in zip(files, grid.tiles, strict=True)
        )
        mask = f'<MaskBand><VRTRasterBand dataType="Byte">{sources}</VRTRasterBand></MaskBand>'
    return (
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">'
        f"<SRS>{escape(grid.crs.to_wkt())}</SRS><GeoTransform>{geo}</GeoTransform>"
        f"{''.join(bands)}{mask}</VRTDataset>\n"
    )
