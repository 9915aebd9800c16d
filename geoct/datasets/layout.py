"""The prepared dataset layout: ``dataset.json``, tile names, and its GeoTIFF writer.

Every data recipe writes, and every geoct dataset reads, this layout::

    DATA/
      dataset.json
      images/top_potsdam_2_10_RGBIR.tif
      dsm/dsm_potsdam_02_10.tif
      ndsm/dsm_potsdam_02_10_normalized_lastools.tif
      labels/top_potsdam_2_10_label.tif

All rasters of one tile share one grid (CRS, transform and shape), are tiled in
``block_size`` blocks and deflate-compressed, so a training patch is a plain windowed
read with no merge or warp.
"""

import json
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine
from rasterio.warp import reproject

from ..classes import ClassTable
from ..errors import AlignmentError, InputError, OutputExistsError
from ..geodesy import ground_gsd, pixel_size
from .splits import SpatialSplit

#: File name of the dataset description at the root of a prepared dataset.
DATASET_JSON = "dataset.json"

#: Side of the GeoTIFF blocks the recipes write, in pixels. It divides the usual patch
#: sizes (256, 512), so gridded patches start on block corners, and a random 512 px
#: window decodes about 2.25 patch areas of 256 px blocks instead of 4 of 512 px blocks.
DEFAULT_BLOCK_SIZE = 256

#: Nodata value of prepared DSM and nDSM rasters.
HEIGHT_NODATA = -9999.0

#: Products a tile may have, and the folder each is written to.
PRODUCT_DIRS = {"image": "images", "dsm": "dsm", "ndsm": "ndsm", "label": "labels"}

#: The 24 official ISPRS Potsdam training tiles (canonical ids, as in TorchGeo's Potsdam2D).
POTSDAM_TRAIN_TILES = (
    "2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11",
    "5_12", "6_10", "6_11", "6_12", "6_7", "6_8", "6_9", "7_10", "7_11", "7_12", "7_7", "7_8",
    "7_9",
)  # fmt: skip

#: The 14 official ISPRS Potsdam test tiles (canonical ids).
POTSDAM_TEST_TILES = (
    "2_13", "2_14", "3_13", "3_14", "4_13", "4_14", "4_15", "5_13", "5_14", "5_15", "6_13",
    "6_14", "6_15", "7_13",
)  # fmt: skip

#: Training tiles held out for validation by default: one per row of the tile grid.
POTSDAM_VAL_TILES = ("2_11", "4_10", "5_12", "7_8")

_TILE_ID = re.compile(r"(?<!\d)(\d{1,2})_(\d{1,2})(?!\d)")


def canonical_tile_id(text: str) -> str:
    """Return the canonical id (``"2_10"``) of a Potsdam tile id or file name.

    Args:
        text: A tile id such as ``"02_10"`` or a file name containing one, such as
            ``"dsm_potsdam_02_10_normalized_lastools.jpg"``.

    Returns:
        The id without zero padding.

    Raises:
        ValueError: If *text* contains no ``ROW_COL`` tile id.
    """
    match = _TILE_ID.search(Path(text).name)
    if match is None:
        raise ValueError(f"no tile id in {text!r}")
    return f"{int(match.group(1))}_{int(match.group(2))}"


def padded_tile_id(tile_id: str) -> str:
    """Return the zero-padded form (``"02_10"``) used by the DSM products."""
    row, col = canonical_tile_id(tile_id).split("_")
    return f"{int(row):02d}_{int(col):02d}"


