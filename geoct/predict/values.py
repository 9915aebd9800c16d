"""Checking a scene's pixel values against the value range the model was trained on.

A model trained on 8-bit orthophotos gives confident, wrong classes for uint16
imagery (values 4x larger) or reflectance in 0..1, without any error. A cheap
sample of a scene's valid pixels (a grid of small windows, so a 20k px scene costs
a few reads) is compared per band with the training data, before the scene is
predicted or, in ``geoct predict``, while its first windows are
(:class:`ValueCheck`), and always before anything is published:

* when the checkpoint records each band's training ``(min, max)``, a band is out
  of range when its sampled 99.5th percentile lies more than half the training
  span above the training maximum, or below the training minimum plus
  :data:`LOW_SHARE` of the span (values far too small, e.g. 0..1 for 0..255), or
  when its 0.5th percentile lies more than half the span below the minimum;
* for older checkpoints without a range, a band is out of range when its sampled
  standard deviation is not within :data:`STD_RATIO` of the training standard
  deviation, or its median lies more than :data:`MEDIAN_STDS` training standard
  deviations from the training mean.

Out-of-range scenes are refused with the bands, the ranges and the fixes:
``--scale`` (multiply the bands by a factor before normalisation, e.g. 0.25 for
uint16 holding 10-bit values), ``--rescale`` (standardise every band with the
scene's own sampled mean and standard deviation instead of the training
statistics) or ``--force`` (predict anyway, with a warning).
"""

import threading
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from ..errors import ConfigError, InputError
from ..metadata import ModelSpec
from ..raster_io import read_errors

#: Sample windows per scene axis, and their side in pixels.
SAMPLE_GRID, SAMPLE_SIZE = 6, 64

#: Percentiles that stand for a band's low and high values.
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5

#: A band's high values must exceed the training minimum by this share of the training span.
LOW_SHARE = 0.05

#: Allowed excess past either end of the training range, as a share of its span.
HIGH_SHARE = 0.5

#: Without a recorded range: allowed ratio of sampled to training standard deviation.
STD_RATIO = 10.0

#: Without a recorded range: allowed distance of the sampled median from the training mean.
MEDIAN_STDS = 3.0


@dataclass(frozen=True)
class ValueOptions:
    """How a scene's values are reconciled with the training data.

    Attributes:
        scale: Factor (one for all bands, or one per model band) applied to the
            optical bands before normalisation, or ``None``.
        rescale: Standardise each optical band with the scene's own sampled
            statistics instead of the training statistics.
        force: Predict even when the values are out of range (warn instead).
        statistics: Per-band ``(mean, std)`` already decided for a larger scene this
            one is part of (a mosaic tile); used as they are, without sampling.
    """

    scale: tuple[float, ...] | None = None
    rescale: bool = False
    force: bool = False
    statistics: tuple[tuple[float, ...], tuple[float, ...]] | None = None


@dataclass(frozen=True)
class BandSample:
    """Summary of one band's sampled valid pixels.

    Attributes:
        low: :data:`LOW_PERCENTILE` percentile.
        high: :data:`HIGH_PERCENTILE` percentile.
        median: Median.
        mean: Mean.
        std: Standard deviation.
    """

    low: float
    high: float
    median: float
    mean: float
    std: float


def sample_windows(height: int, width: int) -> list[Window]:
    """Return the :data:`SAMPLE_GRID` x :data:`SAMPLE_GRID` grid of sample windows of a scene."""
    size_r, size_c = min(SAMPLE_SIZE, height), min(SAMPLE_SIZE, width)
    rows = np.linspace(0, height - size_r, SAMPLE_GRID).round().astype(int)
    cols = np.linspace(0, width - size_c, SAMPLE_GRID).round().astype(int)
    return [
        Window(int(c), int(r), size_c, size_r) for r in np.unique(rows) for c in np.unique(cols)
    ]


