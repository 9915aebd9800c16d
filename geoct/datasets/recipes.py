"""Data recipes: turn ISPRS Potsdam downloads, user rasters or synthetic scenes into the layout.

Each ``prepare_*`` function writes the layout described in :mod:`geoct.datasets.layout`
and returns its :class:`~geoct.datasets.layout.DatasetInfo`; the scripts in
``data_recipes/`` are thin command-line wrappers around them.
"""

import glob
import os
import re
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyproj
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import from_bounds
from tqdm import tqdm

from ..classes import POTSDAM, ClassTable
from ..errors import AlignmentError, ConfigError, InputError
from ..geodesy import ground_pixel_size
from ..raster_io import open_raster
from .layout import (
    DEFAULT_BLOCK_SIZE,
    HEIGHT_NODATA,
    POTSDAM_TEST_TILES,
    POTSDAM_TRAIN_TILES,
    POTSDAM_VAL_TILES,
    DatasetInfo,
    Grid,
    RunningStats,
    align_to_grid,
    canonical_tile_id,
    check_aligned,
    check_ids,
    colors_to_ids,
    generic_tile_paths,
    padded_tile_id,
    potsdam_tile_paths,
    prepare_output,
    split_train_val,
    update_stats,
    write_dataset_json,
    write_tile,
)
from .splits import (
    DEFAULT_FRACTIONS,
    DEFAULT_PATCH_SIZE,
    SPLITS,
    BlockGrid,
    Box,
    check_fractions,
    default_block_px,
    make_spatial_split,
)
from .vector_labels import AreaOfInterest, VectorLabels, is_vector_file, read_vector_labels

#: Official archive of each Potsdam product, named in errors about missing files.
POTSDAM_ARCHIVES = {
    "rgbir": "4_Ortho_RGBIR.zip",
    "rgb": "2_Ortho_RGB.zip",
    "irrg": "3_Ortho_IRRG.zip",
    "dsm": "1_DSM.zip",
    "ndsm": "1_DSM_normalisation.zip",
    "label": "5_Labels_all.zip",
    "label_eroded": "5_Labels_all_noBoundary.zip",
}

#: File name pattern of each Potsdam product; group 1 is the tile id in any padding.
POTSDAM_PATTERNS = {
    "rgbir": re.compile(r"^top_potsdam_(\d+_\d+)_RGBIR\.tiff?$", re.IGNORECASE),
    "rgb": re.compile(r"^top_potsdam_(\d+_\d+)_RGB\.tiff?$", re.IGNORECASE),
    "irrg": re.compile(r"^top_potsdam_(\d+_\d+)_IRRG\.tiff?$", re.IGNORECASE),
    "dsm": re.compile(r"^dsm_potsdam_(\d+_\d+)\.tiff?$", re.IGNORECASE),
    "ndsm": re.compile(r"^dsm_potsdam_(\d+_\d+)_normali[sz]ed.*\.(tiff?|jpe?g)$", re.IGNORECASE),
    "label": re.compile(r"^top_potsdam_(\d+_\d+)_label\.tiff?$", re.IGNORECASE),
    "label_eroded": re.compile(r"^top_potsdam_(\d+_\d+)_label_noBoundary\.tiff?$", re.IGNORECASE),
}


@dataclass
class PotsdamSource:
    """Raster files of an ISPRS Potsdam download, found in zips or extracted folders.

    Attributes:
        root: The source folder.
        files: ``{product: {tile_id: path}}``; paths in zips are GDAL ``/vsizip/`` paths.
    """

    root: Path
    files: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def scan(cls, root: str | Path) -> "PotsdamSource":
        """Index the Potsdam rasters under *root*, inside zips or not.

        Raises:
            InputError: If *root* does not exist, is empty, or a zip cannot be read.
        """
        root = Path(root)
        if not root.is_dir():
            raise InputError(root, "source folder does not exist")
        source = cls(root)
        names = []
        for dirpath, _, filenames in sorted(os.walk(root)):
            for name in sorted(filenames):
                path = Path(dirpath) / name
                names.append(name)
                if name.lower().endswith(".zip"):
                    source._add_zip(path)
                else:
                    source._add(name, str(path))
        if not names:
            raise InputError(root, "source folder is empty")
        return source

    def _add_zip(self, path: Path) -> None:
        try:
            with zipfile.ZipFile(path) as archive:
                members = archive.namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise InputError(path, f"cannot be read as a zip archive ({e})") from None
        for member in members:
            self._add(Path(member).name, f"/vsizip/{path.resolve()}/{member}")

    def _add(self, name: str, path: str) -> None:
        for product, pattern in POTSDAM_PATTERNS.items():
            match = pattern.match(name)
            if match:
                self.files.setdefault(product, {}).setdefault(
                    canonical_tile_id(match.group(1)), path
                )
                return

    def has(self, product: str) -> bool:
        """Whether any tile of *product* was found."""
        return bool(self.files.get(product))

    def path(self, product: str, tile_id: str, expected: str) -> str:
        """Path of *product* for *tile_id*.

        Raises:
            InputError: Naming the product's archive and the expected file, if missing.
        """
        try:
            return self.files[product][tile_id]
        except KeyError:
            archive = self.root / POTSDAM_ARCHIVES[product]
            raise InputError(archive, f"tile {tile_id} missing ({expected} not found)") from None


