"""Writing blended predictions as Cloud Optimized GeoTIFFs.

Finished uint8 blocks (finalised on the model's device, see
:mod:`~geoct.predict.device_blend`) are written while prediction runs into
uncompressed tiled GeoTIFFs staged in the output folder, as whole tiles without
GDAL (:mod:`~geoct.predict.staging`). Their overviews (``mode`` for classes,
``average`` for the others) are built from the rows as they are written, into
overview levels the staging files are created with (:mod:`~geoct.predict.overviews`,
GDAL's result exactly); GDAL builds them when publishing only for a staging file
that had to be written through GDAL. Publishing copies each staged file with its
overviews to a COG (DEFLATE, 512 px tiles, BigTIFF if needed, multi-threaded),
under a temporary name that is renamed.

Outputs, all uint8 on the scene's exact grid (CRS, transform, shape):

* classes: class id per pixel, nodata 255; palette colour table with the
  checkpoint's colours; class names as GDAL category names and as a raster
  attribute table (value, class name, colour) in the ``.aux.xml``, so QGIS and
  ArcGIS show named classes without the style file; names also in the
  ``CLASS_NAMES`` tag; ``mode`` overviews.
* confidence: ``round(255 * max softmax probability)``, nodata 0 (a valid
  pixel is always >= ``255 / K`` > 0); scale 1/255; ``average`` overviews.
* probabilities: one band per class, ``min(round(255 * p), 254)`` (sums to about
  255; only p >= 0.998 is clipped), band descriptions are the class names, nodata
  255 (a nodata value rather than an internal mask, which QGIS lists as an extra
  unnamed band); ``average`` overviews.
"""

import contextlib
import json
import math
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling

from ..classes import ClassTable
from ..raster_io import atomic_output
from .overviews import OverviewPyramid, OverviewThread, Resample
from .overviews import average as overview_average
from .overviews import mode as overview_mode
from .staging import GdalStager, SharedLock, TileStager

#: Nodata value of the class raster.
CLASS_NODATA = 255

#: Nodata value of the confidence raster.
CONFIDENCE_NODATA = 0

#: Nodata value of the probability raster; valid probabilities are clipped below it.
PROBABILITY_NODATA = 255

#: Smallest overview size: overviews are built until the coarsest is at most this wide.
MIN_OVERVIEW_SIZE = 256

#: Tile size of the staged overviews built while streaming: each level holds one row
#: of tiles in memory while it fills (the COG has 512 px tiles throughout).
OVERVIEW_TILE = 256

#: COG creation options shared by every output.
COG_OPTIONS: dict[str, str] = {
    "COMPRESS": "DEFLATE",
    "BLOCKSIZE": "512",
    "BIGTIFF": "IF_SAFER",
}


@dataclass(frozen=True)
class OutputPaths:
    """Files written for one scene.

    Attributes:
        classes: Class raster.
        confidence: Confidence raster, if requested.
        probabilities: Per-class probability raster, if requested.
    """

    classes: Path
    confidence: Path | None = None
    probabilities: Path | None = None

    @classmethod
    def beside(
        cls, scene: Path, output: Path | None, confidence: bool, probabilities: bool
    ) -> "OutputPaths":
        """Return default paths ``SCENE.classes.tif`` etc., or ones derived from *output*."""
        classes = output or scene.with_name(f"{scene.stem}.classes.tif")
        stem = classes.name.removesuffix(".tif").removesuffix(".classes")
        return cls(
            classes=classes,
            confidence=classes.with_name(f"{stem}.confidence.tif") if confidence else None,
            probabilities=classes.with_name(f"{stem}.probabilities.tif") if probabilities else None,
        )

    def items(self) -> list[tuple[str, Path]]:
        """Return ``(kind, path)`` of each requested output."""
        pairs = [("classes", self.classes), ("confidence", self.confidence)]
        pairs.append(("probabilities", self.probabilities))
        return [(k, p) for k, p in pairs if p is not None]


