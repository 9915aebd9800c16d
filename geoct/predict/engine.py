"""Streaming sliding-window prediction of a scene with any :class:`torch.nn.Module`.

The scene is read once, in strips of the window grid, by several reader threads
(:class:`~geoct.predict.strips.StripReader`); a batching thread cuts raw windows
from the strips into (pinned) host batches (:mod:`~geoct.predict.transfer`) while
the device works on the previous batch; the calling thread copies each batch to the
model's device, normalises it there, runs the model and blends the logits into a
row-band accumulator on the device (:class:`~geoct.predict.accumulator.StreamingBlender`),
which finalises rows there into uint8 classes, confidence and probabilities
(:mod:`~geoct.predict.device_blend`); only those uint8 rows come back, and a writer
thread writes them as tiles into the staging files
(:class:`~geoct.predict.writer.PredictionWriter`). Queues between the threads are
bounded, so memory does not depend on the scene size.
"""

import hashlib
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .. import __version__
from ..errors import ConfigError, InputError
from ..export.styles import raster_qml
from ..metadata import ModelSpec
from ..raster_io import atomic_output, check_output
from .accumulator import StreamingBlender
from .device_blend import SOFT_KINDS, InputNormaliser, finalise
from .reader import GSD_TOLERANCE, SceneReader, gsd_ratio
from .strips import StripReader
from .transfer import BatchPool, HostBatch, StageTimes, stage_times, to_host
from .values import ValueOptions
from .windows import WindowGrid
from .writer import Grid, OutputPaths, PredictionWriter

#: GDAL block cache while predicting, in MB. The strip reader decodes each block once
#: into its own pieces, so the cache serves little more than the value sampling and a
#: DSM warp; a larger one fills on wide scenes and makes memory grow with the width.
GDAL_CACHE_MB = 8

#: Batch size on CPU when none is given.
CPU_BATCH_SIZE = 4

#: Windows in the first batch on CPU: the model starts on the scene's first window
#: instead of waiting for a whole batch to be read and normalised.
CPU_FIRST_BATCH = 1

#: Largest automatic batch size on CUDA.
MAX_AUTO_BATCH_SIZE = 64

#: Share of free GPU memory an automatic batch may use.
GPU_MEMORY_SHARE = 0.6

#: Largest ratio, either way, between the scene's ground pixel size and the trained GSD
#: that ``--match-gsd`` serves: past it a window is upsampled from a few pixels (or
#: downsampled from a huge window) and the result would not be a real prediction.
MAX_GSD_RATIO = 8.0

_END = object()


@dataclass(frozen=True)
class PredictOptions:
    """Settings of one prediction run; ``None`` means "from the checkpoint" or "automatic".

    Attributes:
        window: Window side at model resolution, in pixels (default ``spec.patch_size``).
        overlap: Overlap of neighbouring windows in pixels (default ``window // 4``).
        batch_size: Windows per forward pass (default: from free memory).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or any torch device string.
        tta: Average logits over horizontal, vertical and both flips.
        match_gsd: Run the model at the checkpoint's GSD, resampling windows.
        confidence: Also write the confidence raster.
        probabilities: Also write the per-class probability raster.
        overwrite: Replace existing outputs.
        progress: Show a progress bar.
        values: How the scene's values are checked and scaled against the training data.
        compile: Compile the model with ``torch.compile`` (the first batch, and the
            automatic batch size, then take longer).
    """

    window: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    device: str = "auto"
    tta: bool = False
    match_gsd: bool = False
    confidence: bool = False
    probabilities: bool = False
    overwrite: bool = False
    progress: bool = True
    values: ValueOptions = field(default_factory=ValueOptions)
    compile: bool = False