def potsdam_tile_paths(tile_id: str, height: Iterable[str] = ("dsm", "ndsm")) -> dict[str, str]:
    """Relative paths of one tile's rasters, in the official ISPRS file names.

    Args:
        tile_id: Tile id in any padding.
        height: Height products the tile has (``"dsm"``, ``"ndsm"``).

    Returns:
        Mapping of product (``image``, ``dsm``, ``ndsm``, ``label``) to path.
    """
    tid = canonical_tile_id(tile_id)
    pid = padded_tile_id(tile_id)
    paths = {
        "image": f"images/top_potsdam_{tid}_RGBIR.tif",
        "dsm": f"dsm/dsm_potsdam_{pid}.tif",
        "ndsm": f"ndsm/dsm_potsdam_{pid}_normalized_lastools.tif",
        "label": f"labels/top_potsdam_{tid}_label.tif",
    }
    return {k: v for k, v in paths.items() if k in ("image", "label") or k in height}


def generic_tile_paths(tile_id: str, height: Iterable[str] = ("dsm",)) -> dict[str, str]:
    """Relative paths of one tile's rasters for user data: ``<folder>/<tile_id>.tif``."""
    products = ["image", "label", *height]
    return {p: f"{PRODUCT_DIRS[p]}/{tile_id}.tif" for p in products}


@dataclass(frozen=True)
class Grid:
    """The pixel grid of a raster: CRS, affine transform and shape.

    Attributes:
        crs: Coordinate reference system.
        transform: Affine transform from pixel to CRS coordinates.
        width: Number of columns.
        height: Number of rows.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, src: rasterio.io.DatasetReader) -> "Grid":
        """Return the grid of an open raster."""
        return cls(src.crs, src.transform, src.width, src.height)

    @property
    def res(self) -> float:
        """Pixel size along x (length of the column vector), in CRS units."""
        return pixel_size(self.transform)[0]

    @property
    def gsd(self) -> float:
        """Ground sample distance in metres at the grid's centre (see :mod:`geoct.geodesy`)."""
        return ground_gsd(self.crs, self.transform, self.width, self.height)

    @property
    def is_georeferenced(self) -> bool:
        """Whether the raster has a CRS and a non-identity transform."""
        return self.crs is not None and not self.transform.is_identity

    def describe(self) -> str:
        """Short human-readable form, for error messages."""
        crs = self.crs.to_string() if self.crs else "no CRS"
        t = self.transform
        return f"{self.width}x{self.height} px, {crs}, origin ({t.c:.3f}, {t.f:.3f}), res {t.a:g}"


def check_aligned(reference: Grid, other: Grid, path: str | Path, what: str) -> None:
    """Raise :class:`AlignmentError` unless *other* has the same grid as *reference*.

    Args:
        reference: Grid that defines the tile (the image's).
        other: Grid of the raster to check.
        path: File of *other*, named in the error.
        what: What *reference* is, e.g. ``"orthophoto"``.

    Raises:
        AlignmentError: If CRS, shape or transform differ.
    """
    if (other.height, other.width) != (reference.height, reference.width):
        raise AlignmentError(
            path,
            f"shape {other.height}x{other.width} differs from the {what}'s "
            f"{reference.height}x{reference.width}",
        )
    if other.crs != reference.crs:
        raise AlignmentError(path, f"CRS {other.crs} differs from the {what}'s CRS {reference.crs}")
    if not other.transform.almost_equals(reference.transform, precision=1e-6):
        raise AlignmentError(
            path, f"grid ({other.describe()}) differs from the {what}'s ({reference.describe()})"
        )


def align_to_grid(
    array: np.ndarray,
    src: Grid,
    dst: Grid,
    resampling: Resampling,
    nodata: float,
    path: str | Path,
) -> np.ndarray:
    """Resample a (bands, H, W) array onto *dst*, warning that it did so.

    Args:
        array: Source pixels, ``(bands, height, width)``.
        src: Grid of *array*.
        dst: Target grid.
        resampling: Resampling method (nearest for labels, bilinear for heights).
        nodata: Value of source nodata pixels and of target pixels with no source.
        path: Source file, named in the warning.

    Returns:
        Array of shape ``(bands, dst.height, dst.width)`` and the dtype of *array*.
    """
    warnings.warn(
        f"{path}: resampled ({resampling.name}) from {src.describe()} to {dst.describe()}",
        stacklevel=2,
    )
    out = np.full((array.shape[0], dst.height, dst.width), nodata, dtype=array.dtype)
    reproject(
        array,
        out,
        src_transform=src.transform,
        src_crs=src.crs,
        dst_transform=dst.transform,
        dst_crs=dst.crs,
        src_nodata=nodata,
        dst_nodata=nodata,
        resampling=resampling,
    )
    return out


