"""Reading normalised, reflect-padded windows of a scene and its DSM companion.

A pixel is nodata when the dataset mask of any model band is zero (GDAL's per-band
masks: nodata value, internal mask or an alpha band that is not a model band), or
when the DSM is nodata there (or absent after warping). Nodata pixels are set to
the band mean (zero after normalisation) before they reach the model and get zero
blending weight.

Scene bands are matched to the model's bands by their descriptions when the
scene names every model band (``R``, ``G``, ``B``, ``IR``, case-insensitive), else
by position among the bands that are not alpha. An alpha band is a mask, never
data: an RGBA file for an R,G,B,IR model is refused rather than feeding the alpha
band to the model as IR, unless that band's description names it as a model band.
"""

import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..errors import AlignmentError, ConfigError, InputError
from ..geodesy import ground_pixel_size
from ..metadata import ModelSpec
from ..raster_io import open_raster, read_errors, warp_to_grid
from .values import ValueCheck, ValueOptions, needs_check, normalisation

#: Relative difference between scene and checkpoint GSD above which a warning is given.
GSD_TOLERANCE = 0.10


def alpha_bands(src: rasterio.io.DatasetReaderBase, spec: ModelSpec) -> list[int]:
    """Return the 1-based indexes of alpha bands not described as one of the model's bands."""
    wanted = {b.upper() for b in spec.optical_bands}
    return [
        i
        for i, (ci, desc) in enumerate(zip(src.colorinterp, src.descriptions, strict=True), 1)
        if ci == ColorInterp.alpha and (desc or "").strip().upper() not in wanted
    ]


def band_indexes(src: rasterio.io.DatasetReaderBase, spec: ModelSpec, path: Path) -> list[int]:
    """Return the 1-based band indexes of the scene that feed the model's optical bands.

    Bands are matched by description when the scene names all of them, else by
    position among the bands that are not alpha, in which case their count must
    match. Alpha bands are masks and never feed the model.

    Args:
        src: The open scene.
        spec: The model's input contract.
        path: Scene path, for error messages.

    Returns:
        Band indexes in model order.

    Raises:
        InputError: If the bands do not match the checkpoint's.
    """
    wanted = spec.optical_bands
    names = [(d or "").strip().upper() for d in src.descriptions]
    if all(b.upper() in names for b in wanted):
        return [names.index(b.upper()) + 1 for b in wanted]
    alpha = alpha_bands(src, spec)
    data = [i for i in range(1, src.count + 1) if i not in alpha]
    if len(data) == len(wanted):
        return data
    expected = f"the checkpoint expects {len(wanted)} ({', '.join(wanted)})"
    if alpha and src.count == len(wanted):
        k = alpha[-1]
        raise InputError(
            path,
            f"band {k} is an alpha band (a mask, not data) and {expected}; if band {k} "
            f"holds {wanted[k - 1]}, mark it as data ('gdal_edit.py -colorinterp_{k} "
            f"undefined') or describe it as {wanted[k - 1]!r}",
        )
    kind = f" data band(s) and {len(alpha)} alpha band(s)" if alpha else " band(s)"
    raise InputError(path, f"has {len(data)}{kind}, {expected}")


def mask_mode(src: rasterio.io.DatasetReaderBase, indexes: list[int]) -> str:
    """How nodata is found: ``"none"``, ``"masks"``, ``"nodata"`` or ``"alpha"``.

    ``"none"``: all valid; ``"masks"``: GDAL's masks; ``"nodata"``: the nodata value;
    ``"alpha"``: alpha bands GDAL does not use as a mask (e.g. the fifth band of an
    R, G, B, IR, alpha file), where zero alpha is nodata.

    Args:
        src: The open scene.
        indexes: Band indexes used by the model.

    Returns:
        The mode.
    """
    alpha = {i for i, ci in enumerate(src.colorinterp, start=1) if ci == ColorInterp.alpha}
    if alpha & set(indexes):
        return "none" if src.nodata is None else "nodata"
    if all(src.mask_flag_enums[i - 1] == [MaskFlags.all_valid] for i in indexes):
        return "alpha" if alpha else "none"
    return "masks"


def grid_offset(
    src: rasterio.io.DatasetReaderBase, scene: rasterio.io.DatasetReaderBase
) -> tuple[int, int] | None:
    """Return the ``(row, col)`` of *scene*'s first pixel in *src*, if both share one pixel grid.

    The grids are shared when the CRS and the pixel size and orientation are equal and
    the origins lie a whole number of pixels apart (to 1e-6 pixel); else ``None``.
    """
    t, u = src.transform, scene.transform
    if src.crs != scene.crs or (t.a, t.b, t.d, t.e) != (u.a, u.b, u.d, u.e):
        return None
    col, row = ~t @ (u.c, u.f)
    r, c = round(row), round(col)
    return (r, c) if abs(row - r) < 1e-6 and abs(col - c) < 1e-6 else None


