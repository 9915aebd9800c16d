"""Seamless, resumable prediction of a tiled mosaic, shared between processes.

The tiles are one scene: a VRT over them (:mod:`~geoct.predict.tiles`) carries one
global window grid. Each output tile is predicted from its *context*, the part of
the mosaic that the global windows touching it span (:meth:`WindowGrid.part`),
read through a VRT of that part, so it blends exactly the windows, weights and
summation order that a one-scene prediction of the whole mosaic gives its pixels,
and writes only its own pixels. Tile borders are therefore invisible, and the
class raster of every tile is bit-identical to the same region of the one-scene
prediction. Windows near a tile border are computed for each tile they touch:
with tiles much larger than the window that costs a few percent.

A tile is done when its outputs are published (all of its set, atomically, see
:func:`~geoct.raster_io.output_set`). A rerun skips done tiles whose provenance
(checkpoint SHA-256, window, overlap, TTA, GSD options, geoct version) matches and
refuses, without ``--overwrite``, tiles predicted with other settings; killing a
process loses at most the tiles in flight. Processes claim tiles one at a time
from a counter in torch.distributed's store (:mod:`~geoct.predict.distributed`).
"""

import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import rasterio
import torch
from affine import Affine
from rasterio.windows import Window
from tqdm import tqdm

from ..errors import GeoctError, InputError
from ..metadata import ModelSpec
from ..raster_io import atomic_output, output_set, publishing_journal
from .distributed import Workers
from .engine import (
    GDAL_CACHE_MB,
    PredictionResult,
    PredictOptions,
    WindowPredictor,
    _check_gsd,
    _provenance,
    _stream,
    _write_style,
    auto_batch_size,
    file_sha256,
    resolve_device,
    scene_grid,
)
from .reader import SceneReader
from .tiles import MosaicGrid, Tile, vrt_xml
from .values import ValueOptions
from .windows import WindowGrid
from .writer import CLASS_NODATA, CONFIDENCE_NODATA, Grid, OutputPaths, PredictionWriter

#: Provenance tags that must match for a tile to count as done.
RESUME_TAGS = ("CHECKPOINT_SHA256", "WINDOW", "OVERLAP", "TTA", "MATCH_GSD", "GEOCT_VERSION")

#: Leftovers of a killed run in OUT_DIR (staging, partial and context files), removed on start.
LEFTOVERS = (".*.stage.tif", ".*.stage.tif.*", ".*.partial*", ".mosaic.*.context.vrt")

#: Store keys: tiles finished by any process, and a request to stop claiming tiles.
DONE_KEY, ABORT_KEY = "geoct/mosaic/done", "geoct/mosaic/abort"


@dataclass
class MosaicRun:
    """What predicting a mosaic did, in one process or summed over all.

    Attributes:
        done: Tiles predicted now.
        skipped: Tiles already done with the same provenance.
        failed: Tile file to the reason it failed.
        pixels: Pixels predicted now.
        seconds: Wall-clock time of this process.
        results: Per-tile results of this process.
    """

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    pixels: int = 0
    seconds: float = 0.0
    results: list[PredictionResult] = field(default_factory=list)

    @property
    def megapixels_per_second(self) -> float:
        """Pixels predicted per second, in millions."""
        return self.pixels / 1e6 / max(self.seconds, 1e-9)


def tile_paths(out_dir: Path, tile: Tile, options: PredictOptions) -> OutputPaths:
    """Return ``OUT_DIR/<tile>.classes.tif`` and the confidence/probability rasters asked for."""
    return OutputPaths.beside(
        tile.path, out_dir / f"{tile.name}.classes.tif", options.confidence, options.probabilities
    )


