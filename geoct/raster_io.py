"""Opening, warping and atomically writing rasters: the I/O that predict, export and the datasets share.

Inputs are opened with :func:`open_raster`, which turns every way a file can fail
to open into one :class:`~geoct.errors.InputError`, and, for inputs that must be
georeferenced, refuses rasters placed only by ground control points or RPCs
instead of silently reading them at the identity transform. Outputs are written
under a temporary name in their folder and renamed when complete
(:func:`atomic_output`).
"""

import contextlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import rasterio
from affine import Affine
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from .errors import InputError, OutputExistsError


def open_raster(path: str | Path, georeferenced: bool = False) -> DatasetReader:
    """Open a raster for reading, turning failures into :class:`InputError`.

    Args:
        path: Raster file (GeoTIFF, VRT, ...).
        georeferenced: Require a CRS and a geotransform. Rasters referenced only by
            ground control points or RPCs are refused with the ``gdalwarp`` command
            that turns them into a georeferenced grid, since reading them here would
            place them at the identity transform.

    Returns:
        The open dataset.

    Raises:
        InputError: If the file is missing or not a raster, or lacks a CRS or a
            geotransform when *georeferenced* is true.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(path)
    except RasterioIOError:
        raise InputError(path, "not a raster GDAL can read") from None
    if georeferenced:
        try:
            check_georeferenced(src, path)
        except BaseException:
            src.close()
            raise
    return src


def check_georeferenced(src: DatasetReader, path: Path) -> None:
    """Raise :class:`InputError` unless *src* has a CRS and a geotransform.

    Args:
        src: The open raster.
        path: Its path, for messages.
    """
    gcps, _ = src.gcps
    if src.transform == Affine.identity() and gcps:
        raise InputError(
            path,
            f"is georeferenced by {len(gcps)} ground control points, not a geotransform; "
            "warp it to a grid first, e.g. 'gdalwarp -r bilinear -tps IN.tif OUT.tif'",
        )
    if src.transform == Affine.identity() and src.rpcs is not None:
        raise InputError(
            path,
            "is georeferenced by RPCs, not a geotransform; orthorectify it first, e.g. "
            "'gdalwarp -rpc -to RPC_DEM=dem.tif -r bilinear IN.tif OUT.tif'",
        )
    if src.crs is None:
        raise InputError(path, "raster has no CRS (georeferencing is required)")
    if src.transform == Affine.identity():
        raise InputError(path, "raster has no geotransform (georeferencing is required)")


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Check that *path* may be written before any work starts.

    Args:
        path: The output file.
        overwrite: Whether an existing file may be replaced.

    Returns:
        *path* as a :class:`~pathlib.Path`.

    Raises:
        OutputExistsError: If *path* exists and *overwrite* is false.
        InputError: If *path* is a folder, or its folder is missing or not writable.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, expected an output file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(folder, "output folder does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(folder, "output folder is not writable")
    return path


def _companions(tmp: Path) -> list[Path]:
    """Files created beside *tmp* that share its unique stem (sidecars such as ``.aux.xml``)."""
    stem = tmp.name[: -len(tmp.suffix)] if tmp.suffix else tmp.name
    return [p for p in tmp.parent.glob(f"{stem}*") if p != tmp]


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the folder of *path*; rename it to *path* on success.

    The temporary path does not exist yet and ends with the suffix of *path*, so
    that format drivers recognise it. Sidecar files written beside it with the
    same stem (``TMP.tif.aux.xml``, ``TMP.dbf``, ...) are renamed along with it.
    On any exception, including :class:`KeyboardInterrupt`, the temporary file
    and its sidecars are deleted and nothing appears at *path*.

    Args:
        path: The final output file.
        overwrite: Whether an existing *path* may be replaced.

    Yields:
        The temporary path to write.

    Raises:
        OutputExistsError: If *path* exists and *overwrite* is false.
        InputError: If the output folder is missing or not writable, or nothing
            was written to the temporary path.
    """
    path = check_output(path, overwrite)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.partial{path.suffix}")
    try:
        yield tmp
        if not tmp.exists():
            raise InputError(path, "nothing was written")
        if path.exists() and not overwrite:
            raise OutputExistsError(path)
        stem = tmp.name[: -len(tmp.suffix)] if tmp.suffix else tmp.name
        final_stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        for sidecar in _companions(tmp):
            os.replace(sidecar, path.with_name(final_stem + sidecar.name[len(stem) :]))
        os.replace(tmp, path)
    except BaseException:
        for leftover in [tmp, *_companions(tmp)]:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
        raise