@dataclass(frozen=True)
class Grid:
    """The exact pixel grid of a scene.

    Attributes:
        crs: Coordinate reference system.
        transform: Affine pixel-to-CRS transform, copied as is.
        width: Columns.
        height: Rows.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int


def overview_count(width: int, height: int) -> int:
    """Number of 2x overview levels until the coarsest fits :data:`MIN_OVERVIEW_SIZE`."""
    return max(0, math.ceil(math.log2(max(width, height) / MIN_OVERVIEW_SIZE)))


def _bands(rows: np.ndarray) -> np.ndarray:
    """``(bands, h, w)`` of rows ``(h, w)`` or ``(h, w, bands)``."""
    return rows[None] if rows.ndim == 2 else rows.transpose(2, 0, 1)


def _rat_field(index: int, name: str, kind: int, usage: int) -> str:
    return (
        f'      <FieldDefn index="{index}">\n        <Name>{name}</Name>\n'
        f"        <Type>{kind}</Type>\n        <Usage>{usage}</Usage>\n      </FieldDefn>\n"
    )


def attribute_table_xml(classes: ClassTable) -> str:
    """Return a GDAL raster attribute table of *classes*: value, class name and colour.

    Field types and usages are GDAL's ``GFT_Integer``/``GFT_String`` and
    ``GFU_MinMax``, ``GFU_Name``, ``GFU_Red``/``Green``/``Blue``.
    """
    fields = [("Value", 0, 5), ("Class", 2, 2), ("Red", 0, 6), ("Green", 0, 7), ("Blue", 0, 8)]
    defs = "".join(_rat_field(i, *f) for i, f in enumerate(fields))
    rows = "".join(
        f'      <Row index="{i}"><F>{i}</F><F>{escape(name)}</F>'
        f"<F>{r}</F><F>{g}</F><F>{b}</F></Row>\n"
        for i, (name, (r, g, b)) in enumerate(zip(classes.names, classes.colors, strict=True))
    )
    return (
        '    <GDALRasterAttributeTable tableType="thematic">\n'
        f"{defs}{rows}    </GDALRasterAttributeTable>\n"
    )


def category_names_xml(classes: ClassTable) -> str:
    """Return a GDAL PAM document giving band 1 the category names and attribute table of *classes*."""
    cats = "".join(f"      <Category>{escape(n)}</Category>\n" for n in classes.names)
    return (
        '<PAMDataset>\n  <PAMRasterBand band="1">\n    <CategoryNames>\n'
        f"{cats}    </CategoryNames>\n{attribute_table_xml(classes)}"
        "  </PAMRasterBand>\n</PAMDataset>\n"
    )


class PredictionWriter:
    """Receives finished uint8 blocks and publishes the output COGs."""

    #: Overview resampling of each output.
    OVERVIEW_RESAMPLING = {
        "classes": Resampling.mode,
        "confidence": Resampling.average,
        "probabilities": Resampling.average,
    }

    #: Nodata value of each output.
    NODATA = {
        "classes": CLASS_NODATA,
        "confidence": CONFIDENCE_NODATA,
        "probabilities": PROBABILITY_NODATA,
    }

    #: Writers of the staging files, by output kind (see :meth:`begin`).
    tiles: dict[str, TileStager | GdalStager] | None = None

    #: Seconds spent publishing (overviews and COG copies).
    publish_seconds: float = 0.0

    #: Outputs whose overviews are built while writing (:mod:`~geoct.predict.overviews`),
    #: with their resampling; the others' are built by GDAL when publishing.
    STREAMED_OVERVIEWS: dict[str, Callable[[int], Resample]] = {
        "classes": overview_mode,
        "confidence": overview_average,
        "probabilities": overview_average,
    }

    #: Overviews built while writing, by output kind (see :meth:`begin`).
    pyramids: dict[str, OverviewThread] | None = None

    #: Writers of those overview levels, finest first.
    overview_tiles: tuple[TileStager, ...] | list[TileStager] = ()

    def __init__(
        self, paths: OutputPaths, grid: Grid, classes: ClassTable, tags: dict[str, Any]
    ) -> None:
        """Create the staging GeoTIFFs beside the outputs.

        Args:
            paths: Output files.
            grid: Scene grid.
            classes: Class names and colours.
            tags: Provenance metadata written into every output.
        """
        self.paths = paths
        self.grid = grid
        self.classes = classes
        self.tags = {k: str(v) for k, v in tags.items()}
        levels = overview_count(grid.width, grid.height)
        #: Overview decimation factors of every output.
        self.factors = [2**i for i in range(1, levels + 1)]
        self.stages: dict[str, tuple[Path, rasterio.io.DatasetWriter]] = {}
        try:
            for kind, path in paths.items():
                stage = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.stage.tif")
                self.stages[kind] = (stage, self._create(kind, stage))
        except BaseException:
            self.close()
            raise

    def _create(self, kind: str, stage: Path) -> rasterio.io.DatasetWriter:
        k = self.classes.num_classes
        profile = {
            "driver": "GTiff",
            "dtype": "uint8",
            "count": k if kind == "probabilities" else 1,
            "crs": self.grid.crs,
            "transform": self.grid.transform,
            "width": self.grid.width,
            "height": self.grid.height,
            "tiled": True,
            "blockxsize": 512,
            "blockysize": 512,
            "interleave": "pixel",
            "photometric": "MINISBLACK",
            "BIGTIFF": "IF_NEEDED",
            "nodata": self.NODATA[kind],
        }
        dst = rasterio.open(stage, "w", **profile)
        if kind in self.STREAMED_OVERVIEWS and self.factors:
            with rasterio.Env(GDAL_TIFF_OVR_BLOCKSIZE=str(OVERVIEW_TILE)):
                dst.build_overviews(self.factors, Resampling.nearest)
        dst.update_tags(**self.tags)
        names = self.classes.names
        if kind == "classes":
            dst.write_colormap(1, self._colormap())
            dst.set_band_description(1, "class")
            dst.update_tags(CLASS_NAMES=json.dumps(list(names)))
            dst.update_tags(1, **{f"CLASS_{i}": n for i, n in enumerate(names)})
        elif kind == "confidence":
            dst.set_band_description(1, "confidence")
            dst.scales = (1 / 255,)
        else:
            for b, name in enumerate(names, start=1):
                dst.set_band_description(b, name)
            dst.scales = (1 / 255,) * k
            dst.update_tags(CLASS_NAMES=json.dumps(list(names)))
        return dst

    def _colormap(self) -> dict[int, tuple[int, int, int, int]]:
        cmap = {i: (*c, 255) for i, c in enumerate(self.classes.colors)}
        cmap[CLASS_NODATA] = (0, 0, 0, 0)
        return cmap

    def begin(self) -> Callable[[], AbstractContextManager] | None:
        """Close the GDAL staging datasets (writing their metadata) and prepare tile writes.

        Call before the scene is read in other threads.

        Returns:
            ``None`` when every staging file takes direct tile writes, else the
            shared side of the lock that each GDAL read must hold while the
            writer uses GDAL (see :mod:`~geoct.predict.staging`).
        """
        for _, dst in self.stages.values():
            dst.close()
        for kind in self.STREAMED_OVERVIEWS.keys() & self.stages.keys():
            self._name_overview_resampling(kind)
        lock = SharedLock()
        self.tiles = {
            kind: TileStager.open(stage) or GdalStager(stage, lock)
            for kind, (stage, _) in self.stages.items()
        }
        self._stream_overviews()
        gdal = any(isinstance(t, GdalStager) for t in self.tiles.values())
        return lock.shared if gdal else None

    def _name_overview_resampling(self, kind: str) -> None:
        """Record the real resampling in the overview levels the staging file was created with.

        GDAL notes the method it built them with (``nearest``, over the empty image) in
        the levels' band metadata where it notes one (several bands), and the COG
        driver publishes it as ``OVERVIEW_RESAMPLING``.
        """
        stage, method = self.stages[kind][0], self.OVERVIEW_RESAMPLING[kind].name.upper()
        with rasterio.Env(GTIFF_SRS_SOURCE="GEOKEYS"):
            for level in range(len(self.factors)):
                with rasterio.open(stage, "r+", OVERVIEW_LEVEL=level) as ovr:
                    if "RESAMPLING" not in ovr.tags(1):
                        return
                    for band in ovr.indexes:
                        ovr.update_tags(band, RESAMPLING=method)

    def _stream_overviews(self) -> None:
        """Build the overviews of :attr:`STREAMED_OVERVIEWS` from the rows as they are written.

        Their staging files were given overview levels when created; each level's
        tiles are written like the image's (see :mod:`~geoct.predict.overviews`).
        """
        self.pyramids, self.overview_tiles = {}, []
        for kind, resample in self.STREAMED_OVERVIEWS.items():
            image = self.tiles.get(kind)
            if not self.factors or not isinstance(image, TileStager):
                continue
            stage = self.stages[kind][0]
            levels = [TileStager.open(stage, overview=k) for k in range(len(self.factors))]
            self.overview_tiles += [level for level in levels if level is not None]
            if not all(levels):
                continue
            pyramid = OverviewPyramid(
                (image.height, image.width),
                [(level.height, level.width) for level in levels],
                resample(self.NODATA[kind]),
                [
                    lambda row, rows, level=level: level.write(row, 0, _bands(rows))
                    for level in levels
                ],
            )
            self.pyramids[kind] = OverviewThread(pyramid)
            image.on_rows = self.pyramids[kind].push

    def write(self, row: int, col: int, bands: dict[str, np.ndarray]) -> None:
        """Write one finished block of every output into the staging files.

        Args:
            row: Top row of the block in the scene.
            col: Left column of the block in the scene.
            bands: Output kind to its uint8 ``(h, w)`` or ``(bands, h, w)`` block
                (see :func:`~geoct.predict.device_blend.finalise`).
        """
        if self.tiles is None:
            self.begin()
        for kind, stager in self.tiles.items():
            data = bands[kind]
            stager.write(row, col, data[None] if data.ndim == 2 else data)

    def publish(self, overwrite: bool) -> dict[str, Path]:
        """Build overviews in the staging files and copy each to its output path as a COG.

        The staging files' CRS is read from their GeoKeys (``GTIFF_SRS_SOURCE``):
        GDAL wrote them from the scene's CRS, and checking the keys against the EPSG
        database took about 20 ms of each copy, most of a small scene's publishing.

        Args:
            overwrite: Whether existing outputs may be replaced.

        Returns:
            Output kind to written file, including the ``classes_aux`` sidecar.
        """
        start = time.perf_counter()
        if self.tiles is None:
            self.begin()
        for pyramid in (self.pyramids or {}).values():
            pyramid.finish()
        stagers = [*self.tiles.values(), *self.overview_tiles]
        for stager in stagers:
            stager.close()
        if not all(stager.complete for stager in stagers):
            raise RuntimeError("prediction stopped before every output tile was written")
        written = {}
        factors = self.factors
        streamed = set(self.pyramids or ())
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GTIFF_SRS_SOURCE="GEOKEYS"):
            for kind, (stage, _) in self.stages.items():
                if factors and kind not in streamed:
                    with rasterio.open(stage, "r+") as dst:
                        dst.build_overviews(factors, self.OVERVIEW_RESAMPLING[kind])
                path = getattr(self.paths, kind)
                with atomic_output(path, overwrite) as tmp:
                    rasterio.shutil.copy(
                        stage,
                        tmp,
                        driver="COG",
                        OVERVIEWS="FORCE_USE_EXISTING" if factors else "NONE",
                        NUM_THREADS="ALL_CPUS",
                        **COG_OPTIONS,
                    )
                    if kind == "classes":
                        aux = Path(f"{tmp}.aux.xml")
                        aux.write_text(category_names_xml(self.classes))
                written[kind] = path
                if kind == "classes":
                    written["classes_aux"] = Path(f"{path}.aux.xml")
        self.publish_seconds = time.perf_counter() - start
        return written

    def close(self) -> None:
        """Close and delete the staging files."""
        for pyramid in (self.pyramids or {}).values():
            pyramid.close()
        for stager in [*(self.tiles or {}).values(), *self.overview_tiles]:
            stager.close()
        for stage, dst in self.stages.values():
            with contextlib.suppress(Exception):
                dst.close()
            for leftover in (stage, Path(f"{stage}.aux.xml"), Path(f"{stage}.msk")):
                leftover.unlink(missing_ok=True)
        self.stages = {}