def sample_bands(src: rasterio.io.DatasetReaderBase, indexes: list[int]) -> list[BandSample] | None:
    """Sample the valid pixels of some bands.

    Args:
        src: The open scene.
        indexes: 1-based band indexes.

    Returns:
        One summary per band, or ``None`` when no sampled pixel is valid.
    """
    chunks = []
    for window in sample_windows(src.height, src.width):
        with read_errors(Path(src.name), window):
            data = src.read(indexes, window=window, masked=True)
        valid = ~np.ma.getmaskarray(data).any(axis=0)
        chunks.append(data.data[:, valid])
    values = np.concatenate(chunks, axis=1)
    if values.dtype.kind in "fc":
        values = values[:, np.isfinite(values).all(axis=0)]
    if values.shape[1] == 0:
        return None
    return [_summary(values[b : b + 1].astype(np.float64)) for b in range(len(values))]


def _summary(values: np.ndarray) -> BandSample:
    """Summarise one band's ``(1, n)`` float64 sample, one band at a time to stay small."""
    low, median, high = np.percentile(values, [LOW_PERCENTILE, 50, HIGH_PERCENTILE], axis=1)
    mean, std = values.mean(axis=1), values.std(axis=1)
    return BandSample(
        float(low[0]), float(high[0]), float(median[0]), float(mean[0]), float(std[0])
    )


def out_of_range(sample: BandSample, band: int, spec: ModelSpec) -> bool:
    """Whether one sampled band lies outside what the model saw in training."""
    if spec.value_range is not None:
        lo, hi = spec.value_range[band]
        span = max(hi - lo, 1e-12)
        return (
            sample.high > hi + HIGH_SHARE * span
            or sample.high < lo + LOW_SHARE * span
            or sample.low < lo - HIGH_SHARE * span
        )
    mean, std = spec.mean[band], spec.std[band]
    ratio = max(sample.std, 1e-12) / std
    return not 1 / STD_RATIO <= ratio <= STD_RATIO or abs(sample.median - mean) > MEDIAN_STDS * std


def _training_range(spec: ModelSpec, band: int) -> str:
    if spec.value_range is not None:
        lo, hi = spec.value_range[band]
        return f"{lo:g}..{hi:g}"
    return f"mean {spec.mean[band]:g} ± {spec.std[band]:g}"


def check_values(
    samples: list[BandSample], spec: ModelSpec, dtype: str, path: Path, force: bool
) -> None:
    """Refuse (or with *force* warn about) bands whose values the model never saw.

    Args:
        samples: Sampled optical bands, in model order (already scaled, if asked).
        spec: The model's input contract.
        dtype: The scene's data type.
        path: Scene path, for the message.
        force: Warn instead of raising.

    Raises:
        InputError: If a band is out of range and *force* is false.
    """
    bad = [i for i, s in enumerate(samples) if out_of_range(s, i, spec)]
    if not bad:
        return
    names = spec.optical_bands
    ranges = ", ".join(
        f"{names[i]} {samples[i].low:g}..{samples[i].high:g} (trained {_training_range(spec, i)})"
        for i in bad
    )
    trained = f" {spec.dtype}" if spec.dtype else ""
    problem = (
        f"{dtype} values out of the range the model was trained on{trained}: {ranges}; "
        "give --scale FACTOR (e.g. 0.25 for 10-bit values in uint16, 255 for 0..1 floats), "
        "--rescale (standardise with the scene's own statistics) or --force"
    )
    if not force:
        raise InputError(path, problem)
    warnings.warn(f"{path}: {problem}; predicting anyway (--force)", stacklevel=3)


def _scales(options: ValueOptions, count: int) -> np.ndarray:
    scale = options.scale or (1.0,)
    if len(scale) not in (1, count):
        raise ConfigError(f"--scale takes one factor or {count} (one per model band)")
    if any(not np.isfinite(s) or s <= 0 for s in scale):
        raise ConfigError("--scale factors must be positive numbers")
    return np.broadcast_to(np.asarray(scale, dtype=np.float64), (count,))