def warp_to_grid(
    src: DatasetReader, grid: DatasetReader, resampling: Resampling, **kwargs: object
) -> WarpedVRT:
    """View *src* on exactly the pixel grid (CRS, transform, shape) of *grid*, warped on the fly.

    Args:
        src: Dataset to resample.
        grid: Dataset whose grid the view takes.
        resampling: Resampling method (nearest for classes, bilinear for heights).
        **kwargs: Further :class:`~rasterio.vrt.WarpedVRT` options (nodata, dtype, ...).

    Returns:
        The warped view; close it after use.
    """
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=resampling,
        **kwargs,
    )


def publishing_journal(first: str | Path) -> Path:
    """Return the journal of an unfinished :func:`output_set` whose first path is *first*."""
    first = Path(first)
    return first.with_name(f".{first.name}.geoct-publishing.json")


def _restore(journal: Path) -> None:
    """Undo an unfinished :func:`output_set`: remove its new files and put back the old ones."""
    record = json.loads(journal.read_text(encoding="utf-8"))
    for path in record["paths"]:
        with contextlib.suppress(FileNotFoundError):
            Path(path).unlink()
    for backup, path in record["backups"].items():
        with contextlib.suppress(FileNotFoundError):
            os.replace(backup, path)
    journal.unlink(missing_ok=True)


@contextlib.contextmanager
def output_set(paths: Sequence[str | Path], overwrite: bool = False) -> Iterator[list[Path]]:
    """Publish the files at *paths* as one unit: all of them or none.

    Each file is still written atomically (:func:`atomic_output`) inside the block;
    this makes the set atomic too. Before the block, existing files (only with
    *overwrite*) are moved aside and a journal beside the first path records the
    set. If the block fails or is interrupted, every file of the set it wrote is
    removed and the old ones are put back. If the process dies instead, the
    journal stays and the next :func:`output_set` on the same first path finishes
    that undo first, so a rerun after any interruption starts clean.

    Args:
        paths: Every file the unit may write (the first names the journal).
        overwrite: Whether existing files may be replaced.

    Yields:
        The paths, checked to be writable.

    Raises:
        OutputExistsError: If a file exists and *overwrite* is false.
    """
    paths = [Path(p) for p in paths]
    journal = publishing_journal(paths[0])
    if journal.exists():
        _restore(journal)
    for path in paths:
        check_output(path, overwrite)
    backups = {
        str(p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.backup")): str(p)
        for p in paths
        if p.exists()
    }
    journal.write_text(
        json.dumps({"paths": [str(p) for p in paths], "backups": backups}), encoding="utf-8"
    )
    for backup, path in backups.items():
        os.replace(path, backup)
    try:
        yield paths
    except BaseException:
        _restore(journal)
        raise
    for backup in backups:
        Path(backup).unlink(missing_ok=True)
    journal.unlink(missing_ok=True)


@contextlib.contextmanager
def read_errors(path: Path, win: Window) -> Iterator[None]:
    """Turn a GDAL read failure inside the block into an :class:`InputError` naming *win*.

    Args:
        path: The file being read.
        win: The window being read.

    Raises:
        InputError: ``cannot read rows R0-R1, columns C0-C1: MESSAGE`` (inclusive
            bounds, first line of GDAL's message).
    """
    try:
        yield
    except (RasterioIOError, CPLE_BaseError) as e:
        r0, c0 = int(win.row_off), int(win.col_off)
        r1, c1 = r0 + int(win.height) - 1, c0 + int(win.width) - 1
        message = _gdal_message(e)
        raise InputError(
            path, f"cannot read rows {r0}-{r1}, columns {c0}-{c1}: {message}"
        ) from None


def _gdal_message(error: BaseException) -> str:
    """First line of GDAL's own message behind a rasterio error (rasterio chains it)."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    lines = str(cause).strip().splitlines() or str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
