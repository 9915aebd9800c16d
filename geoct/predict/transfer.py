"""Host batches of raw windows, their copies to and from the model's device, and stage timing.

A :class:`HostBatch` holds up to ``batch_size`` raw windows (the scene's dtype) in
host memory, pinned on CUDA, and the order of every grid window it stands for
(skipped windows included); the batching thread cuts each window straight into
its slot (:meth:`HostBatch.slot`). A small :class:`BatchPool` of them lets the
batching thread fill one while the device works on the previous: on CUDA the copy
to the device runs on its own stream and the buffer returns to the pool once that
copy is done. Finished uint8 rows come back with :func:`to_host` (non-blocking, into pinned
memory, with an event to wait on).
"""

import contextlib
import contextvars
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
import torch

#: Host batch buffers in flight (one being filled, one being copied, one spare).
POOL_SIZE = 3

#: Stages of the pipeline, in order, as reported by :class:`StageTimes`.
STAGES = ("read", "to_device", "forward", "blend", "finalise", "to_host", "write")

_PROFILE: contextvars.ContextVar["StageTimes | None"] = contextvars.ContextVar(
    "geoct_predict_profile", default=None
)


class StageTimes:
    """Seconds spent in each pipeline stage, summed over threads and windows.

    Stages run concurrently, so the sum exceeds the wall-clock time. On CUDA the
    device runs asynchronously: without ``sync`` a stage's time is the host's time
    to queue its work; with ``sync`` the device is synchronised around every
    timed stage, which attributes device time but serialises the pipeline (for
    profiling only).
    """

    def __init__(self, device: torch.device, sync: bool = False) -> None:
        """Start with zero time in every stage."""
        self.sync = sync and device.type == "cuda"
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        """Add *seconds* to *stage* (thread-safe)."""
        with self._lock:
            self.seconds[stage] += seconds

    @contextlib.contextmanager
    def time(self, stage: str) -> Iterator[None]:
        """Time the block as *stage*."""
        if self.sync:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            self.add(stage, time.perf_counter() - start)


@contextlib.contextmanager
def profile_stages(device: torch.device | str, sync: bool = True) -> Iterator[StageTimes]:
    """Collect the stage times of the predictions run inside the block.

    Args:
        device: The prediction device.
        sync: Synchronise CUDA around each stage (see :class:`StageTimes`).

    Yields:
        The times, filled in as predictions run.
    """
    times = StageTimes(torch.device(device), sync)
    token = _PROFILE.set(times)
    try:
        yield times
    finally:
        _PROFILE.reset(token)