@dataclass
class PredictionResult:
    """What predicting one scene produced.

    Attributes:
        scene: The input scene.
        outputs: Output kind (``classes``, ``confidence``, ``probabilities``,
            ``style``, ...) to written file; post-processing steps may add entries.
        spec: The model's input contract.
        width: Scene width in pixels.
        height: Scene height in pixels.
        windows: Windows in the grid.
        windows_run: Windows passed to the model (others were entirely nodata).
        seconds: Wall-clock time of the prediction, publishing included.
        extra: Free-form results of post-processing steps.
        publish_seconds: Of which publishing the COGs (overviews and copies).
        stages: Seconds per pipeline stage (``read``, ``to_device``, ``forward``,
            ``blend``, ``finalise``, ``to_host``, ``write``), summed over threads.
    """

    scene: Path
    outputs: dict[str, Path]
    spec: ModelSpec
    width: int
    height: int
    windows: int
    windows_run: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)
    publish_seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)

    @property
    def megapixels_per_second(self) -> float:
        """Scene pixels predicted per second, in millions."""
        return self.width * self.height / 1e6 / max(self.seconds, 1e-9)

    def summary(self) -> str:
        """Return a one-paragraph human-readable summary."""
        files = ", ".join(str(p) for p in self.outputs.values())
        return (
            f"{self.scene.name}: predicted {self.width} x {self.height} pixels "
            f"({self.width * self.height / 1e6:.2f} MP) with {self.windows_run} of "
            f"{self.windows} windows in {self.seconds:.1f} s "
            f"({self.megapixels_per_second:.3g} MP/s; publishing {self.publish_seconds:.1f} s); "
            f"wrote {files}."
        )


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda`` into a usable :class:`torch.device`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return device


def file_sha256(path: Path) -> str:
    """Return the hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class WindowPredictor:
    """Runs a segmentation model on batches of normalised windows on its device.

    The model runs channels-last, under bf16 autocast on CUDA and in float32 on
    CPU, optionally compiled with ``torch.compile``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        device: torch.device,
        model_size: tuple[int, int] | None = None,
        tta: bool = False,
        compile: bool = False,
    ) -> None:
        """Prepare *model* for inference on *device*.

        Args:
            model: Maps ``(B, C, H, W)`` inputs to ``(B, K, H, W)`` logits.
            num_classes: Expected K.
            device: Where to run.
            model_size: Resample windows to this size before the model (and the
                logits back), or ``None`` to run at scene resolution.
            tta: Average logits over flips.
            compile: Compile the model; batches are then padded to
                :attr:`batch_size` (once set) so that one graph serves every batch.
        """
        self.device = device
        self.cuda = device.type == "cuda"
        self.eager = model.eval().to(device).to(memory_format=torch.channels_last)
        self.model = torch.compile(self.eager, dynamic=False) if compile else self.eager
        self.compiled = compile
        self.num_classes = num_classes
        self.model_size = model_size
        self.tta = tta
        #: Batches are padded to this size when the model is compiled.
        self.batch_size: int | None = None

    def _forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            logits = model(x)
        if logits.shape[1] != self.num_classes or logits.shape[2:] != x.shape[2:]:
            raise ConfigError(
                f"the model returned logits of shape {tuple(logits.shape)} for input "
                f"{tuple(x.shape)}; expected {self.num_classes} classes at input resolution"
            )
        return logits.float()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor | np.ndarray, eager: bool = False) -> torch.Tensor:
        """Return float32 ``(B, K, h, w)`` logits on the device for ``(B, C, h, w)`` inputs.

        Args:
            batch: Normalised float32 inputs (on the device, or a NumPy array).
            eager: Run the uncompiled model.
        """
        x = torch.as_tensor(batch).to(self.device, non_blocking=True)
        count, size = x.shape[0], x.shape[2:]
        model = self.eager if eager else self.model
        if self.compiled and not eager and self.batch_size and count < self.batch_size:
            x = torch.cat([x, x.new_zeros((self.batch_size - count, *x.shape[1:]))])
        if self.model_size is not None and tuple(size) != self.model_size:
            x = F.interpolate(x, size=self.model_size, mode="bilinear", antialias=True)
        x = x.contiguous(memory_format=torch.channels_last)
        logits = self._forward(model, x)
        if self.tta:
            for dims in ((3,), (2,), (2, 3)):
                logits += self._forward(model, x.flip(dims)).flip(dims)
            logits /= 4
        if logits.shape[2:] != size:
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear")
        return logits[:count]