def _lookup_table(classes: ClassTable) -> np.ndarray:
    lut = np.full(1 << 24, np.iinfo(np.uint16).max, dtype=np.uint16)
    for class_id, (r, g, b) in enumerate(classes.colors):
        lut[(r << 16) | (g << 8) | b] = class_id
    if classes.ignore_color is not None:
        r, g, b = classes.ignore_color
        lut[(r << 16) | (g << 8) | b] = classes.ignore_index
    return lut


def _format_counts(values: np.ndarray, counts: np.ndarray, limit: int = 8) -> str:
    order = np.argsort(-counts)
    shown = ", ".join(f"{values[i]}: {counts[i]} px" for i in order[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return shown + more


def colors_to_ids(
    rgb: np.ndarray, classes: ClassTable, path: str | Path, unknown_as_ignore: bool = False
) -> np.ndarray:
    """Convert a colour-coded label to class ids.

    Args:
        rgb: Label colours, ``(3, H, W)`` (more bands are ignored).
        classes: Class table giving each class's colour.
        path: Label file, named in the error.
        unknown_as_ignore: Map colours not in *classes* to the ignore index instead of
            failing.

    Returns:
        Class ids, uint8 ``(H, W)``; the ignore colour maps to the ignore index.

    Raises:
        InputError: If the label has fewer than 3 bands, or colours not in *classes*
            (listed with their pixel counts) and *unknown_as_ignore* is false.
    """
    if rgb.shape[0] < 3:
        raise InputError(path, f"colour label needs 3 bands, found {rgb.shape[0]}")
    code = (
        (rgb[0].astype(np.uint32) << 16)
        | (rgb[1].astype(np.uint32) << 8)
        | rgb[2].astype(np.uint32)
    )
    ids = _lookup_table(classes)[code]
    unknown = ids == np.iinfo(np.uint16).max
    if unknown.any():
        if not unknown_as_ignore:
            values, counts = np.unique(code[unknown], return_counts=True)
            colours = np.array([f"({v >> 16},{(v >> 8) & 255},{v & 255})" for v in values.tolist()])
            raise InputError(
                path,
                f"{len(values)} unknown label colour(s): {_format_counts(colours, counts)} "
                "(use --unknown-as-ignore to map them to the ignore index)",
            )
        ids[unknown] = classes.ignore_index
    return ids.astype(np.uint8)


def check_ids(
    ids: np.ndarray, classes: ClassTable, path: str | Path, unknown_as_ignore: bool = False
) -> np.ndarray:
    """Check a class-id label, reporting ids that are neither classes nor ignore.

    Args:
        ids: Class ids, ``(H, W)``.
        classes: Class table.
        path: Label file, named in the error.
        unknown_as_ignore: Map unknown ids to the ignore index instead of failing.

    Returns:
        Class ids as uint8 ``(H, W)``.

    Raises:
        InputError: If unknown ids occur and *unknown_as_ignore* is false.
    """
    unknown = ((ids < 0) | (ids >= classes.num_classes)) & (ids != classes.ignore_index)
    if unknown.any():
        if not unknown_as_ignore:
            values, counts = np.unique(ids[unknown], return_counts=True)
            raise InputError(
                path,
                f"{len(values)} unknown class id(s): {_format_counts(values, counts)} "
                "(use --unknown-as-ignore to map them to the ignore index)",
            )
        ids = np.where(unknown, classes.ignore_index, ids)
    return ids.astype(np.uint8)


def ids_to_colors(ids: np.ndarray, classes: ClassTable) -> np.ndarray:
    """Inverse of :func:`colors_to_ids`: class ids ``(H, W)`` to colours ``(3, H, W)``.

    The ignore index becomes the ignore colour (black if the table has none).
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: classes.num_classes] = classes.colors
    palette[classes.ignore_index] = classes.ignore_color or (0, 0, 0)
    return np.moveaxis(palette[ids], -1, 0)


class RunningStats:
    """Per-band mean, standard deviation, value range and data type over many rasters.

    Sums are kept in float64, so statistics of full tiles are exact. The range and
    the data type are recorded so that prediction can refuse imagery whose values
    the model never saw (uint16 for a byte model, reflectance in 0..1, ...).
    """

    def __init__(self) -> None:
        """Initialise empty accumulators."""
        self._sums: dict[str, list[float]] = {}
        self._ranges: dict[str, list[float]] = {}
        self._dtypes: dict[str, str] = {}

    def update(self, name: str, values: np.ndarray, nodata: float | None = None) -> None:
        """Add the pixels of one band.

        Args:
            name: Band name (``"R"``, ``"dsm"``, ...).
            values: Pixel values of any shape.
            nodata: Value to leave out, if any; non-finite values are always left out.
        """
        self._dtypes.setdefault(name, str(values.dtype))
        v = values.astype(np.float64, copy=False).ravel()
        valid = np.isfinite(v)
        if nodata is not None:
            valid &= v != nodata
        if not valid.all():
            v = v[valid]
        acc = self._sums.setdefault(name, [0, 0.0, 0.0])
        acc[0] += v.size
        acc[1] += float(v.sum())
        acc[2] += float(np.dot(v, v))
        if v.size:
            lo, hi = self._ranges.setdefault(name, [math.inf, -math.inf])
            self._ranges[name] = [min(lo, float(v.min())), max(hi, float(v.max()))]

    def result(self) -> dict[str, dict[str, Any]]:
        """Return ``{name: {"mean", "std", "min", "max", "dtype"}}``; a constant band gets ``std`` 1."""
        out: dict[str, dict[str, Any]] = {}
        for name, (n, s, ss) in self._sums.items():
            mean = s / max(n, 1)
            var = max(ss / max(n, 1) - mean * mean, 0.0)
            std = float(np.sqrt(var))
            out[name] = {"mean": mean, "std": std if std > 1e-6 else 1.0}
            if name in self._ranges:
                out[name]["min"], out[name]["max"] = self._ranges[name]
            out[name]["dtype"] = self._dtypes[name]
        return out


@dataclass
class DatasetInfo:
    """Contents of ``dataset.json``: what a prepared dataset holds.

    Attributes:
        name: Dataset name.
        crs: CRS of the tiles, as WKT or an ``EPSG:`` string.
        gsd: Pixel size in CRS units.
        ground_gsd: Ground sample distance in metres (geodesic, at the first tile's
            centre), or ``None`` in files from before it was recorded.
        bands: Names of the image bands, in file order.
        height: Height products present (``["dsm"]``, ``["dsm", "ndsm"]``...); in JSON
            this is ``"dsm"``, ``"ndsm"``, a list, or null.
        classes: Class table of the labels.
        splits: Tile ids of the ``train``, ``val`` and ``test`` splits.
        stats: ``{band or "dsm"/"ndsm": {"mean", "std", "min", "max", "dtype"}}`` over the
            training tiles (``min``, ``max`` and ``dtype`` may be missing in older files).
        block_size: Side of the GeoTIFF blocks, in pixels.
        tiles: ``{tile_id: {product: path relative to the root}}``.
        spatial_split: Regions of each split within the tiles, when the splits are
            spatial blocks rather than whole tiles (then ``splits`` lists the tiles
            each split's regions lie on).
    """

    name: str
    crs: str
    gsd: float
    bands: list[str]
    classes: ClassTable
    height: list[str] = field(default_factory=list)
    splits: dict[str, list[str]] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    block_size: int = DEFAULT_BLOCK_SIZE
    ground_gsd: float | None = None
    tiles: dict[str, dict[str, str]] = field(default_factory=dict)
    spatial_split: SpatialSplit | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (``height`` as a single string when there is one)."""
        height: str | list[str] | None = list(self.height) or None
        if height and len(height) == 1:
            height = height[0]
        spatial = {"spatial_split": self.spatial_split.to_dict()} if self.spatial_split else {}
        return {
            "name": self.name,
            "crs": self.crs,
            "gsd": self.gsd,
            "bands": list(self.bands),
            "height": height,
            "classes": self.classes.to_dict(),
            "splits": self.splits,
            "stats": self.stats,
            "block_size": self.block_size,
            "tiles": self.tiles,
            **({"ground_gsd": self.ground_gsd} if self.ground_gsd is not None else {}),
            **spatial,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DatasetInfo":
        """Inverse of :meth:`to_dict`."""
        height = d.get("height") or []
        return cls(
            name=d["name"],
            crs=d["crs"],
            gsd=float(d["gsd"]),
            bands=list(d["bands"]),
            classes=ClassTable.from_dict(d["classes"]),
            height=[height] if isinstance(height, str) else list(height),
            splits={k: list(v) for k, v in d.get("splits", {}).items()},
            stats=d.get("stats", {}),
            block_size=int(d.get("block_size", DEFAULT_BLOCK_SIZE)),
            tiles=d.get("tiles", {}),
            ground_gsd=float(d["ground_gsd"]) if d.get("ground_gsd") is not None else None,
            spatial_split=SpatialSplit.from_dict(d["spatial_split"])
            if d.get("spatial_split")
            else None,
        )

    def tile_files(self, root: str | Path, tile_ids: Iterable[str], product: str) -> list[str]:
        """Absolute paths of *product* for *tile_ids* (tiles lacking it are skipped)."""
        root = Path(root)
        return [str(root / self.tiles[t][product]) for t in tile_ids if product in self.tiles[t]]


def read_dataset_json(root: str | Path) -> DatasetInfo:
    """Read and check ``dataset.json`` of a prepared dataset.

    Args:
        root: Folder of the prepared dataset.

    Returns:
        Its description.

    Raises:
        InputError: If the file is missing or invalid, or names a tile file that does
            not exist.
    """
    path = Path(root) / DATASET_JSON
    try:
        info = DatasetInfo.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise InputError(path, "not found (prepare the data with a data_recipes/ script)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(path, f"not a valid dataset description ({e})") from None
    for split, tile_ids in info.splits.items():
        for tile_id in tile_ids:
            if tile_id not in info.tiles:
                raise InputError(path, f"{split} tile {tile_id} is not listed under 'tiles'")
    for products in info.tiles.values():
        for rel in products.values():
            if not (Path(root) / rel).is_file():
                raise InputError(Path(root) / rel, "listed in dataset.json but missing")
    return info


def write_dataset_json(root: str | Path, info: DatasetInfo) -> Path:
    """Write ``dataset.json`` atomically and return its path."""
    path = Path(root) / DATASET_JSON
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(info.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path


def prepare_output(out: str | Path, overwrite: bool) -> Path:
    """Create the output folder of a recipe, refusing to overwrite a prepared dataset.

    Raises:
        OutputExistsError: If *out* already holds a ``dataset.json`` and not *overwrite*.
        InputError: If *out* cannot be created.
    """
    out = Path(out)
    if (out / DATASET_JSON).exists() and not overwrite:
        raise OutputExistsError(out / DATASET_JSON)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create output folder ({e.strerror})") from None
    return out


def write_raster(
    path: str | Path,
    array: np.ndarray,
    grid: Grid,
    nodata: float | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    descriptions: Sequence[str] | None = None,
    colormap: dict[int, tuple[int, int, int]] | None = None,
) -> None:
    """Write a (bands, H, W) array as a tiled, deflate-compressed GeoTIFF on *grid*.

    The file is written under a temporary name and renamed when complete.

    Args:
        path: Output file.
        array: Pixels, ``(bands, height, width)``.
        grid: CRS, transform and shape to write.
        nodata: Nodata value, if any.
        block_size: Block side in pixels (a multiple of 16).
        descriptions: Band descriptions (band names).
        colormap: Palette of band 1, for class rasters.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.tif")
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": array.shape[0],
        "dtype": array.dtype,
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": block_size,
        "blockysize": block_size,
        "compress": "deflate",
        "interleave": "pixel",
        "BIGTIFF": "IF_SAFER",
    }
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            for i, name in enumerate(descriptions or (), start=1):
                dst.set_band_description(i, name)
            if colormap:
                dst.write_colormap(1, colormap)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tile(
    root: str | Path,
    paths: dict[str, str],
    grid: Grid,
    image: np.ndarray,
    labels: np.ndarray,
    info: DatasetInfo,
    heights: dict[str, np.ndarray] | None = None,
) -> None:
    """Write all rasters of one tile of the prepared layout.

    Args:
        root: Dataset folder.
        paths: Relative output path per product (see :func:`potsdam_tile_paths`).
        grid: Grid of the tile (the image's).
        image: Image bands, ``(bands, H, W)``, in ``info.bands`` order.
        labels: Class ids, uint8 ``(H, W)``, ignore index for unlabelled pixels.
        info: Dataset description (bands, classes, block size).
        heights: ``{"dsm"|"ndsm": float32 (H, W)}`` with :data:`HEIGHT_NODATA` as nodata.
    """
    root = Path(root)
    write_raster(
        root / paths["image"], image, grid, block_size=info.block_size, descriptions=info.bands
    )
    for product, values in (heights or {}).items():
        write_raster(
            root / paths[product],
            values.astype(np.float32)[None],
            grid,
            nodata=HEIGHT_NODATA,
            block_size=info.block_size,
            descriptions=[product],
        )
    colormap = {i: tuple(c) for i, c in enumerate(info.classes.colors)}
    colormap[info.classes.ignore_index] = tuple(info.classes.ignore_color or (0, 0, 0))
    write_raster(
        root / paths["label"],
        labels.astype(np.uint8)[None],
        grid,
        nodata=info.classes.ignore_index,
        block_size=info.block_size,
        descriptions=["class"],
        colormap=colormap,
    )


def update_stats(
    stats: RunningStats,
    bands: Sequence[str],
    image: np.ndarray,
    heights: dict[str, np.ndarray] | None = None,
) -> None:
    """Add one training tile's image bands and heights to *stats*."""
    for name, band in zip(bands, image, strict=True):
        stats.update(name, band)
    for product, values in (heights or {}).items():
        stats.update(product, values, nodata=HEIGHT_NODATA)


def split_train_val(
    train: Sequence[str], val: Sequence[str] | None = None, fraction: float = 1 / 6
) -> tuple[list[str], list[str]]:
    """Hold out validation tiles from the training tiles.

    Args:
        train: Training tile ids.
        val: Tiles to hold out; by default every ``1 / fraction``-th tile of the sorted
            ids, at least one when there are two or more training tiles.
        fraction: Share of training tiles held out when *val* is not given.

    Returns:
        The remaining training tiles and the validation tiles.

    Raises:
        ValueError: If a tile in *val* is not a training tile.
    """
    train = list(train)
    if val is None:
        n_val = max(1, round(len(train) * fraction)) if len(train) > 1 else 0
        step = len(train) / max(n_val, 1)
        val = [train[int(i * step + step / 2)] for i in range(n_val)]
    unknown = sorted(set(val) - set(train))
    if unknown:
        raise ValueError(f"validation tiles {unknown} are not training tiles")
    return [t for t in train if t not in val], list(val)