def stage_times(device: torch.device) -> StageTimes:
    """The times of the enclosing :func:`profile_stages`, or fresh unsynchronised ones."""
    return _PROFILE.get() or StageTimes(device)


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a NumPy dtype."""
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype


class HostBatch:
    """Up to ``size`` raw windows in host memory and the grid windows they stand for.

    Attributes:
        count: Windows held (non-skipped).
        slots: For each grid window covered, in raster order, its index in the
            batch, or ``-1`` for a skipped window (no valid pixel).
        masked: For each held window, whether some of its pixels are invalid.
        event: CUDA event after which the buffers may be refilled, or ``None``.
        input: The normalised model input, when prepared with the batch (CPU).
    """

    def __init__(
        self,
        size: int,
        channels: int,
        window: tuple[int, int],
        dtype: np.dtype,
        height: bool,
        pinned: bool,
    ) -> None:
        """Allocate the buffers.

        Args:
            size: Largest number of windows.
            channels: Optical bands.
            window: Window size in pixels.
            dtype: Raw value type.
            height: Whether a height band comes along.
            pinned: Use page-locked memory (CUDA), for asynchronous copies.
        """
        self.size = size
        self.image = torch.empty((size, *window, channels), dtype=torch_dtype(dtype))
        self.valid = torch.empty((size, *window), dtype=torch.bool)
        self.height = torch.empty((size, *window), dtype=torch.float32) if height else None
        if pinned:
            self.image = self.image.pin_memory()
            self.valid = self.valid.pin_memory()
            self.height = self.height.pin_memory() if height else None
        self._image = self.image.numpy()
        self._valid = self.valid.numpy()
        self._height = self.height.numpy() if height else None
        #: Memory reused for the normalised input when it is prepared on the host (CPU).
        self.input_buffer: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Empty the batch."""
        self.count = 0
        self.slots: list[int] = []
        self.masked: list[bool] = []
        self.event: torch.cuda.Event | None = None
        self.input: torch.Tensor | None = None

    @property
    def full(self) -> bool:
        """Whether no more window fits."""
        return self.count == self.size

    def skip(self) -> None:
        """Record a skipped grid window."""
        self.slots.append(-1)

    def slot(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Return ``(image, valid, height)`` views of the next window's buffers.

        Write a window into them, then :meth:`keep` it. ``image`` is ``(C, h, w)``,
        a transposed view of the pixel-interleaved buffer; ``height`` is ``None``
        without a height band.
        """
        n = self.count
        height = None if self._height is None else self._height[n]
        return self._image[n].transpose(2, 0, 1), self._valid[n], height

    def keep(self) -> bool:
        """Hold the window written into :meth:`slot`, or skip it if no pixel is valid.

        Returns:
            Whether the window is held.
        """
        valid = self._valid[self.count]
        if not valid.any():
            self.skip()
            return False
        self.masked.append(not valid.all())
        self.slots.append(self.count)
        self.count += 1
        return True

    def add(self, image: np.ndarray, valid: np.ndarray, height: np.ndarray | None) -> None:
        """Copy one window in."""
        n = self.count
        self._image[n] = image.transpose(1, 2, 0)
        self._valid[n] = valid
        if self._height is not None:
            self._height[n] = height
        self.masked.append(not valid.all())
        self.slots.append(n)
        self.count += 1

    def to(
        self, device: torch.device, stream: "torch.cuda.Stream | None" = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Return ``(image, valid, height)`` of the held windows on *device*.

        ``image`` is ``(n, C, h, w)`` in channels-last layout (the host buffer is
        pixel-interleaved, which the normalisation and the model prefer);
        ``valid`` is ``None`` when every pixel is valid. On CUDA the copies run on
        *stream*; the current stream waits for them, and :attr:`event` marks when
        the host buffers may be refilled.
        """
        n = self.count
        image = self.image[:n].permute(0, 3, 1, 2)
        parts = [image, self.valid[:n] if any(self.masked) else None]
        parts.append(self.height[:n] if self.height is not None else None)
        if device.type != "cuda":
            return tuple(parts)
        current = torch.cuda.current_stream(device)
        stream = stream or current
        with torch.cuda.stream(stream):
            moved = [None if p is None else p.to(device, non_blocking=True) for p in parts]
            self.event = torch.cuda.Event()
            self.event.record(stream)
        current.wait_event(self.event)
        for tensor in moved:
            if tensor is not None:
                tensor.record_stream(current)
        return tuple(moved)


class BatchPool:
    """A few :class:`HostBatch` buffers passed between the batching and the main thread."""

    def __init__(self, count: int = POOL_SIZE, **batch: object) -> None:
        """Allocate *count* batches with the :class:`HostBatch` arguments *batch*."""
        self._free: queue.Queue = queue.Queue()
        for _ in range(count):
            self._free.put(HostBatch(**batch))

    def take(self, stop: threading.Event) -> HostBatch | None:
        """Return an empty batch, waiting for one; ``None`` if *stop* is set first."""
        while not stop.is_set():
            try:
                batch = self._free.get(timeout=0.1)
            except queue.Empty:
                continue
            if batch.event is not None:
                batch.event.synchronize()
            batch.reset()
            return batch
        return None

    def give(self, batch: HostBatch) -> None:
        """Return a batch whose windows have been consumed (or are being copied)."""
        self._free.put(batch)


def to_host(bands: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], object]:
    """Start copying finished bands to the host.

    Returns:
        The host tensors and a CUDA event to synchronise on before reading them
        (``None`` on CPU, where *bands* are returned as they are).
    """
    first = next(iter(bands.values()))
    if first.device.type != "cuda":
        return bands, None
    host = {}
    for kind, band in bands.items():
        host[kind] = torch.empty(band.shape, dtype=band.dtype, pin_memory=True)
        host[kind].copy_(band, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event