def auto_batch_size(predictor: WindowPredictor, channels: int, size: tuple[int, int]) -> int:
    """Choose a batch size: :data:`CPU_BATCH_SIZE` on CPU, from free memory on CUDA.

    On CUDA the peak memory of a batch of two windows (uncompiled model) is
    measured and the batch takes up to :data:`GPU_MEMORY_SHARE` of the free memory.

    Args:
        predictor: The model runner.
        channels: Input channels.
        size: Window size in scene pixels.

    Returns:
        Windows per batch.
    """
    if not predictor.cuda:
        return CPU_BATCH_SIZE
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(predictor.device)
    before = torch.cuda.memory_allocated(predictor.device)
    predictor(torch.zeros((2, channels, *size), device=predictor.device), eager=True)
    per_window = max((torch.cuda.max_memory_allocated(predictor.device) - before) / 2, 1)
    free, _ = torch.cuda.mem_get_info(predictor.device)
    return int(max(1, min(MAX_AUTO_BATCH_SIZE, free * GPU_MEMORY_SHARE // per_window)))


class _Worker(threading.Thread):
    """A daemon thread that remembers the exception it died of."""

    def __init__(self, target: Any, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except BaseException as e:
            self.error = e


def _raise_stopped(worker: _Worker) -> None:
    if worker.error is not None:
        raise worker.error
    raise RuntimeError(f"the {worker.name} thread stopped unexpectedly")


def _put(q: queue.Queue, item: Any, stop: threading.Event, consumer: _Worker | None = None) -> bool:
    """Put *item* unless *stop* is set; raise if *consumer* died. Return whether it was put."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if consumer is not None and not consumer.is_alive():
                _raise_stopped(consumer)
    return False


def _get(q: queue.Queue, worker: _Worker) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if not worker.is_alive():
                _raise_stopped(worker)


def scene_grid(reader: SceneReader, spec: ModelSpec, options: PredictOptions) -> WindowGrid:
    """Return the window grid of a scene in scene pixels, honouring ``match_gsd``.

    Args:
        reader: The open scene.
        spec: The model's input contract.
        options: Window, overlap and GSD settings.

    Returns:
        The window layout.
    """
    window = options.window or spec.patch_size
    overlap = window // 4 if options.overlap is None else options.overlap
    if window < 1 or not 0 <= overlap < window:
        raise ConfigError(f"--overlap {overlap} must be >= 0 and smaller than --window {window}")
    ratio = gsd_ratio(reader.ground_size, spec) if options.match_gsd else (1.0, 1.0)
    size = tuple(max(1, round(window / r)) for r in ratio)
    lap = tuple(min(s - 1, round(overlap / r)) for s, r in zip(size, ratio, strict=True))
    return WindowGrid(reader.height, reader.width, size, lap)


def _check_gsd(reader: SceneReader, spec: ModelSpec, match_gsd: bool) -> None:
    """Warn when the scene's ground pixel size is off the trained GSD; refuse what cannot be served.

    Raises:
        InputError: If ``match_gsd`` is set and the ratio exceeds :data:`MAX_GSD_RATIO`.
    """
    ratio = gsd_ratio(reader.ground_size, spec)
    x, y = reader.ground_size
    size = f"ground pixel size {x:.3g} x {y:.3g} m"
    if match_gsd and any(not 1 / MAX_GSD_RATIO <= r <= MAX_GSD_RATIO for r in ratio):
        raise InputError(
            reader.path,
            f"{size} is {max(ratio):.3g}x the checkpoint's GSD {spec.gsd:g} m; --match-gsd "
            f"serves ratios up to {MAX_GSD_RATIO:g}x either way: use a model trained near "
            "the scene's resolution",
        )
    if not match_gsd and any(abs(r - 1) > GSD_TOLERANCE for r in ratio):
        warnings.warn(
            f"{reader.path}: {size} differs from the checkpoint's GSD {spec.gsd:g} m by more "
            f"than {GSD_TOLERANCE:.0%}; consider --match-gsd",
            stacklevel=3,
        )


def _read_windows(
    strips: StripReader,
    grid: WindowGrid,
    pool: BatchPool,
    out: queue.Queue,
    stop: threading.Event,
    consumer: _Worker | None = None,
    prepare: Any = None,
    first: int = 0,
) -> None:
    """Batching thread: cut the windows of each strip into host batches, in raster order.

    *prepare*, if given, is called with each filled batch before it is handed on
    (on CPU: normalisation, which then overlaps the model's work on the previous batch).
    The first batch is handed on with *first* windows, if given, rather than full.
    """
    with strips:
        batch = pool.take(stop)
        for strip in strips:
            for col in grid.cols:
                if batch is None:
                    return
                strip.cut(col, *batch.slot())
                batch.keep()
                if batch.full or 0 < first == batch.count:
                    first = 0
                    if prepare is not None:
                        prepare(batch)
                    if not _put(out, batch, stop, consumer):
                        return
                    batch = pool.take(stop)
        if batch is not None and batch.slots:
            if prepare is not None:
                prepare(batch)
            _put(out, batch, stop, consumer)
    _put(out, _END, stop, consumer)


def _drain(inbox: queue.Queue, stop: threading.Event) -> Iterator[Any]:
    """Yield the items of *inbox* until its end marker, or until *stop* is set."""
    while not stop.is_set():
        try:
            item = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _END:
            return
        yield item


def _write_blocks(
    writer: PredictionWriter, inbox: queue.Queue, stop: threading.Event, times: StageTimes
) -> None:
    """Writer thread: wait for each finished block's copy to the host, then stage it."""
    for row, col, bands, event in _drain(inbox, stop):
        if event is not None:
            event.synchronize()
        start = time.perf_counter()
        writer.write(row, col, {kind: band.numpy() for kind, band in bands.items()})
        times.add("write", time.perf_counter() - start)


def _batches(items: queue.Queue, producer: _Worker) -> Iterator[HostBatch]:
    """Yield the host batches of the batching thread until it signals the end."""
    while (item := _get(items, producer)) is not _END:
        yield item


def _provenance(
    spec: ModelSpec,
    grid: WindowGrid,
    options: PredictOptions,
    checkpoint: Path | None,
    gsd: tuple[float, float],
) -> dict[str, Any]:
    tags = {
        "GEOCT_VERSION": __version__,
        "WINDOW": f"{grid.window[0]}x{grid.window[1]}",
        "OVERLAP": f"{grid.overlap[0]}x{grid.overlap[1]}",
        "TTA": options.tta,
        "MATCH_GSD": options.match_gsd,
        "MODEL_GSD": spec.gsd,
        "SCENE_GSD": "{:.6g}x{:.6g}".format(*gsd),
        "MODEL_BANDS": ",".join(spec.bands),
    }
    if checkpoint is not None:
        tags["CHECKPOINT"] = checkpoint.name
        tags["CHECKPOINT_SHA256"] = file_sha256(checkpoint)
    return tags


def predict_scene(
    model: torch.nn.Module,
    spec: ModelSpec,
    scene: str | Path,
    output: str | Path | None = None,
    *,
    dsm: str | Path | None = None,
    options: PredictOptions | None = None,
    checkpoint: str | Path | None = None,
) -> PredictionResult:
    """Predict one scene and write its outputs beside it (or at *output*).

    Args:
        model: Maps normalised ``(B, C, H, W)`` inputs (bands as in *spec*) to logits.
        spec: The model's input contract.
        scene: Scene raster (GeoTIFF, VRT, ...).
        output: Class raster path (default ``SCENE.classes.tif``); the confidence
            and probability rasters are named after it.
        dsm: Height raster, required when the model has a height band.
        options: Prediction settings.
        checkpoint: Checkpoint file, recorded in the provenance tags.

    Returns:
        The written files and statistics.
    """
    options = options or PredictOptions()
    scene = Path(scene)
    checkpoint = Path(checkpoint) if checkpoint is not None else None
    start = time.perf_counter()
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB << 20, GDAL_PAM_ENABLED="NO"),
        SceneReader(scene, spec, dsm, options.values, defer_value_check=True) as reader,
    ):
        paths = OutputPaths.beside(
            scene, Path(output) if output else None, options.confidence, options.probabilities
        )
        for _, path in paths.items():
            check_output(path, options.overwrite)
        _check_gsd(reader, spec, options.match_gsd)
        grid = scene_grid(reader, spec, options)
        window = options.window or spec.patch_size
        predictor = WindowPredictor(
            model,
            spec.classes.num_classes,
            resolve_device(options.device),
            model_size=(window, window) if options.match_gsd else None,
            tta=options.tta,
            compile=options.compile,
        )
        batch_size = options.batch_size or auto_batch_size(predictor, spec.in_channels, grid.window)
        src = reader.src
        writer = PredictionWriter(
            paths,
            Grid(src.crs, src.transform, src.width, src.height),
            spec.classes,
            _provenance(spec, grid, options, checkpoint, reader.ground_size),
        )
        try:
            windows_run, stages = _stream(
                reader, grid, predictor, writer, batch_size, options.progress
            )
            written = writer.publish(options.overwrite)
        finally:
            writer.close()
    outputs = {**written, "style": _write_style(paths.classes, spec)}
    return PredictionResult(
        scene=scene,
        outputs=outputs,
        spec=spec,
        width=src.width,
        height=src.height,
        windows=len(grid),
        windows_run=windows_run,
        seconds=time.perf_counter() - start,
        publish_seconds=writer.publish_seconds,
        stages=stages,
    )


def _write_style(classes_path: Path, spec: ModelSpec) -> Path:
    """Write the QGIS style ``CLASSES.qml`` beside the class raster (replacing any)."""
    path = classes_path.with_suffix(".qml")
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(raster_qml(spec.classes))
    return path


def _stream(
    reader: SceneReader,
    grid: WindowGrid,
    predictor: WindowPredictor,
    writer: PredictionWriter,
    batch_size: int,
    progress: bool,
) -> tuple[int, dict[str, float]]:
    """Run readers, batching, model, blending and writing concurrently.

    A deferred value check of the scene (:attr:`SceneReader.value_check`) samples
    alongside and is checked as soon as its sample is in, and before returning.

    Returns:
        The number of windows run and the seconds spent per stage.
    """
    device = predictor.device
    times = stage_times(device)
    predictor.batch_size = batch_size
    kinds = frozenset(kind for kind, _ in writer.paths.items())
    stop = threading.Event()
    ready: queue.Queue = queue.Queue(maxsize=2)
    outbox: queue.Queue = queue.Queue(maxsize=4)
    writing = _Worker(lambda: _write_blocks(writer, outbox, stop, times), "writer")

    def sink(row: int, col: int, sums: torch.Tensor, weights: torch.Tensor | None) -> None:
        with times.time("finalise"):
            bands = finalise(sums, weights, kinds)
        with times.time("to_host"):
            host, event = to_host(bands)
        _put(outbox, (row, col, host, event), stop, writing)

    read_lock = writer.begin()
    lookahead = grid.window[0] if predictor.cuda else 0
    strips = StripReader(reader, grid, lock=read_lock, timer=times.add, lookahead=lookahead)
    weights = bool(SOFT_KINDS & kinds) or not strips.all_valid
    blender = StreamingBlender(grid, predictor.num_classes, sink, device, weights=weights)
    pool = BatchPool(
        size=batch_size,
        channels=len(reader.indexes),
        window=grid.window,
        dtype=strips.dtype,
        height=reader.dsm is not None,
        pinned=predictor.cuda,
    )
    normalise = InputNormaliser(reader.mean, reader.inv_std, device)
    copies = torch.cuda.Stream(device) if predictor.cuda else None
    prepare = None if predictor.cuda else _cpu_prepare(normalise, times)
    first = 0 if predictor.cuda else CPU_FIRST_BATCH
    preparing = _Worker(
        lambda: _read_windows(strips, grid, pool, ready, stop, prepare=prepare, first=first),
        "batcher",
    )
    blends: queue.Queue = queue.Queue(maxsize=2 if predictor.cuda else 1)
    give = None if predictor.cuda else pool.give
    blending = _Worker(lambda: _blend_batches(blender, blends, stop, times, give), "blender")
    bar = tqdm(total=len(grid), unit="win", disable=not progress, desc=reader.path.name)
    windows_run = 0
    model_threads = torch.get_num_threads()
    light_threads = model_threads if predictor.cuda else 1
    workers = (preparing, blending, writing)
    check = reader.value_check
    try:
        strips.start()
        if check is not None:
            check.start(read_lock)
        for worker in workers:
            worker.start()
        torch.set_num_threads(light_threads)
        for batch in _batches(ready, preparing):
            x = batch.input
            if x is None:
                with times.time("to_device"):
                    image, valid, height = batch.to(device, copies)
                    x = normalise(image, valid, height) if batch.count else None
            else:
                valid = batch.to(device)[1]
            item = (batch, batch.slots, batch.masked, None, valid)
            if predictor.cuda:
                pool.give(batch)
            if batch.count:
                with times.time("forward"), _threads(model_threads):
                    item = (*item[:3], predictor(x), valid)
            windows_run += batch.count
            _put(blends, item, stop, blending)
            bar.update(len(item[1]))
            if check is not None:
                check.poll()
        if check is not None:
            check.finish()
        for worker, inbox in ((blending, blends), (writing, outbox)):
            _put(inbox, _END, stop, worker)
            worker.join()
            if worker.error is not None:
                _raise_stopped(worker)
        if not blender.done:
            raise RuntimeError("prediction stopped before every window was blended")
    finally:
        torch.set_num_threads(model_threads)
        stop.set()
        for worker in workers:
            if worker.is_alive():
                worker.join()
        strips.close()
        if check is not None:
            check.close()
        blender.close()
        bar.close()
    return windows_run, dict(times.seconds)


def _cpu_prepare(normalise: InputNormaliser, times: StageTimes) -> Any:
    """Return a batch preparer that normalises on CPU, in the batching thread, on one thread."""
    started = threading.local()

    def prepare(batch: HostBatch) -> None:
        if not getattr(started, "done", False):
            torch.set_num_threads(1)
            started.done = True
        if batch.count:
            with times.time("to_device"):
                image, valid, height = batch.to(torch.device("cpu"))
                if batch.input_buffer is None:
                    shape = (batch.size, normalise.channels, *image.shape[2:])
                    batch.input_buffer = torch.empty(shape, memory_format=torch.channels_last)
                batch.input = normalise(image, valid, height, out=batch.input_buffer)

    return prepare


def _blend_batches(
    blender: StreamingBlender,
    inbox: queue.Queue,
    stop: threading.Event,
    times: StageTimes,
    give: Any,
) -> None:
    """Blending thread: push each batch's logits, in raster order, into the blender.

    Its sink finalises rows on the device and hands them to the writer. On CPU it
    runs on one intra-op thread, alongside the model on all of them, and returns
    each host batch (whose masks it reads) to the pool with *give*.
    """
    if blender.device.type == "cpu":
        torch.set_num_threads(1)
    for batch, slots, masked, logits, valid in _drain(inbox, stop):
        with times.time("blend"):
            for slot in slots:
                if slot < 0:
                    blender.push(None)
                else:
                    blender.push(logits[slot], valid[slot] if masked[slot] else None)
        if give is not None:
            give(batch)


@contextmanager
def _threads(count: int) -> Iterator[None]:
    """Run the block with *count* torch intra-op threads.

    On CPU the model gets every thread, while the many small memory-bound
    operations around it (normalising, blending, finalising) run on one: a
    parallel region per small operation costs more than it gains, and far more
    when other processes share the cores.
    """
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
