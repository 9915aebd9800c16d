"""The one place for code that depends on TorchGeo's version-specific internals.

geoct supports TorchGeo 0.10. Everything below changed between 0.9 and 0.10
(``BoundingBox`` queries became ``GeoSlice`` slices, samplers were renamed, the raster
reading hook became ``_merge_or_stack``); code elsewhere imports these names from here.
"""

import torch
from torch import Tensor
from torchgeo.datasets import GeoDataset, RasterDataset
from torchgeo.datasets.utils import GeoSlice, Sample, concat_samples, stack_samples
from torchgeo.samplers import GriddedPatchSampler, RandomPatchSampler

__all__ = (
    "GeoSlice",
    "GriddedPatchSampler",
    "RandomPatchSampler",
    "Sample",
    "concat_samples",
    "query_slices",
    "read_fallback",
    "sample_metadata",
    "stack_samples",
)


def query_slices(dataset: GeoDataset, index: GeoSlice) -> tuple[slice, slice, slice]:
    """Resolve a (possibly partial) query into full x, y and t slices.

    Args:
        dataset: Dataset being queried.
        index: ``[xmin:xmax:xres, ymin:ymax:yres, tmin:tmax:tres]`` query.

    Returns:
        The x, y and t slices, each with start, stop and step.
    """
    return dataset._disambiguate_slice(index)


def sample_metadata(x: slice, y: slice, t: slice) -> dict[str, Tensor]:
    """The ``bounds`` and ``transform`` entries TorchGeo puts in every raster sample.

    Args:
        x: Resolved x slice (see :func:`query_slices`).
        y: Resolved y slice.
        t: Resolved t slice.

    Returns:
        ``bounds`` (9 values: x, y and t start, stop, step) and ``transform`` (the
        window's affine transform, 9 values), in float64: TorchGeo's float32 loses
        whole pixels of projected coordinates.
    """
    bounds = [
        x.start, x.stop, x.step, y.start, y.stop, y.step,
        t.start.timestamp(), t.stop.timestamp(), t.step,
    ]  # fmt: skip
    transform = (x.step, 0.0, x.start, 0.0, -y.step, y.stop, 0.0, 0.0, 1.0)
    return {
        "bounds": torch.tensor(bounds, dtype=torch.float64),
        "transform": torch.tensor(transform, dtype=torch.float64),
    }


def read_fallback(dataset: RasterDataset, index: GeoSlice) -> Sample:
    """Read a sample through TorchGeo's own path (index query, merge, warp).

    The ``bounds`` and ``transform`` entries are replaced by :func:`sample_metadata`'s.
    """
    sample = RasterDataset.__getitem__(dataset, index)
    sample.update(sample_metadata(*query_slices(dataset, index)))
    return sample
