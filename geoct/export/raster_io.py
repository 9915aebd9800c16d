"""Atomic writing of output files: a temporary name in the target folder, renamed when complete."""

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT

from ..errors import InputError, OutputExistsError


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