def open_dsm(
    path: str | Path, scene: rasterio.DatasetReader, scene_path: Path
) -> tuple[rasterio.io.DatasetReaderBase, tuple[int, int]]:
    """Open a DSM/nDSM on the grid of *scene*, warping it on the fly if needed.

    A DSM on the scene's pixel grid but of another extent (one DSM, or a VRT of DSM
    tiles, for all the tiles of a mosaic) is read as it is, at an offset: no pixel is
    resampled. Parts outside it are nodata.

    Args:
        path: The DSM raster (band 1 is used).
        scene: The open scene.
        scene_path: Scene path, for messages.

    Returns:
        A dataset on the scene's pixel grid (the DSM itself or a WarpedVRT) and the
        ``(row, col)`` of the scene's first pixel in it.
    """
    path = Path(path)
    dsm = open_raster(path, georeferenced=True)
    left, bottom, right, top = transform_bounds(dsm.crs, scene.crs, *dsm.bounds)
    s = scene.bounds
    if min(right, s.right) <= max(left, s.left) or min(top, s.top) <= max(bottom, s.bottom):
        dsm.close()
        raise AlignmentError(path, f"does not overlap the scene {scene_path.name}")
    offset = grid_offset(dsm, scene)
    if offset is not None:
        return dsm, offset
    warnings.warn(
        f"{path}: not on the grid of {scene_path.name}; warping it to the scene grid (bilinear)",
        stacklevel=2,
    )
    nodata = dsm.nodata if dsm.nodata is not None else -3.0e38
    warped = warp_to_grid(
        dsm, scene, Resampling.bilinear, src_nodata=dsm.nodata, nodata=nodata, dtype="float32"
    )
    return warped, (0, 0)


def _inside(win: Window, height: int, width: int) -> bool:
    """Whether *win* lies within a raster of *height* x *width* pixels."""
    return (
        win.row_off >= 0
        and win.col_off >= 0
        and win.row_off + win.height <= height
        and win.col_off + win.width <= width
    )


def ground_size(src: rasterio.io.DatasetReaderBase) -> tuple[float, float]:
    """Return the scene's ground pixel size in metres at its centre, as ``(x, y)``."""
    return ground_pixel_size(src.crs, src.transform, src.width, src.height)


def gsd_ratio(size: tuple[float, float], spec: ModelSpec) -> tuple[float, float]:
    """Return a ground pixel *size* ``(x, y)`` over the trained GSD, as ``(rows, cols)``."""
    x, y = size
    return y / spec.gsd, x / spec.gsd


