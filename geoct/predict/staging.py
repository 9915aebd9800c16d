"""Writing finished uint8 blocks into the staging GeoTIFFs without GDAL on the hot path.

GDAL's block cache is shared by every dataset of the process: when it is full, a
thread reading the scene evicts, and writes, blocks that another thread left dirty
in a staging file, while that thread may be writing the same file; writes are lost
(seen with GDAL 3.12: several reader threads, three staging files). So while the
reader threads run, no GDAL dataset may hold dirty blocks.

The staging files are created by GDAL (uncompressed, tiled, metadata written) and
closed before prediction starts: GDAL then places every tile at a fixed offset.
:class:`TileStager` assembles finished rows into whole tiles and writes each tile
once with ``os.pwrite`` at its offset, so the readers use GDAL alone, with no lock;
it writes an overview level of the file the same way, and hands each completed row
on to the overview pyramid built from it (:mod:`~geoct.predict.overviews`).
A staging file of another layout (compressed, sparse, ...) is written by
:class:`GdalStager` through GDAL instead, each write under the exclusive side of a
:class:`SharedLock` whose shared side every read holds, and re-opening the file so
that its blocks are flushed before reads resume.
"""

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window


class SharedLock:
    """A lock with a shared side (GDAL reads) and an exclusive side (GDAL writes).

    Writers are preferred: once one waits, new readers wait too.
    """

    def __init__(self) -> None:
        """Create an unlocked lock."""
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the shared side (any number of holders, no exclusive holder)."""
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the exclusive side (no other holder of either side)."""
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class TileStager:
    """Writes whole uint8 tiles straight into an uncompressed tiled GeoTIFF made by GDAL."""

    #: Receives the raster's rows as they are complete, ``(row, (h, width))`` (``(h, width,
    #: bands)`` for several bands), top to bottom (the overview pyramids), or ``None``.
    on_rows: Callable[[int, np.ndarray], None] | None = None

    def __init__(self, path: Path, offsets: np.ndarray, shape: tuple[int, int, int], tile: int):
        """Use :meth:`open`."""
        self.path = path
        self.offsets = offsets
        self.count, self.height, self.width = shape
        self.tile = tile
        self.fd = os.open(path, os.O_RDWR)
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._written = 0
        self._handed = 0

    @classmethod
    def open(cls, path: Path, overview: int | None = None) -> "TileStager | None":
        """Return a stager for *path*, or ``None`` if its layout does not allow direct writes.

        Direct writes need uint8, square tiles, no compression, pixel interleaving
        (or one band) and every tile allocated with its full size. Only the layout
        is read, so the CRS is taken from the GeoKeys, not looked up.

        Args:
            path: The staging file.
            overview: Write this overview level (0 the finest) instead of the image.
        """
        level = {} if overview is None else {"OVERVIEW_LEVEL": overview}
        with rasterio.Env(GTIFF_SRS_SOURCE="GEOKEYS"), rasterio.open(path, **level) as src:
            tile = src.block_shapes[0][0]
            simple = (
                src.compression is None
                and set(src.block_shapes) == {(tile, tile)}
                and set(src.dtypes) == {"uint8"}
                and (src.count == 1 or src.interleaving.name.lower() == "pixel")
            )
            if not simple:
                return None
            rows, cols = -(-src.height // tile), -(-src.width // tile)
            offsets = np.zeros((rows, cols), dtype=np.int64)
            size = str(tile * tile * src.count)
            for r in range(rows):
                for c in range(cols):
                    if src.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1) != size:
                        return None
                    offsets[r, c] = int(src.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
            shape = (src.count, src.height, src.width)
        if not offsets.all():
            return None
        return cls(path, offsets, shape, tile)

    def _tile_row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row of tiles *r*: its ``(tile, columns, count)`` pixels, pixels filled per tile and per row."""
        if r not in self._rows:
            cols = self.offsets.shape[1]
            band = np.zeros((self.tile, cols * self.tile, self.count), dtype=np.uint8)
            self._rows[r] = band, np.zeros(cols, dtype=np.int64), np.zeros(self.tile, np.int64)
        return self._rows[r]

    def _area(self, r: int, c: int) -> int:
        t = self.tile
        return min(t, self.height - r * t) * min(t, self.width - c * t)

    def write(self, row: int, col: int, data: np.ndarray) -> None:
        """Place ``(count, h, w)`` uint8 *data* at *row*, *col*; write the tiles it completes.

        Every pixel must be written exactly once.
        """
        t = self.tile
        _, h, w = data.shape
        for r in range(row // t, (row + h - 1) // t + 1):
            r0, r1 = max(row, r * t), min(row + h, (r + 1) * t)
            band, filled, row_filled = self._tile_row(r)
            band[r0 - r * t : r1 - r * t, col : col + w] = data[:, r0 - row : r1 - row].transpose(
                1, 2, 0
            )
            row_filled[r0 - r * t : r1 - r * t] += w
            for c in range(col // t, (col + w - 1) // t + 1):
                filled[c] += (r1 - r0) * (min(col + w, (c + 1) * t) - max(col, c * t))
                if filled[c] == self._area(r, c):
                    tile = np.ascontiguousarray(band[:, c * t : (c + 1) * t])
                    os.pwrite(self.fd, tile, int(self.offsets[r, c]))
                    self._written += 1
            if self.on_rows is not None:
                self._hand_on_rows()
            if (filled == [self._area(r, c) for c in range(len(filled))]).all():
                del self._rows[r]

    def _hand_on_rows(self) -> None:
        """Give :attr:`on_rows` the raster's rows now complete, in order."""
        t = self.tile
        while self._handed < self.height and self._handed // t in self._rows:
            band, _, row_filled = self._rows[self._handed // t]
            lo, n = self._handed % t, min(t, self.height - self._handed // t * t)
            done = np.flatnonzero(row_filled[lo:n] != self.width)
            hi = lo + int(done[0]) if len(done) else n
            if hi == lo:
                return
            rows = band[lo:hi, : self.width]
            self.on_rows(self._handed, rows[:, :, 0] if self.count == 1 else rows)
            self._handed += hi - lo

    @property
    def complete(self) -> bool:
        """Whether every tile has been written."""
        return self._written == self.offsets.size

    def close(self) -> None:
        """Close the file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._rows = {}


class GdalStager:
    """Writes blocks through GDAL, each write exclusive of all reads and flushed."""

    def __init__(self, path: Path, lock: SharedLock) -> None:
        """Write *path* under the exclusive side of *lock*."""
        self.path = path
        self.lock = lock
        self.complete = True

    def write(self, row: int, col: int, data: np.ndarray) -> None:
        """Write ``(count, h, w)`` uint8 *data* at *row*, *col*."""
        window = Window(col, row, data.shape[2], data.shape[1])
        with self.lock.exclusive(), rasterio.open(self.path, "r+") as dst:
            dst.write(data, window=window)

    def close(self) -> None:
        """Nothing to release."""
