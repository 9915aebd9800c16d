"""Streaming sliding-window prediction of a scene with any :class:`torch.nn.Module`.

Three threads keep the model busy: a reader thread reads and normalises windows
(:class:`~geoct.predict.reader.SceneReader`), the calling thread batches them and
runs the model, and a writer thread blends the logits
(:class:`~geoct.predict.accumulator.StreamingBlender`) and writes final blocks
(:class:`~geoct.predict.writer.PredictionWriter`). Queues between them are bounded,
so memory does not depend on the scene size.
"""

import hashlib
import queue
import threading
import time
import warnings
from collections.abc import Iterator
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
from .reader import GSD_TOLERANCE, SceneReader, ground_size, gsd_ratio
from .values import ValueOptions
from .windows import WindowGrid
from .writer import Grid, OutputPaths, PredictionWriter

#: GDAL block cache while predicting, in MB: small, so memory does not grow with the scene.
GDAL_CACHE_MB = 32

#: Batch size on CPU when none is given.
CPU_BATCH_SIZE = 4

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
        seconds: Wall-clock time of the prediction.
        extra: Free-form results of post-processing steps.
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
            f"({self.megapixels_per_second:.3g} MP/s); wrote {files}."
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
    """Runs a segmentation model on batches of normalised windows.

    On CUDA the model runs channels-last under bf16 autocast; on CPU in float32.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        device: torch.device,
        model_size: tuple[int, int] | None = None,
        tta: bool = False,
    ) -> None:
        """Prepare *model* for inference on *device*.

        Args:
            model: Maps ``(B, C, H, W)`` inputs to ``(B, K, H, W)`` logits.
            num_classes: Expected K.
            device: Where to run.
            model_size: Resample windows to this size before the model (and the
                logits back), or ``None`` to run at scene resolution.
            tta: Average logits over flips.
        """
        self.device = device
        self.cuda = device.type == "cuda"
        self.model = model.eval().to(device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_classes = num_classes
        self.model_size = model_size
        self.tta = tta

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            logits = self.model(x)
        if logits.shape[1] != self.num_classes or logits.shape[2:] != x.shape[2:]:
            raise ConfigError(
                f"the model returned logits of shape {tuple(logits.shape)} for input "
                f"{tuple(x.shape)}; expected {self.num_classes} classes at input resolution"
            )
        return logits.float()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Return float32 ``(B, K, h, w)`` logits for ``(B, C, h, w)`` inputs."""
        x = torch.from_numpy(batch).to(self.device, non_blocking=True)
        size = x.shape[2:]
        if self.model_size is not None and tuple(size) != self.model_size:
            x = F.interpolate(x, size=self.model_size, mode="bilinear", antialias=True)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        logits = self._forward(x)
        if self.tta:
            for dims in ((3,), (2,), (2, 3)):
                logits += self._forward(x.flip(dims)).flip(dims)
            logits /= 4
        if logits.shape[2:] != size:
            logits = F.interpolate(logits, size=tuple(size), mode="bilinear")
        return logits.cpu().numpy()


def auto_batch_size(predictor: WindowPredictor, channels: int, size: tuple[int, int]) -> int:
    """Choose a batch size: :data:`CPU_BATCH_SIZE` on CPU, from free memory on CUDA.

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
    predictor(np.zeros((2, channels, *size), dtype=np.float32))
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
    ratio = gsd_ratio(reader.src, spec) if options.match_gsd else (1.0, 1.0)
    size = tuple(max(1, round(window / r)) for r in ratio)
    lap = tuple(min(s - 1, round(overlap / r)) for s, r in zip(size, ratio, strict=True))
    return WindowGrid(reader.height, reader.width, size, lap)


def _check_gsd(reader: SceneReader, spec: ModelSpec, match_gsd: bool) -> None:
    """Warn when the scene's ground pixel size is off the trained GSD; refuse what cannot be served.

    Raises:
        InputError: If ``match_gsd`` is set and the ratio exceeds :data:`MAX_GSD_RATIO`.
    """
    ratio = gsd_ratio(reader.src, spec)
    x, y = ground_size(reader.src)
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
    reader: SceneReader, grid: WindowGrid, out: queue.Queue, stop: threading.Event
) -> None:
    for row in grid.rows:
        for col in grid.cols:
            if not _put(out, reader.read(row, col, *grid.window), stop):
                return
    _put(out, _END, stop)


def _write_blocks(blender: StreamingBlender, inbox: queue.Queue, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            item = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is _END:
            return
        blender.push(*item)


def _batches(items: queue.Queue, reader_thread: _Worker, size: int) -> Iterator[list[tuple]]:
    """Group windows into lists holding at most *size* non-skipped windows, in order."""
    pending, ready = [], 0
    while (item := _get(items, reader_thread)) is not _END:
        pending.append(item)
        ready += item[0] is not None
        if ready == size:
            yield pending
            pending, ready = [], 0
    if pending:
        yield pending


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
        SceneReader(scene, spec, dsm, options.values) as reader,
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
        )
        batch_size = options.batch_size or auto_batch_size(predictor, spec.in_channels, grid.window)
        src = reader.src
        writer = PredictionWriter(
            paths,
            Grid(src.crs, src.transform, src.width, src.height),
            spec.classes,
            _provenance(spec, grid, options, checkpoint, ground_size(src)),
        )
        try:
            windows_run = _stream(reader, grid, predictor, writer, batch_size, options.progress)
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
) -> int:
    """Run reader, model and writer concurrently; return the number of windows run."""
    blender = StreamingBlender(grid, predictor.num_classes, writer.write)
    reader.lock = writer.lock = threading.Lock()
    stop = threading.Event()
    inputs: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    results: queue.Queue = queue.Queue(maxsize=2 * batch_size)
    reading = _Worker(lambda: _read_windows(reader, grid, inputs, stop), "reader")
    writing = _Worker(lambda: _write_blocks(blender, results, stop), "writer")
    bar = tqdm(total=len(grid), unit="win", disable=not progress, desc=reader.path.name)
    windows_run = 0
    reading.start()
    writing.start()
    try:
        for batch in _batches(inputs, reading, batch_size):
            ready = [image for image, _ in batch if image is not None]
            logits = iter(predictor(np.stack(ready))) if ready else iter(())
            for image, valid in batch:
                item = (next(logits), valid) if image is not None else (None, None)
                _put(results, item, stop, writing)
            windows_run += len(ready)
            bar.update(len(batch))
        _put(results, _END, stop, writing)
        writing.join()
        if writing.error is not None:
            _raise_stopped(writing)
        if not blender.done:
            raise RuntimeError("prediction stopped before every window was blended")
    finally:
        stop.set()
        reading.join()
        writing.join()
        blender.close()
        bar.close()
    return windows_run