def _pad(array: np.ndarray, pads: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    if not any(p for pair in pads for p in pair):
        return array
    widths = [(0, 0)] * (array.ndim - 2) + list(pads)
    return np.pad(array, widths, mode="reflect")


class SceneReader:
    """Reads normalised model input windows of one scene (plus DSM) with reflect padding.

    Use from one thread at a time.
    """

    #: Held during every GDAL read. GDAL's shared block cache may write another
    #: thread's dirty blocks when it is full, which loses writes; share one lock
    #: with the writer (see :class:`~geoct.predict.writer.PredictionWriter`).
    lock: AbstractContextManager = nullcontext()

    def __init__(
        self,
        scene: str | Path,
        spec: ModelSpec,
        dsm: str | Path | None = None,
        values: ValueOptions | None = None,
        defer_value_check: bool = False,
    ) -> None:
        """Open and check a scene, its bands and values, and its DSM companion.

        Args:
            scene: Scene raster.
            spec: The model's input contract.
            dsm: Height raster, required when ``spec.needs_height``.
            values: How the scene's values are checked and scaled
                (see :mod:`geoct.predict.values`).
            defer_value_check: Leave the value check to the caller, as
                :attr:`value_check`, which the caller must run.
        """
        self.path = Path(scene)
        self.spec = spec
        self.src = open_raster(self.path, georeferenced=True)
        self.dsm = None
        #: ``(row, col)`` of the scene's first pixel in :attr:`dsm`.
        self.dsm_offset = (0, 0)
        try:
            #: Ground pixel size ``(x, y)`` in metres at the scene centre (:func:`ground_size`).
            self.ground_size = ground_size(self.src)
            self.indexes = band_indexes(self.src, spec, self.path)
            if spec.needs_height and dsm is None:
                raise ConfigError(
                    f"{self.path}: the checkpoint needs a height band ({spec.height_source or 'dsm'}):"
                    " give it with --dsm"
                )
            if dsm is not None and not spec.needs_height:
                warnings.warn(
                    f"{dsm}: the checkpoint uses no height band; ignoring --dsm", stacklevel=2
                )
            elif dsm is not None:
                self.dsm, self.dsm_offset = open_dsm(dsm, self.src, self.path)
            values = values or ValueOptions()
            defer = defer_value_check and needs_check(values)
            mean, std = normalisation(self.src, self.indexes, spec, self.path, values, not defer)
            dtype = str(self.src.dtypes[self.indexes[0] - 1])
            #: The deferred value check (``defer_value_check``), else ``None``.
            self.value_check = (
                ValueCheck(self.path, self.indexes, spec, values, dtype) if defer else None
            )
        except BaseException:
            self.close()
            raise
        self.statistics = (tuple(mean.tolist()), tuple(std.tolist()))
        self.mean = mean.astype(np.float32)[:, None, None]
        self.inv_std = (1 / std).astype(np.float32)[:, None, None]
        self.mask_mode = mask_mode(self.src, self.indexes)
        self.alpha = alpha_bands(self.src, spec)

    @property
    def height(self) -> int:
        """Scene height in pixels."""
        return self.src.height

    @property
    def width(self) -> int:
        """Scene width in pixels."""
        return self.src.width

    def read(
        self, row: int, col: int, height: int, width: int
    ) -> tuple[np.ndarray | None, np.ndarray]:
        """Read one window, which may extend past the scene edges.

        Args:
            row: Top row offset (may be negative).
            col: Left column offset (may be negative).
            height: Window height.
            width: Window width.

        Returns:
            ``(image, valid)``: the normalised float32 ``(C, height, width)`` input,
            or ``None`` when the window holds no valid pixel, and the boolean
            ``(height, width)`` validity mask.
        """
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + height, self.height), min(col + width, self.width)
        win = Window(c0, r0, c1 - c0, r1 - r0)
        pads = ((r0 - row, row + height - r1), (c0 - col, col + width - c1))
        with self.lock:
            data, valid, height_band = self._read_raw(win)
        if not valid.any():
            return None, np.zeros((height, width), dtype=bool)
        image = np.empty((self.spec.in_channels, *data.shape[1:]), dtype=np.float32)
        image[: len(data)] = data
        if height_band is not None:
            image[-1] = height_band
        image -= self.mean
        image *= self.inv_std
        if not valid.all():
            image[:, ~valid] = 0.0
        if not np.isfinite(image).all():
            np.nan_to_num(image, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        return _pad(image, pads), _pad(valid, pads)

    def _read_raw(
        self,
        win: Window,
        src: rasterio.io.DatasetReaderBase | None = None,
        dsm: rasterio.io.DatasetReaderBase | None = None,
        out: tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]
        | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Return the optical bands, the validity mask and the height band of a window.

        Args:
            win: A window inside the scene.
            src: Scene handle to read with (default this reader's; each reader
                thread passes its own, GDAL handles must not be shared).
            dsm: DSM handle to read with (default this reader's).
            out: Arrays to read into instead of new ones, each of the window's
                shape: ``(data, valid, height, scratch)``, the ``(bands, rows,
                cols)`` scene dtype bands, the boolean mask, the float32 height
                band (with a DSM) and a uint8 work area (with masks or a DSM);
                with no mask and no DSM, ``valid`` may be ``None`` and is
                returned as such (every pixel valid).

        Raises:
            InputError: If GDAL cannot read the scene or the DSM there (a broken
                tile, a truncated file, ...), naming the file and the window.
        """
        src = self.src if src is None else src
        dsm = self.dsm if dsm is None else dsm
        data, valid, height, scratch = out or (None, None, None, None)
        with read_errors(self.path, win):
            data = src.read(self.indexes, window=win, out=data)
            if out is None:
                valid = np.ones(data.shape[1:], dtype=bool)
            elif valid is not None:
                valid.fill(True)
            if self.mask_mode == "masks":
                for i in self.indexes:
                    np.logical_and(valid, src.read_masks(i, window=win, out=scratch), out=valid)
            elif self.mask_mode == "nodata":
                flags = None if scratch is None else scratch.view(bool)
                for band in data:
                    np.logical_and(valid, np.not_equal(band, src.nodata, out=flags), out=valid)
            elif self.mask_mode == "alpha":
                for i in self.alpha:
                    if src.dtypes[i - 1] == "uint8":  # nonzero is > 0
                        alpha = src.read(i, window=win, out=scratch)
                    else:
                        alpha = src.read(i, window=win) > 0
                    np.logical_and(valid, alpha, out=valid)
        if dsm is None:
            return data, valid, None
        row, col = self.dsm_offset
        at = Window(win.col_off + col, win.row_off + row, win.width, win.height)
        with read_errors(Path(getattr(dsm, "src_dataset", dsm).name), at):
            boundless = not _inside(at, dsm.height, dsm.width)
            mask = dsm.read_masks(1, window=at, out=scratch, boundless=boundless)
            np.logical_and(valid, mask, out=valid)
            height = dsm.read(1, window=at, out_dtype="float32", out=height, boundless=boundless)
        return data, valid, height

    def close(self) -> None:
        """Close the scene and DSM."""
        if self.dsm is not None:
            src = getattr(self.dsm, "src_dataset", None)
            self.dsm.close()
            if src is not None:
                src.close()
        self.src.close()

    def __enter__(self) -> "SceneReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
