"""TorchGeo raster datasets of the prepared layout: orthophoto, heights and class labels.

Combine them with TorchGeo's ``&``::

    ds = PotsdamOrtho(root, bands=("R", "G", "B")) & PotsdamDSM(root) & PotsdamLabels(root)
    sample = ds[xmin:xmax, ymin:ymax]  # {"image": (4, H, W), "mask": (H, W), ...}

A query on the files' own grid (same CRS and resolution, whole-pixel offsets, files
not overlapping) is answered by windowed reads from file handles kept open per
process, pasted side by side where a window spans adjacent tiles; everything else
(another CRS or resolution, off-grid windows, overlapping files) goes through
TorchGeo's merge.
"""

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyproj
import rasterio
import torch
from rasterio.io import DatasetReader
from rasterio.windows import Window
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import Path

from ..compat import GeoSlice, Sample, query_slices, read_fallback, sample_metadata

#: Pixel offsets closer than this to an integer count as on the grid.
_GRID_TOLERANCE = 1e-3

_NUMPY_DTYPES = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.long: np.int64,
    torch.int32: np.int32,
    torch.uint8: np.uint8,
}


class AlignedRasterDataset(RasterDataset):
    """A :class:`~torchgeo.datasets.RasterDataset` with a fast path for on-grid reads.

    Subclasses set the usual TorchGeo attributes (:attr:`filename_glob`,
    :attr:`is_image`, :attr:`all_bands`). Pixels outside every file get the file's
    nodata value (0 if it has none), exactly as TorchGeo's merge does.
    """

    #: Glob matching any file: the datamodule passes explicit file lists.
    filename_glob = "*.tif"

    def __init__(
        self,
        paths: Path | Iterable[Path] = "data",
        crs: pyproj.CRS | None = None,
        res: float | tuple[float, float] | None = None,
        bands: Sequence[str] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        cache: bool = True,
    ) -> None:
        """Initialise a new dataset.

        Args:
            paths: Root folders to search or files to load.
            crs: CRS to warp to (defaults to the CRS of the first file).
            res: Resolution in CRS units (defaults to that of the first file).
            bands: Bands to return (defaults to all bands).
            transforms: Function that takes a sample and returns a transformed version.
            cache: Keep file handles open between reads.
        """
        super().__init__(paths, crs=crs, res=res, bands=bands, transforms=transforms, cache=cache)
        self._handles: dict[str, DatasetReader] = {}
        self._handles_pid = os.getpid()
        self._layout_key: tuple[Any, ...] | None = None
        self._bounds: tuple[slice, slice, slice]
        self._boxes = np.empty((0, 4))
        self._times = np.empty((0, 2))
        self._filepaths: list[str] = []
        self._on_grid: list[bool] = []

    def __getstate__(self) -> dict[str, Any]:
        """Drop open file handles when the dataset is sent to a worker process."""
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_layout_key"] = None
        return state

    def close(self) -> None:
        """Close the file handles kept open between reads (reads reopen them)."""
        for src in self._handles.values():
            src.close()
        self._handles = {}

    @property
    def crs(self) -> pyproj.CRS:
        """CRS of the dataset (see :attr:`RasterDataset.crs`)."""
        return RasterDataset.crs.fget(self)

    @crs.setter
    def crs(self, new_crs: pyproj.CRS) -> None:
        RasterDataset.crs.fset(self, new_crs)
        self._layout_key = None

    @property
    def bounds(self) -> tuple[slice, slice, slice]:
        """Bounds of the index (see :attr:`RasterDataset.bounds`), cached."""
        self._update_layout()
        return self._bounds

    def __getitem__(self, index: GeoSlice) -> Sample:
        """Return the sample at *index* (see :meth:`RasterDataset.__getitem__`)."""
        x, y, t = query_slices(self, index)
        filepaths = self._files_on_grid(x, y, t)
        array = None if filepaths is None else self._read_mosaic(filepaths, x, y)
        if array is None:
            return read_fallback(self, index)
        data = self._fill_nodata(
            torch.from_numpy(array.astype(_NUMPY_DTYPES[self.dtype], copy=False))
        )
        sample = sample_metadata(x, y, t)
        if self.is_image:
            sample["image"] = data
        else:
            sample["mask"] = data.squeeze(-3)
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample

    def _merge_or_stack(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """TorchGeo's reading hook, followed by :meth:`_fill_nodata`."""
        return self._fill_nodata(super()._merge_or_stack(*args, **kwargs))

    def _fill_nodata(self, data: torch.Tensor) -> torch.Tensor:
        """Hook to replace nodata pixels after reading; identity by default."""
        return data

    def _handle(self, filepath: str) -> DatasetReader:
        if self._handles_pid != os.getpid():
            self._handles, self._handles_pid = {}, os.getpid()
        src = self._handles.get(filepath)
        if src is None:
            src = rasterio.open(filepath)
            if self.cache:
                self._handles[filepath] = src
        return src

    def _update_layout(self) -> None:
        """Recompute bounds, file boxes and grid eligibility after the index changed."""
        key = (id(self.index), len(self.index), self.res)
        if key == self._layout_key:
            return
        self._bounds = RasterDataset.bounds.fget(self)
        self._boxes = np.array(self.index.geometry.bounds, dtype=np.float64).reshape(-1, 4)
        intervals = self.index.index
        self._times = np.stack(
            [
                intervals.left.to_numpy().astype("datetime64[ns]").astype(np.int64),
                intervals.right.to_numpy().astype("datetime64[ns]").astype(np.int64),
            ],
            axis=1,
        )
        self._filepaths = [str(fp) for fp in self.index.filepath]
        self._on_grid = [self._file_on_grid(fp) for fp in self._filepaths]
        self._layout_key = key

    def _file_on_grid(self, filepath: str) -> bool:
        with rasterio.open(filepath) as src:
            t = src.transform
            if src.crs is None or t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
                return False
            same_crs = pyproj.CRS.from_user_input(src.crs.to_wkt()) == self.crs
            same_res = np.allclose((t.a, -t.e), self.res, rtol=1e-9, atol=0)
            return bool(same_crs and same_res)

    def _files_on_grid(self, x: slice, y: slice, t: slice) -> list[str] | None:
        """The files a query touches if all are on the dataset's grid, else None."""
        if not np.allclose((x.step, y.step), self.res, rtol=1e-9, atol=0):
            return None
        self._update_layout()
        b = self._boxes
        hits = np.flatnonzero(
            (b[:, 0] < x.stop) & (b[:, 2] > x.start) & (b[:, 1] < y.stop) & (b[:, 3] > y.start)
        )
        if len(hits) == 0 or not all(self._on_grid[i] for i in hits):
            return None
        tmin, tmax = (np.datetime64(v, "ns").astype(np.int64) for v in (t.start, t.stop))
        times = self._times[hits]
        if (tmin > times[:, 1]).any() or (tmax < times[:, 0]).any():
            return None
        return [self._filepaths[i] for i in hits]

    def _read_mosaic(self, filepaths: list[str], x: slice, y: slice) -> np.ndarray | None:
        """Read the query window from non-overlapping files on the dataset's grid.

        Returns:
            The pixels, or None when a file's pixels are not on whole-pixel offsets of
            the window or two files overlap inside it (TorchGeo's merge handles those).
        """
        size = np.array([(y.stop - y.start) / y.step, (x.stop - x.start) / x.step])
        if np.abs(size - np.round(size)).max() > _GRID_TOLERANCE:
            return None
        height, width = (int(v) for v in np.round(size))
        parts = []
        for filepath in filepaths:
            src = self._handle(filepath)
            t = src.transform
            offset = np.array([(t.f - y.stop) / -t.e, (x.start - t.c) / t.a])
            if np.abs(offset - np.round(offset)).max() > _GRID_TOLERANCE:
                return None
            row, col = (int(v) for v in np.round(offset))
            r0, r1 = max(row, 0), min(row + height, src.height)
            c0, c1 = max(col, 0), min(col + width, src.width)
            if r1 > r0 and c1 > c0:
                parts.append((src, r0, r1, c0, c1, row, col))
        for i, a in enumerate(parts):
            for b in parts[i + 1 :]:
                ar = (a[1] - a[5], a[2] - a[5], a[3] - a[6], a[4] - a[6])
                br = (b[1] - b[5], b[2] - b[5], b[3] - b[6], b[4] - b[6])
                if ar[0] < br[1] and br[0] < ar[1] and ar[2] < br[3] and br[2] < ar[3]:
                    return None
        first = self._handle(filepaths[0])
        indexes = self.band_indexes or list(range(1, first.count + 1))
        if len(parts) == 1:
            src, r0, r1, c0, c1, row, col = parts[0]
            if (r0, r1, c0, c1) == (row, row + height, col, col + width):
                return src.read(indexes, window=Window(c0, r0, c1 - c0, r1 - r0))
        fill = first.nodata if first.nodata is not None else 0
        array = np.full((len(indexes), height, width), fill, dtype=first.dtypes[0])
        for src, r0, r1, c0, c1, row, col in parts:
            window = Window(c0, r0, c1 - c0, r1 - r0)
            array[:, r0 - row : r1 - row, c0 - col : c1 - col] = src.read(indexes, window=window)
        return array


class ImageRaster(AlignedRasterDataset):
    """Multi-band image of the prepared layout (any band names, one file per tile)."""

    is_image = True
    #: Names of the bands in file order; overridable per instance.
    all_bands: tuple[str, ...] = ()

    def __init__(
        self,
        paths: Path | Iterable[Path] = "data",
        bands: Sequence[str] | None = None,
        all_bands: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialise a new image dataset.

        Args:
            paths: Root folders to search or files to load.
            bands: Bands to return, in this order (defaults to all bands).
            all_bands: Names of the bands in file order (defaults to :attr:`all_bands`).
            **kwargs: Passed to :class:`AlignedRasterDataset`.
        """
        if all_bands is not None:
            self.all_bands = tuple(all_bands)
        if bands is not None and not set(bands) <= set(self.all_bands):
            raise ValueError(f"bands {list(bands)} not among {list(self.all_bands)}")
        super().__init__(paths, bands=bands, **kwargs)


class HeightRaster(AlignedRasterDataset):
    """Single-band height raster (DSM or nDSM) on the image grid."""

    is_image = True

    def __init__(
        self,
        paths: Path | Iterable[Path] = "data",
        nodata_fill: float | None = None,
        **kwargs: Any,
    ) -> None:
        """Initialise a new height dataset.

        Args:
            paths: Root folders to search or files to load.
            nodata_fill: Value that replaces nodata pixels (and pixels outside every
                file), e.g. the mean height so they normalise to 0; None keeps them.
            **kwargs: Passed to :class:`AlignedRasterDataset`.
        """
        self.nodata_fill = nodata_fill
        super().__init__(paths, **kwargs)
        with rasterio.open(self.index.filepath.iloc[0]) as src:
            self._nodata = src.nodata

    def _fill_nodata(self, data: torch.Tensor) -> torch.Tensor:
        if self.nodata_fill is None or self._nodata is None:
            return data
        array = data.numpy()
        nodata = array == self._nodata
        if nodata.any():
            array[nodata] = self.nodata_fill
        return data


class LabelRaster(AlignedRasterDataset):
    """Class-index label raster (uint8 ids, 255 = ignore) returned as an int64 ``mask``."""

    is_image = False


class PotsdamOrtho(ImageRaster):
    """ISPRS Potsdam orthophoto, ``top_potsdam_<id>_RGBIR.tif`` (R, G, B, IR)."""

    filename_glob = "top_potsdam_*_RGBIR.tif"
    all_bands = ("R", "G", "B", "IR")


class PotsdamDSM(HeightRaster):
    """ISPRS Potsdam digital surface model, ``dsm_potsdam_<0id>.tif`` (metres)."""

    filename_glob = "dsm_potsdam_*.tif"
    filename_regex = r"^dsm_potsdam_\d+_\d+\.tif$"


class PotsdamNDSM(HeightRaster):
    """ISPRS Potsdam normalised DSM (height above ground), ``dsm_potsdam_<0id>_normalized*``."""

    filename_glob = "dsm_potsdam_*_normali*.tif"


class PotsdamLabels(LabelRaster):
    """ISPRS Potsdam class-index labels written by the recipe, ``top_potsdam_<id>_label.tif``."""

    filename_glob = "top_potsdam_*_label.tif"


def concat_images(samples: Sequence[Sample]) -> Sample:
    """Join the samples of an intersection: images stack along channels, nothing is copied twice.

    Unlike TorchGeo's default :func:`~torchgeo.datasets.utils.concat_samples`, entries
    that only one sample has are passed through as they are, and ``bounds`` and
    ``transform`` (equal for every part of one query) are kept once.

    Args:
        samples: Samples of the same window from the intersected datasets.

    Returns:
        One sample.
    """
    out: Sample = {}
    for sample in samples:
        for key, value in sample.items():
            if key not in out:
                out[key] = value
            elif key == "image":
                joined = np.concatenate([out[key].numpy(), value.numpy()], axis=-3)
                out[key] = torch.from_numpy(joined)
    return out