def normalisation(
    src: rasterio.io.DatasetReaderBase,
    indexes: list[int],
    spec: ModelSpec,
    path: Path,
    options: ValueOptions,
    check: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Check a scene's values and return the per-band mean and std to normalise it with.

    The model sees ``(x - mean) / std`` per band. A ``--scale`` factor ``s`` is
    folded in as ``(s x - m) / d = (x - m / s) / (d / s)``; ``--rescale`` uses the
    sampled scene statistics. Height bands keep the training statistics.

    Args:
        src: The open scene.
        indexes: Scene bands feeding the optical model bands.
        spec: The model's input contract.
        path: Scene path, for messages.
        options: Scaling and checking options.
        check: Sample and check the values here; ``False`` leaves the check to a
            :class:`ValueCheck` (``--rescale`` always samples here).

    Returns:
        ``(mean, std)`` float64 arrays over all model bands.
    """
    if options.statistics is not None:
        return tuple(np.asarray(v, dtype=np.float64) for v in options.statistics)
    mean = np.asarray(spec.mean, dtype=np.float64)
    std = np.asarray(spec.std, dtype=np.float64)
    n = len(indexes)
    scale = _scales(options, n)
    if options.rescale:
        samples = sample_bands(src, indexes)
        if samples is None:
            raise InputError(path, "no valid pixel found to --rescale from")
        mean[:n] = [s.mean for s in samples]
        std[:n] = [s.std if s.std > 1e-6 else 1.0 for s in samples]
        return mean, std
    if check:
        ValueCheck(path, indexes, spec, options, str(src.dtypes[indexes[0] - 1])).run(src)
    mean[:n] /= scale
    std[:n] /= scale
    return mean, std


def needs_check(options: ValueOptions) -> bool:
    """Whether a scene read with *options* has its values checked (not rescaled, not a tile)."""
    return options.statistics is None and not options.rescale


class ValueCheck:
    """The value check of one scene, run here or sampled in a background thread.

    ``geoct predict`` samples while its first windows are read and predicted,
    so the check costs no wall time: :meth:`start` reads the sample in a thread,
    :meth:`poll` checks it once it is in, and :meth:`finish` waits for it, so an
    out-of-range scene is refused within a few batches and before any output is
    published. The check itself (the refusal or the ``--force`` warning) always
    runs in the calling thread.
    """

    def __init__(
        self, path: Path, indexes: list[int], spec: ModelSpec, options: ValueOptions, dtype: str
    ) -> None:
        """Prepare the check of scene *path* (bands *indexes*, data type *dtype*)."""
        self.path = path
        self.indexes = indexes
        self.spec = spec
        self.scale = _scales(options, len(indexes))
        self.force = options.force
        self.dtype = dtype
        self._thread: threading.Thread | None = None
        self._result: tuple[list[BandSample] | None, BaseException | None] | None = None
        self.done = False

    def run(self, src: rasterio.io.DatasetReaderBase) -> None:
        """Sample the open scene *src* and check it, here."""
        self._check(sample_bands(src, self.indexes))

    def start(self, lock: Callable[[], AbstractContextManager] | None = None) -> None:
        """Open a handle here and sample it in a thread, each read under *lock* if given."""
        try:
            with rasterio.Env(GTIFF_SRS_SOURCE="GEOKEYS"):
                src = rasterio.open(self.path)
        except RasterioIOError as e:
            raise InputError(self.path, f"cannot open: {e}") from None
        self._thread = threading.Thread(
            target=self._sample, args=(src, lock), name="value-check", daemon=True
        )
        self._thread.start()

    def _sample(
        self,
        src: rasterio.io.DatasetReaderBase,
        lock: Callable[[], AbstractContextManager] | None,
    ) -> None:
        try:
            with src, lock() if lock is not None else nullcontext():
                self._result = sample_bands(src, self.indexes), None
        except BaseException as e:
            self._result = None, e

    def poll(self) -> None:
        """Check the sample if it is in (raising or warning as :func:`check_values`)."""
        if not self.done and self._thread is not None and not self._thread.is_alive():
            self.finish()

    def finish(self) -> None:
        """Wait for the sample, if started, and check it."""
        if self.done:
            return
        if self._thread is None:
            raise RuntimeError("the value check was not started")
        self._thread.join()
        self.done = True
        samples, error = self._result or (None, RuntimeError("the value sample was lost"))
        if error is not None:
            raise error
        self._check(samples)

    def close(self) -> None:
        """Wait for a started sample without checking it (when prediction stopped early)."""
        if self._thread is not None:
            self._thread.join()

    def _check(self, samples: list[BandSample] | None) -> None:
        self.done = True
        if samples is None:
            return
        scaled = [
            BandSample(*(v * k for v in (s.low, s.high, s.median, s.mean, s.std)))
            for s, k in zip(samples, self.scale, strict=True)
        ]
        check_values(scaled, self.spec, self.dtype, self.path, self.force)