def read_raster(path: str, what: str) -> tuple[np.ndarray, Grid, float | None]:
    """Read all bands of a raster.

    Args:
        path: File or GDAL path.
        what: What the file is, for error messages.

    Returns:
        Pixels ``(bands, H, W)``, grid, nodata value.

    Raises:
        InputError: If the file cannot be read.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read(), Grid.of(src), src.nodata
    except rasterio.errors.RasterioIOError as e:
        raise InputError(path, f"cannot read {what} ({e})") from None


def _display(path: str) -> str:
    return path.removeprefix("/vsizip/")


def _heights_on_grid(path: str, grid: Grid, what: str, resample: bool) -> np.ndarray:
    """Read a height raster onto the image grid, with nodata as :data:`HEIGHT_NODATA`."""
    array, src_grid, nodata = read_raster(path, what)
    values = array[:1].astype(np.float32)
    if nodata is not None:
        values[values == nodata] = HEIGHT_NODATA
    if not src_grid.is_georeferenced:
        if (src_grid.height, src_grid.width) != (grid.height, grid.width):
            raise AlignmentError(
                _display(path),
                f"{what} has no georeferencing and shape {src_grid.height}x{src_grid.width} "
                f"differs from the orthophoto's {grid.height}x{grid.width}",
            )
        return values[0]
    if src_grid.crs != grid.crs:
        raise AlignmentError(
            _display(path), f"{what} CRS {src_grid.crs} differs from the orthophoto's {grid.crs}"
        )
    try:
        check_aligned(grid, src_grid, _display(path), "orthophoto")
    except AlignmentError:
        if not resample:
            raise
        values = align_to_grid(
            values, src_grid, grid, Resampling.bilinear, HEIGHT_NODATA, _display(path)
        )
    return values[0]


def _labels_on_grid(
    path: str, grid: Grid, classes: ClassTable, unknown_as_ignore: bool, resample: bool
) -> np.ndarray:
    """Read a label (colours or ids) as class ids on the image grid."""
    array, src_grid, _ = read_raster(path, "label")
    name = _display(path)
    if array.shape[0] >= 3:
        ids = colors_to_ids(array, classes, name, unknown_as_ignore)
    else:
        ids = check_ids(array[0], classes, name, unknown_as_ignore)
    if not src_grid.is_georeferenced:
        if (src_grid.height, src_grid.width) != (grid.height, grid.width):
            raise AlignmentError(
                name,
                f"label shape {src_grid.height}x{src_grid.width} differs from the "
                f"image's {grid.height}x{grid.width}",
            )
        return ids
    try:
        check_aligned(grid, src_grid, name, "image")
    except AlignmentError:
        if not resample:
            raise
        ids = align_to_grid(
            ids[None], src_grid, grid, Resampling.nearest, classes.ignore_index, name
        )[0]
    return ids


def _crs_string(crs: CRS) -> str:
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def _require_georeferenced(grid: Grid, path: str) -> None:
    if not grid.is_georeferenced:
        raise InputError(
            _display(path), "orthophoto has no georeferencing (no CRS or geotransform)"
        )


def _finish(out: Path, info: DatasetInfo, stats: RunningStats) -> DatasetInfo:
    info.stats = stats.result()
    write_dataset_json(out, info)
    return info


def _potsdam_ortho_paths(source: PotsdamSource, tile_id: str) -> list[str]:
    """The RGBIR orthophoto of a tile, or its RGB and IRRG orthophotos."""
    if source.has("rgbir") or not (source.has("rgb") and source.has("irrg")):
        return [source.path("rgbir", tile_id, f"top_potsdam_{tile_id}_RGBIR.tif")]
    return [
        source.path("rgb", tile_id, f"top_potsdam_{tile_id}_RGB.tif"),
        source.path("irrg", tile_id, f"top_potsdam_{tile_id}_IRRG.tif"),
    ]


def _potsdam_ortho(source: PotsdamSource, tile_id: str) -> tuple[np.ndarray, Grid]:
    """Read the RGBIR orthophoto of a tile, or assemble it from the RGB and IRRG ones."""
    paths = _potsdam_ortho_paths(source, tile_id)
    image, grid, _ = read_raster(paths[0], "orthophoto")
    _require_georeferenced(grid, paths[0])
    if len(paths) == 2:
        irrg, ir_grid, _ = read_raster(paths[1], "orthophoto")
        check_aligned(grid, ir_grid, _display(paths[1]), "RGB orthophoto")
        image = np.concatenate([image[:3], irrg[:1]])
    if image.shape[0] != 4:
        raise InputError(
            _display(paths[0]), f"expected 4 bands (R, G, B, IR), found {image.shape[0]}"
        )
    return image, grid


def prepare_potsdam(
    source: str | Path,
    out: str | Path,
    tiles: Sequence[str] | None = None,
    val_tiles: Sequence[str] | None = None,
    dsm: bool = True,
    ndsm: bool | None = None,
    eroded_labels: bool = False,
    unknown_as_ignore: bool = False,
    resample_heights: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    overwrite: bool = False,
) -> DatasetInfo:
    """Prepare the ISPRS Potsdam 2D semantic labelling download.

    Args:
        source: Folder with the official zips or their extracted contents.
        out: Output folder.
        tiles: Tile ids to prepare (default: all 24 training and 14 test tiles).
        val_tiles: Training tiles to hold out for validation (default
            :data:`~geoct.datasets.layout.POTSDAM_VAL_TILES`).
        dsm: Include the DSM (``1_DSM.zip``); an error if it is missing.
        ndsm: Include the nDSM (``1_DSM_normalisation.zip``); None: if present.
        eroded_labels: Use ``5_Labels_all_noBoundary`` (boundaries become ignore).
        unknown_as_ignore: Map unknown label colours to ignore instead of failing.
        resample_heights: Resample DSM/nDSM onto a mismatching orthophoto grid in the
            same CRS (with a warning) instead of failing.
        block_size: GeoTIFF block side, the training patch size.
        overwrite: Replace an existing prepared dataset in *out*.

    Returns:
        The description written to ``dataset.json``.

    Raises:
        InputError: For missing archives or tiles and unreadable or invalid rasters.
        AlignmentError: When a label, DSM or nDSM does not match its orthophoto.
    """
    src = PotsdamSource.scan(source)
    if not (src.has("rgbir") or src.has("rgb")):
        raise InputError(
            src.root / POTSDAM_ARCHIVES["rgbir"],
            "not found (no top_potsdam_*_RGBIR.tif, nor RGB + IRRG orthophotos)",
        )
    label_product = "label_eroded" if eroded_labels else "label"
    if not src.has(label_product):
        raise InputError(src.root / POTSDAM_ARCHIVES[label_product], "not found (no label tiles)")
    if dsm and not src.has("dsm"):
        raise InputError(
            src.root / POTSDAM_ARCHIVES["dsm"], "not found (use --no-dsm to prepare without it)"
        )
    if ndsm and not src.has("ndsm"):
        raise InputError(src.root / POTSDAM_ARCHIVES["ndsm"], "not found")
    heights = [
        h for h, on in (("dsm", dsm), ("ndsm", src.has("ndsm") if ndsm is None else ndsm)) if on
    ]

    selected = [canonical_tile_id(t) for t in tiles] if tiles else None
    train = [t for t in POTSDAM_TRAIN_TILES if selected is None or t in selected]
    test = [t for t in POTSDAM_TEST_TILES if selected is None or t in selected]
    unknown = sorted(set(selected or ()) - set(train) - set(test))
    if unknown:
        raise InputError(src.root, f"not official Potsdam tile ids: {', '.join(unknown)}")
    if val_tiles is None:
        val_tiles = [t for t in POTSDAM_VAL_TILES if t in train] or None
    train, val = split_train_val(train, [canonical_tile_id(t) for t in val_tiles or ()] or None)

    label_suffix = "_label_noBoundary" if eroded_labels else "_label"
    plan = {}
    for tile_id in train + val + test:
        pid = padded_tile_id(tile_id)
        _potsdam_ortho_paths(src, tile_id)
        files = {
            "label": src.path(label_product, tile_id, f"top_potsdam_{tile_id}{label_suffix}.tif")
        }
        if "dsm" in heights:
            files["dsm"] = src.path("dsm", tile_id, f"dsm_potsdam_{pid}.tif")
        if "ndsm" in heights:
            files["ndsm"] = src.path("ndsm", tile_id, f"dsm_potsdam_{pid}_normalized_lastools.jpg")
        plan[tile_id] = files

    out = prepare_output(out, overwrite)
    info = DatasetInfo(
        name="potsdam",
        crs="",
        gsd=0.0,
        bands=["R", "G", "B", "IR"],
        classes=POTSDAM,
        height=heights,
        splits={"train": train, "val": val, "test": test},
        block_size=block_size,
    )
    stats = RunningStats()
    for tile_id, files in tqdm(plan.items(), desc="Potsdam tiles", unit="tile"):
        image, grid = _potsdam_ortho(src, tile_id)
        labels = _labels_on_grid(files["label"], grid, POTSDAM, unknown_as_ignore, resample=False)
        tile_heights = {
            h: _heights_on_grid(files[h], grid, h.upper(), resample_heights) for h in heights
        }
        if not info.crs:
            info.crs, info.gsd = _crs_string(grid.crs), grid.res
            info.ground_gsd = grid.gsd
        paths = potsdam_tile_paths(tile_id, heights)
        write_tile(out, paths, grid, image, labels, info, tile_heights)
        info.tiles[tile_id] = paths
        if tile_id in train:
            update_stats(stats, info.bands, image, tile_heights)
    return _finish(out, info, stats)


def _glob(pattern: str, what: str) -> list[str]:
    files = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    if not files:
        raise InputError(pattern, f"no {what} files match")
    return files


def _pair(images: list[str], others: list[str], what: str) -> dict[str, str]:
    """Match each image to the file of *others* with the same stem, else by sorted order."""
    by_stem = {Path(p).stem: p for p in others}
    pairs = {img: by_stem.get(Path(img).stem) for img in images}
    missing = [img for img, other in pairs.items() if other is None]
    if not missing:
        return pairs
    if len(images) == len(others):
        warnings.warn(
            f"{what} file names differ from the image names; pairing them in sorted order",
            stacklevel=3,
        )
        return dict(zip(images, others, strict=True))
    raise InputError(missing[0], f"no {what} file with the same name")


def _read_grid(path: str) -> Grid:
    with open_raster(path, georeferenced=True) as src:
        return Grid.of(src)


def _vector_labels(
    files: list[str],
    pattern: str,
    field: str | None,
    classes: ClassTable | None,
    layer: str | None,
    priority: str | None,
    unknown_as_ignore: bool,
) -> VectorLabels | None:
    """Read the label polygons if *files* are vector files; None for label rasters."""
    vectors = [f for f in files if is_vector_file(f)]
    if not vectors:
        return None
    if len(vectors) != len(files):
        raise InputError(pattern, "matches both vector and raster label files; use one kind")
    if len(vectors) > 1:
        raise InputError(
            pattern,
            f"matches {len(vectors)} vector files; give one (merge them first, e.g. in QGIS: "
            "Vector > Data Management Tools > Merge Vector Layers)",
        )
    if field is None:
        raise InputError(vectors[0], "vector labels need --label-field (the class field)")
    return read_vector_labels(vectors[0], field, classes, layer, priority, unknown_as_ignore)


@dataclass
class SpatialSplitOptions:
    """How to split the area of the images into train, val and test blocks.

    Attributes:
        block: Block side in metres (default: a few patches, see
            :func:`~geoct.datasets.splits.default_block_px`).
        buffer: Distance kept between regions of different splits, in metres
            (default, and at least: one patch).
        fractions: Shares of the labelled blocks for train, val and test.
        seed: Seed of the random block assignment.
        patch_size: Training patch side in pixels.
    """

    block: float | None = None
    buffer: float | None = None
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    seed: int = 0
    patch_size: int = DEFAULT_PATCH_SIZE


@dataclass(frozen=True)
class _SplitGeometry:
    """The blocks of a spatial split, with its sizes in whole pixels of the images."""

    blocks: BlockGrid
    options: SpatialSplitOptions
    buffer_crs: float
    patch_crs: float


def _split_geometry(
    grids: Sequence[Grid], options: SpatialSplitOptions, source: str
) -> _SplitGeometry:
    """Lay blocks over all images; block, buffer and patch become whole pixels.

    Raises:
        InputError: If the images are not all north-up in one CRS.
        ConfigError: If the fractions are invalid, or the buffer or the block is
            smaller than a patch.
    """
    try:
        check_fractions(options.fractions)
    except ValueError as e:
        raise ConfigError(f"--split-fractions: {e}") from None
    first = grids[0]
    if any(_crs_string(g.crs) != _crs_string(first.crs) for g in grids):
        raise InputError(source, "a spatial split needs all images in one CRS; reproject them")
    if any(
        g.transform.b or g.transform.d or g.transform.a <= 0 or g.transform.e >= 0 for g in grids
    ):
        raise InputError(source, "a spatial split needs north-up images (no rotation)")
    res = (first.transform.a, -first.transform.e)
    pixel = max(res)
    pixel_m = pixel * _metres_per_unit(first)
    bounds = [_tile_box(g) for g in grids]
    area = (
        min(b[0] for b in bounds),
        min(b[1] for b in bounds),
        max(b[2] for b in bounds),
        max(b[3] for b in bounds),
    )
    patch = options.patch_size
    if options.block is None:
        width, height = round((area[2] - area[0]) / res[0]), round((area[3] - area[1]) / res[1])
        block = default_block_px(width, height, patch)
    else:
        block = max(1, round(options.block / pixel_m))
    buffer = patch if options.buffer is None else round(options.buffer / pixel_m)
    patch_m = f"{patch} px = {patch * pixel_m:g} m"
    if buffer < patch:
        raise ConfigError(
            f"--split-buffer {options.buffer:g} m is less than one patch ({patch_m}), "
            "so validation patches could border training ones"
        )
    if block < patch:
        raise ConfigError(f"--split-block {options.block:g} m is less than one patch ({patch_m})")
    blocks = BlockGrid.over(area, res, block)
    side_m = blocks.mean_side * pixel_m / pixel
    return _SplitGeometry(
        blocks=blocks,
        options=replace(options, block=round(side_m, 3), buffer=round(buffer * pixel_m, 3)),
        buffer_crs=buffer * pixel,
        patch_crs=patch * pixel,
    )


def _metres_per_unit(grid: Grid) -> float:
    """Metres per CRS unit: the unit's length if projected, else on the ground at the centre.

    For degrees, the smaller of the two axes' ground lengths per degree (longitude's,
    away from the equator), so that a distance converted to degrees is at least as
    long on the ground along both axes.
    """
    crs = pyproj.CRS.from_user_input(grid.crs.to_wkt())
    if crs.is_projected and crs.axis_info and crs.axis_info[0].unit_conversion_factor:
        return float(crs.axis_info[0].unit_conversion_factor)
    dx, dy = ground_pixel_size(crs, grid.transform, grid.width, grid.height)
    return min(dx / abs(grid.transform.a), dy / abs(grid.transform.e))


def _tile_box(grid: Grid) -> Box:
    west, south, east, north = rasterio.transform.array_bounds(
        grid.height, grid.width, grid.transform
    )
    return float(west), float(south), float(east), float(north)


def _overlap(a: Box, b: Box) -> Box | None:
    box = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return box if box[2] > box[0] and box[3] > box[1] else None


def _region_stats(
    out: Path, info: DatasetInfo, grids: dict[str, Grid], boxes: Sequence[Box]
) -> RunningStats:
    """Image and height statistics over the training regions of the written tiles."""
    stats = RunningStats()
    for tile_id, grid in grids.items():
        for region in boxes:
            box = _overlap(_tile_box(grid), region)
            if box is None:
                continue
            window = from_bounds(*box, transform=grid.transform).round_offsets().round_lengths()
            with rasterio.open(out / info.tiles[tile_id]["image"]) as src:
                image = src.read(window=window)
            heights = {}
            for product in info.height:
                with rasterio.open(out / info.tiles[tile_id][product]) as src:
                    heights[product] = src.read(1, window=window)
            update_stats(stats, info.bands, image, heights)
    return stats


def _split_spatially(
    out: Path,
    info: DatasetInfo,
    grids: dict[str, Grid],
    geometry: _SplitGeometry,
    labelled: np.ndarray,
    source: str,
) -> RunningStats:
    """Split the labelled blocks, record the split in *info*, return the training statistics.

    Raises:
        InputError: If a split gets no region.
    """
    options = geometry.options
    try:
        split = make_spatial_split(
            geometry.blocks,
            labelled,
            block_size=options.block or 0.0,
            buffer=options.buffer or 0.0,
            buffer_crs=geometry.buffer_crs,
            patch_size=options.patch_size,
            patch_crs=geometry.patch_crs,
            fractions=options.fractions,
            seed=options.seed,
        )
    except ValueError as e:
        raise InputError(
            source,
            f"cannot make a spatial split: {e} (try a smaller --split-block or --patch-size)",
        ) from None
    info.spatial_split = split
    info.splits = {
        name: [
            t for t, g in grids.items() if any(_overlap(_tile_box(g), b) for b in split.boxes(name))
        ]
        for name in SPLITS
    }
    return _region_stats(out, info, grids, split.boxes("train"))


def _tile_splits(
    ids: list[str],
    val_tiles: Sequence[str] | None,
    test_tiles: Sequence[str] | None,
    source: str,
) -> tuple[list[str], list[str], list[str]]:
    """Whole-tile train, val and test splits of *ids*."""
    if test_tiles is None:
        rest, test = split_train_val(ids) if len(ids) >= 3 else (ids, [])
    else:
        rest, test = [t for t in ids if t not in test_tiles], list(test_tiles)
    try:
        train, val = split_train_val(rest, val_tiles)
    except ValueError as e:
        raise InputError(source, str(e)) from None
    return train, val, test


def prepare_rasters(
    images: str,
    labels: str,
    classes: ClassTable | None,
    out: str | Path,
    dsm: str | None = None,
    bands: Sequence[str] | None = None,
    val_tiles: Sequence[str] | None = None,
    test_tiles: Sequence[str] | None = None,
    unknown_as_ignore: bool = False,
    block_size: int = DEFAULT_BLOCK_SIZE,
    name: str = "rasters",
    overwrite: bool = False,
    *,
    label_field: str | None = None,
    label_layer: str | None = None,
    label_priority: str | None = None,
    aoi: str | Path | None = None,
    aoi_layer: str | None = None,
    spatial_split: bool | None = None,
    split_options: SpatialSplitOptions | None = None,
) -> DatasetInfo:
    """Prepare a user's georeferenced rasters, labelled by rasters or polygons, in the geoct layout.

    Label rasters and DSMs that are not on their image's grid are resampled onto it
    (nearest for labels, bilinear for heights), with a warning each time; labels
    without georeferencing but with the image's shape take the image's grid. Label
    polygons are burned onto each image's grid as described in
    :mod:`geoct.datasets.vector_labels`. Pixels outside the *aoi* and pixels no
    label covers get the ignore index.

    Splits are whole tiles, unless *spatial_split* is true, or is None with a single
    image and no *val_tiles* or *test_tiles*: then the area is split into blocks
    (see :mod:`geoct.datasets.splits`) recorded in ``dataset.json``.

    Args:
        images: Glob of image rasters (any CRS, any band count); tile id = file stem.
        labels: Glob of label rasters (1 band of class ids or 3 bands of colours),
            or one vector file of label polygons (see
            :data:`~geoct.datasets.vector_labels.VECTOR_SUFFIXES`).
        classes: Class table (names, colours, ignore index); required for label
            rasters, and for polygons built from the class field's values if None.
        out: Output folder.
        dsm: Glob of DSM rasters, if any.
        bands: Band names (default ``B1..Bn``).
        val_tiles: Tile ids for validation (default: about 1 in 6 non-test tiles).
        test_tiles: Tile ids for testing (default: about 1 in 6 tiles when there are 3+).
        unknown_as_ignore: Map unknown label values to ignore instead of failing
            (polygons with unknown or missing classes are skipped).
        block_size: GeoTIFF block side, the training patch size.
        name: Dataset name.
        overwrite: Replace an existing prepared dataset in *out*.
        label_field: Field of the label polygons holding class names or ids.
        label_layer: Layer of a vector file with several.
        label_priority: Numeric field of the polygons: higher values are drawn last
            and win where polygons overlap (default: smaller polygons win).
        aoi: Vector file of areas of interest; labels outside are ignored.
        aoi_layer: Layer of an AOI file with several.
        spatial_split: Split into spatial blocks (True), whole tiles (False), or
            blocks only for a single image without tile options (None).
        split_options: Block size, buffer, fractions, seed and patch size of a
            spatial split.

    Returns:
        The description written to ``dataset.json``.

    Raises:
        InputError: For missing or unreadable files, invalid labels or band names,
            or a spatial split that leaves a split without a region.
        ConfigError: For contradictory split options.
    """
    image_files = _glob(images, "image")
    label_files = _glob(labels, "label")
    vector = _vector_labels(
        label_files, labels, label_field, classes, label_layer, label_priority, unknown_as_ignore
    )
    if vector is None and classes is None:
        raise InputError(labels, "label rasters need a class table (--classes classes.json)")
    label_of = {} if vector else _pair(image_files, label_files, "label")
    classes = vector.classes if vector else classes
    assert classes is not None
    dsm_of = _pair(image_files, _glob(dsm, "DSM"), "DSM") if dsm else {}
    tile_of = {p: Path(p).stem for p in image_files}
    ids = sorted(tile_of.values())
    if len(set(ids)) != len(ids):
        raise InputError(images, "two images share a file name (tile ids must be unique)")
    grids = {tile_of[p]: _read_grid(p) for p in image_files}
    if vector:
        vector.check_coverage(list(grids.values()))
    area = AreaOfInterest.read(aoi, aoi_layer) if aoi else None
    tile_split = val_tiles is not None or test_tiles is not None
    if spatial_split and tile_split:
        raise ConfigError("give either tile splits (--val-tiles, --test-tiles) or a spatial split")
    by_default = spatial_split is None and len(ids) == 1 and not tile_split
    geometry = None
    if spatial_split or by_default:
        options = split_options or SpatialSplitOptions()
        geometry = _split_geometry([grids[t] for t in ids], options, images)
        labelled = np.zeros(len(geometry.blocks.boxes), dtype=np.int64)
        train, val, test = list(ids), [], []
    else:
        train, val, test = _tile_splits(ids, val_tiles, test_tiles, images)

    out = prepare_output(out, overwrite)
    heights = ["dsm"] if dsm else []
    info = DatasetInfo(
        name=name, crs="", gsd=0.0, bands=[], classes=classes, height=heights,
        splits={"train": train, "val": val, "test": test}, block_size=block_size,
    )  # fmt: skip
    stats = RunningStats()
    class_pixels = np.zeros(classes.num_classes, dtype=np.int64)
    for path in tqdm(image_files, desc="rasters", unit="tile"):
        tile_id = tile_of[path]
        image, grid, _ = read_raster(path, "image")
        _require_georeferenced(grid, path)
        names = list(bands) if bands else [f"B{i}" for i in range(1, image.shape[0] + 1)]
        if len(names) != image.shape[0]:
            raise InputError(path, f"has {image.shape[0]} bands but {len(names)} band names given")
        if not info.crs:
            info.crs, info.gsd, info.bands = _crs_string(grid.crs), grid.res, names
            info.ground_gsd = grid.gsd
        elif names != info.bands:
            raise InputError(path, f"has {image.shape[0]} bands, the first image {len(info.bands)}")
        elif _crs_string(grid.crs) != info.crs:
            warnings.warn(
                f"{path}: CRS differs from the first image's; it is read warped", stacklevel=2
            )
        if vector:
            ids_ = vector.rasterize(grid)
        else:
            ids_ = _labels_on_grid(label_of[path], grid, classes, unknown_as_ignore, resample=True)
        if area:
            inside = area.mask(grid)
            if not inside.any():
                warnings.warn(
                    f"{path}: lies outside the area of interest {area.path}", stacklevel=2
                )
            ids_ = np.where(inside, ids_, np.uint8(classes.ignore_index))
        known = ids_[ids_ != classes.ignore_index]
        class_pixels += np.bincount(known, minlength=classes.num_classes)[: classes.num_classes]
        if not known.size:
            warnings.warn(f"{path}: no labelled pixel (every pixel is ignored)", stacklevel=2)
        if geometry:
            labelled += geometry.blocks.count(grid.transform, ids_ != classes.ignore_index)
        tile_heights = {}
        if dsm:
            tile_heights["dsm"] = _heights_on_grid(dsm_of[path], grid, "DSM", resample=True)
        paths = generic_tile_paths(tile_id, heights)
        write_tile(out, paths, grid, image, ids_, info, tile_heights)
        info.tiles[tile_id] = paths
        if geometry is None and tile_id in train:
            update_stats(stats, info.bands, image, tile_heights)
    if vector:
        vector.warn_unburned(list(grids.values()))
    absent = [n for n, count in zip(classes.names, class_pixels, strict=True) if not count]
    if absent:
        warnings.warn(
            f"{len(absent)} of {classes.num_classes} classes have no labelled pixel: "
            f"{', '.join(absent)}",
            stacklevel=2,
        )
    if geometry:
        stats = _split_spatially(out, info, grids, geometry, labelled, images)
        assert info.spatial_split is not None
        info.spatial_split.made_by_default = by_default
    return _finish(out, info, stats)


def synthetic_tile_ids(n: int) -> tuple[list[str], list[str], list[str]]:
    """Official tile ids for *n* synthetic tiles: (train, val, test).

    At least 3 tiles give at least one tile in each split.
    """
    if n < 1:
        raise ValueError("need at least one tile")
    n_test = max(1, round(n * len(POTSDAM_TEST_TILES) / 38)) if n >= 3 else 0
    n_test = min(n_test, len(POTSDAM_TEST_TILES))
    train = list(POTSDAM_TRAIN_TILES[: n - n_test])
    val = [t for t in POTSDAM_VAL_TILES if t in train] if len(train) >= 24 else None
    train, val = split_train_val(train, val)
    return train, val, list(POTSDAM_TEST_TILES[:n_test])


def prepare_synthetic(
    out: str | Path,
    tiles: int = 6,
    size: int = 512,
    seed: int = 0,
    block_size: int = DEFAULT_BLOCK_SIZE,
    overwrite: bool = False,
) -> DatasetInfo:
    """Write synthetic Potsdam-like tiles in exactly the Potsdam recipe's layout.

    Args:
        out: Output folder.
        tiles: Number of tiles (3 or more give train, val and test tiles).
        size: Tile side in pixels.
        seed: Random seed; the output is a deterministic function of the arguments.
        block_size: GeoTIFF block side (capped to the tile size rounded up to 16).
        overwrite: Replace an existing prepared dataset in *out*.

    Returns:
        The description written to ``dataset.json``.
    """
    from .synthetic import generate_tile

    if tiles > len(POTSDAM_TRAIN_TILES) + len(POTSDAM_TEST_TILES):
        raise ValueError("at most 38 tiles (the official Potsdam tiles)")
    train, val, test = synthetic_tile_ids(tiles)
    out = prepare_output(out, overwrite)
    heights = ["dsm", "ndsm"]
    info = DatasetInfo(
        name="synthetic_potsdam", crs="", gsd=0.0, bands=["R", "G", "B", "IR"],
        classes=POTSDAM, height=heights, splits={"train": train, "val": val, "test": test},
        block_size=min(block_size, -(-size // 16) * 16),
    )  # fmt: skip
    stats = RunningStats()
    for tile_id in tqdm(train + val + test, desc="synthetic tiles", unit="tile"):
        tile = generate_tile(tile_id, size=size, seed=seed)
        grid = Grid(CRS.from_user_input(tile.crs), tile.transform, size, size)
        info.crs, info.gsd = tile.crs, grid.res
        info.ground_gsd = grid.gsd
        tile_heights = {"dsm": tile.dsm, "ndsm": tile.ndsm}
        paths = potsdam_tile_paths(tile_id, heights)
        write_tile(out, paths, grid, tile.rgbir, tile.labels, info, tile_heights)
        info.tiles[tile_id] = paths
        if tile_id in train:
            update_stats(stats, info.bands, tile.rgbir, tile_heights)
    return _finish(out, info, stats)


def run_recipe(prog: str, recipe: Callable[[], DatasetInfo]) -> int:
    """Run a recipe for a command-line script: one-line errors and warnings, exit codes.

    Args:
        prog: Script name, prefixed to error messages.
        recipe: Function that prepares the dataset.

    Returns:
        0 on success, 2 on a :class:`~geoct.errors.GeoctError` (printed on one line).
    """
    import sys

    from ..errors import GeoctError

    def one_line(message: Warning | str, *args: object, **kwargs: object) -> str:
        return f"{prog}: warning: {message}\n"

    with warnings.catch_warnings():
        warnings.formatwarning = one_line  # type: ignore[assignment]
        try:
            info = recipe()
        except GeoctError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 2
    counts = ", ".join(f"{len(v)} {k}" for k, v in info.splits.items())
    split = info.spatial_split
    if split is None:
        print(f"{prog}: wrote {len(info.tiles)} tiles ({counts})")
        return 0
    print(f"{prog}: wrote {len(info.tiles)} tiles")
    why = "one image and no split options, so a " if split.made_by_default else ""
    print(f"{prog}: {why or 'a '}spatial split was made: {split.describe()}")
    return 0