def tile_state(paths: OutputPaths, expected: dict[str, str]) -> str:
    """Return ``"missing"``, ``"done"`` or ``"different"`` for a tile's existing outputs."""
    if not paths.classes.exists() or publishing_journal(paths.classes).exists():
        return "missing"
    if not all(p.exists() for _, p in paths.items()):
        return "different"
    with rasterio.open(paths.classes) as src:
        tags = src.tags()
    same = all(tags.get(k) == expected.get(k) for k in RESUME_TAGS)
    return "done" if same else "different"


class _Cropped:
    """A :class:`PredictionWriter` for a tile that receives the blocks of its whole context."""

    def __init__(self, writer: PredictionWriter, row: int, col: int) -> None:
        self.writer, self.row, self.col = writer, row, col
        self.height, self.width = writer.grid.height, writer.grid.width

    def __getattr__(self, name: str) -> object:
        return getattr(self.writer, name)

    def write(self, row: int, col: int, bands: dict) -> None:
        """Write the part of a context block that lies in the tile."""
        some = next(iter(bands.values()))
        h, w = some.shape[-2:]
        r0, r1 = max(row, self.row), min(row + h, self.row + self.height)
        c0, c1 = max(col, self.col), min(col + w, self.col + self.width)
        if r1 <= r0 or c1 <= c0:
            return
        rows, cols = slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)
        cropped = {kind: band[..., rows, cols] for kind, band in bands.items()}
        self.writer.write(r0 - self.row, c0 - self.col, cropped)


