"""A mosaic of tiles cut from one generated scene, for the ``--mosaic`` tests.

Run as a script to write an example: ``python tests/data/mosaic/data.py OUT_DIR``.
"""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

_PREDICT = Path(__file__).resolve().parents[1] / "predict" / "data.py"
_spec = importlib.util.spec_from_file_location("predict_fixture_data_for_mosaic", _PREDICT)
predict = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(predict)
COLOURS, CRS, class_map = predict.COLOURS, predict.CRS, predict.class_map

#: Tile size and the sizes of the last column and row of tiles (odd, smaller).
TILE, LAST_COL, LAST_ROW = 48, 29, 35

#: Tile grid.
ROWS, COLS = 3, 3

#: The tile left out (a hole), and the tile with a nodata patch.
MISSING, WITH_NODATA = (2, 0), (0, 1)

#: North-up 0.05 m grid of the whole mosaic.
TRANSFORM = Affine(0.05, 0.0, 368000.0, 0.0, -0.05, 5808000.0)


def tile_windows() -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """``(row, col) -> (row_off, col_off, height, width)`` of every tile in mosaic pixels."""
    heights = [TILE] * (ROWS - 1) + [LAST_ROW]
    widths = [TILE] * (COLS - 1) + [LAST_COL]
    return {
        (i, j): (i * TILE, j * TILE, heights[i], widths[j])
        for i in range(ROWS)
        for j in range(COLS)
    }


def mosaic_shape() -> tuple[int, int]:
    """Rows and columns of the whole mosaic."""
    return TILE * (ROWS - 1) + LAST_ROW, TILE * (COLS - 1) + LAST_COL


def write_tiles(folder: Path, seed: int = 0) -> list[Path]:
    """Write the tiles (all but :data:`MISSING`) as 4-band uint8 GeoTIFFs; return their paths."""
    height, width = mosaic_shape()
    scene = COLOURS[class_map(height, width, seed)].transpose(2, 0, 1).copy()
    paths = []
    for (i, j), (r, c, h, w) in tile_windows().items():
        if (i, j) == MISSING:
            continue
        pixels = scene[:, r : r + h, c : c + w].copy()
        nodata = None
        if (i, j) == WITH_NODATA:
            pixels[:, 5:20, 10:30] = 0
            nodata = 0
        path = folder / f"tile_{i}{j}.tif"
        profile = {
            "driver": "GTiff",
            "width": w,
            "height": h,
            "count": 4,
            "dtype": "uint8",
            "crs": CRS,
            "transform": TRANSFORM @ Affine.translation(c, r),
            "nodata": nodata,
            "photometric": "MINISBLACK",
        }
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(pixels)
        paths.append(path)
    return paths


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    print("\n".join(map(str, write_tiles(out))))
    print(np.prod(mosaic_shape()), "mosaic pixels")