@dataclass
class MosaicPredictor:
    """Predicts the tiles of one mosaic into ``OUT_DIR``.

    Attributes:
        model: The network.
        spec: Its input contract.
        mosaic: The tiles and their grid.
        out_dir: Output folder.
        options: Prediction settings.
        checkpoint: Checkpoint file, for provenance.
        follow_up: Called with each tile's result inside its output set (STAC item...).
        follow_up_paths: Extra files *follow_up* writes for a tile's class raster.
        dsm: Height raster for a checkpoint with a height band: one raster (a
            VRT of DSM tiles, say) for the whole mosaic, read unresampled where it
            is on the mosaic's pixel grid.
    """

    model: torch.nn.Module
    spec: ModelSpec
    mosaic: MosaicGrid
    out_dir: Path
    options: PredictOptions
    checkpoint: Path | None = None
    follow_up: Callable[[PredictionResult], None] | None = None
    follow_up_paths: Callable[[Path], list[Path]] = lambda classes: []
    dsm: Path | None = None

    def __post_init__(self) -> None:
        self.sha256 = file_sha256(self.checkpoint) if self.checkpoint else None

    def input_vrt(self) -> Path:
        """``OUT_DIR/mosaic.input.vrt``: the tiles as one scene."""
        return self.out_dir / "mosaic.input.vrt"

    def prepare(self, workers: Workers) -> None:
        """Write the input VRT (rank 0), then read the global grid and normalisation."""
        if workers.rank == 0:
            for pattern in LEFTOVERS:
                for leftover in self.out_dir.glob(pattern):
                    leftover.unlink(missing_ok=True)
            with atomic_output(self.input_vrt(), overwrite=True) as tmp:
                tmp.write_text(vrt_xml(self.mosaic, self.out_dir))
        workers.barrier()
        with SceneReader(self.input_vrt(), self.spec, self.dsm, self.options.values) as reader:
            _check_gsd(reader, self.spec, self.options.match_gsd)
            self.grid = scene_grid(reader, self.spec, self.options)
            self.statistics = reader.statistics
            self.gsd = reader.ground_size
        window = self.options.window or self.spec.patch_size
        self.predictor = WindowPredictor(
            self.model,
            self.spec.classes.num_classes,
            resolve_device(
                workers.device if self.options.device == "auto" else self.options.device
            ),
            model_size=(window, window) if self.options.match_gsd else None,
            tta=self.options.tta,
            compile=self.options.compile,
        )
        self.batch_size = self.options.batch_size or auto_batch_size(
            self.predictor, self.spec.in_channels, self.grid.window
        )
        self.tags = _provenance(self.spec, self.grid, self.options, None, self.gsd)
        if self.checkpoint is not None:
            self.tags |= {"CHECKPOINT": self.checkpoint.name, "CHECKPOINT_SHA256": self.sha256}
        self.expected = {k: str(v) for k, v in self.tags.items()}

    def check_resumable(self) -> None:
        """Refuse, before any work, tiles done with other settings (unless ``overwrite``)."""
        if self.options.overwrite:
            return
        for tile in self.mosaic.tiles:
            paths = tile_paths(self.out_dir, tile, self.options)
            if tile_state(paths, self.expected) == "different":
                raise InputError(
                    paths.classes,
                    "was predicted with another checkpoint or other options (or is incomplete); "
                    "use --overwrite to predict it again",
                )

    def tile_outputs(self, tile: Tile) -> list[Path]:
        """Every file a tile's prediction writes, the class raster first."""
        paths = tile_paths(self.out_dir, tile, self.options)
        files = [p for _, p in paths.items()]
        files += [Path(f"{paths.classes}.aux.xml"), paths.classes.with_suffix(".qml")]
        return files + self.follow_up_paths(paths.classes)

    def run_tile(self, tile: Tile) -> PredictionResult | None:
        """Predict one tile unless it is done; return its result, or ``None`` when skipped."""
        paths = tile_paths(self.out_dir, tile, self.options)
        state = tile_state(paths, self.expected)
        if state == "done" and not self.options.overwrite:
            return None
        with output_set(self.tile_outputs(tile), overwrite=True):
            result = self._predict(tile, paths)
            if self.follow_up is not None:
                self.follow_up(result)
        return result

    def _context_vrt(self, origin: tuple[int, int], grid: WindowGrid) -> Path:
        """Write a VRT of the mosaic's part at *origin* of the size of *grid*, from the tiles in it."""
        top, left = origin
        near = [
            Tile(t.path, Window(t.window.col_off - left, t.window.row_off - top,
                                t.window.width, t.window.height))
            for t in self.mosaic.tiles
            if t.window.col_off < left + grid.width and t.window.col_off + t.window.width > left
            and t.window.row_off < top + grid.height and t.window.row_off + t.window.height > top
        ]  # fmt: skip
        part = replace(
            self.mosaic,
            width=grid.width,
            height=grid.height,
            transform=self.mosaic.transform @ Affine.translation(left, top),
            tiles=tuple(near),
        )
        path = self.out_dir / f".mosaic.{uuid.uuid4().hex[:12]}.context.vrt"
        path.write_text(vrt_xml(part, self.out_dir))
        return path

    def _predict(self, tile: Tile, paths: OutputPaths) -> PredictionResult:
        start = time.perf_counter()
        w = tile.window
        origin, grid = self.grid.part(int(w.row_off), int(w.col_off), int(w.height), int(w.width))
        vrt = self._context_vrt(origin, grid)
        values = ValueOptions(statistics=self.statistics)
        transform = self.mosaic.transform @ Affine.translation(w.col_off, w.row_off)
        try:
            with (
                rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB << 20, GDAL_PAM_ENABLED="NO"),
                warnings.catch_warnings(),
            ):
                # A DSM off the mosaic's grid was reported once, by prepare().
                warnings.filterwarnings("ignore", ".*not on the grid of .*; warping it")
                with SceneReader(vrt, self.spec, self.dsm, values) as reader:
                    writer = PredictionWriter(
                        paths,
                        Grid(self.mosaic.crs, transform, int(w.width), int(w.height)),
                        self.spec.classes,
                        self.tags
                        | {"MOSAIC_WINDOW": f"{w.col_off},{w.row_off},{w.width},{w.height}"},
                    )
                    cropped = _Cropped(
                        writer, int(w.row_off) - origin[0], int(w.col_off) - origin[1]
                    )
                    try:
                        windows_run, stages = _stream(
                            reader, grid, self.predictor, cropped, self.batch_size, False
                        )
                        written = writer.publish(overwrite=True)
                    finally:
                        writer.close()
        finally:
            vrt.unlink(missing_ok=True)
        outputs = {**written, "style": _write_style(paths.classes, self.spec)}
        return PredictionResult(
            scene=tile.path,
            outputs=outputs,
            spec=self.spec,
            width=int(w.width),
            height=int(w.height),
            windows=len(grid),
            windows_run=windows_run,
            seconds=time.perf_counter() - start,
            publish_seconds=writer.publish_seconds,
            stages=stages,
        )

    def run(self, workers: Workers, keep_going: bool, progress: bool) -> MosaicRun:
        """Predict the tiles this process claims; return what it did."""
        run = MosaicRun()
        start = time.perf_counter()
        tiles = self.mosaic.tiles
        bar = tqdm(total=len(tiles), unit="tile", disable=not progress or workers.rank != 0)
        for index in workers.claim(len(tiles)):
            if workers.count(ABORT_KEY):
                break
            tile = tiles[index]
            try:
                result = self.run_tile(tile)
            except GeoctError as e:
                run.failed[str(tile.path)] = str(e)
                if not keep_going:
                    workers.increment(ABORT_KEY)
                result = None
            else:
                if result is None:
                    run.skipped += 1
                else:
                    run.done += 1
                    run.pixels += result.width * result.height
                    run.results.append(result)
            bar.n = workers.increment(DONE_KEY)
            bar.refresh()
        run.seconds = time.perf_counter() - start
        bar.close()
        return run

    def publish_mosaic(self) -> dict[str, Path]:
        """Write ``mosaic.classes.vrt`` and its QGIS style (and ``mosaic.confidence.vrt``) over the done tiles."""
        done = [
            t
            for t in self.mosaic.tiles
            if tile_paths(self.out_dir, t, self.options).classes.exists()
        ]
        if not done:
            return {}
        sub = replace(self.mosaic, tiles=tuple(done))
        colors = {i: (*c, 255) for i, c in enumerate(self.spec.classes.colors)}
        outputs = {}
        layers = {"classes": (CLASS_NODATA, colors, self.spec.classes.names)}
        if self.options.confidence:
            layers["confidence"] = (CONFIDENCE_NODATA, None, ())
        for kind, (nodata, colormap, names) in layers.items():
            files = [getattr(tile_paths(self.out_dir, t, self.options), kind) for t in done]
            path = self.out_dir / f"mosaic.{kind}.vrt"
            with atomic_output(path, overwrite=True) as tmp:
                tmp.write_text(
                    vrt_xml(
                        sub,
                        self.out_dir,
                        files,
                        count=1,
                        dtype="uint8",
                        nodata=nodata,
                        colormap=colormap,
                        categories=names,
                    )
                )
            outputs[kind] = path
        outputs["style"] = _write_style(outputs["classes"], self.spec)
        return outputs


def summary(runs: list[MosaicRun], total: int, outputs: dict[str, Path]) -> str:
    """Return the one-paragraph summary of a mosaic run over all processes."""
    done = sum(r.done for r in runs)
    skipped = sum(r.skipped for r in runs)
    failed = sum(len(r.failed) for r in runs)
    pixels = sum(r.pixels for r in runs)
    seconds = max((r.seconds for r in runs), default=0.0)
    rate = pixels / 1e6 / max(seconds, 1e-9)
    per = ", ".join(f"rank {i}: {r.megapixels_per_second:.3g}" for i, r in enumerate(runs))
    files = ", ".join(str(p) for p in outputs.values())
    return (
        f"mosaic of {total} tiles: {done} predicted, {skipped} skipped (already done), "
        f"{failed} failed; {pixels / 1e6:.2f} MP in {seconds:.1f} s ({rate:.3g} MP/s overall; "
        f"{per} MP/s); wrote {files or 'no mosaic layer'}."
    )
