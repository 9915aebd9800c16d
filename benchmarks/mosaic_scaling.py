"""Mosaic prediction on 1 and 2 processes: wall time, speed-up and the cost of halos.

Writes a mosaic of ``--grid`` x ``--grid`` generated tiles and a tiny checkpoint,
then runs ``geoct predict TILES --mosaic OUT`` once as a single process and once
under ``torchrun --nproc-per-node 2`` (one torch thread each), and checks that
both give identical class rasters. The halo cost is the number of windows the
tiles compute together over the windows of one-scene prediction of the mosaic
(windows touching a tile border are computed for every tile they touch).

    python benchmarks/mosaic_scaling.py --grid 4 --tile 512
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data" / "predict"))
from data import COLOURS, CRS, class_map, save_checkpoint  # noqa: E402

from geoct.predict.tiles import mosaic_grid  # noqa: E402
from geoct.predict.windows import WindowGrid  # noqa: E402


def write_tiles(folder: Path, grid: int, tile: int) -> list[Path]:
    scene = COLOURS[class_map(grid * tile, grid * tile, 0)].transpose(2, 0, 1)
    transform = Affine(0.05, 0, 368000.0, 0, -0.05, 5808000.0)
    paths = []
    for i in range(grid):
        for j in range(grid):
            path = folder / f"tile_{i}_{j}.tif"
            profile = dict(driver="GTiff", width=tile, height=tile, count=4, dtype="uint8",
                           crs=CRS, transform=transform @ Affine.translation(j * tile, i * tile),
                           tiled=True, blockxsize=256, blockysize=256, photometric="MINISBLACK")  # fmt: skip
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(scene[:, i * tile : (i + 1) * tile, j * tile : (j + 1) * tile])
            paths.append(path)
    return paths


def halo_cost(paths: list[Path], window: int) -> float:
    mosaic = mosaic_grid(paths)
    grid = WindowGrid(mosaic.height, mosaic.width, (window, window), (window // 4,) * 2)
    per_tile = 0
    for tile in mosaic.tiles:
        w = tile.window
        per_tile += len(grid.part(w.row_off, w.col_off, w.height, w.width)[1])
    return per_tile / len(grid)


def run(
    runner: list[str], paths: list[Path], out: Path, ckpt: Path, window: int
) -> tuple[float, float]:
    """Return the command's wall time and its prediction time (from the summary line)."""
    args = [*runner, "predict", *map(str, paths), "--mosaic", str(out), "--checkpoint", str(ckpt),
            "--window", str(window), "--device", "cpu", "--quiet"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    proc = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    predicting = float(re.search(r"MP in ([0-9.]+) s", proc.stdout).group(1))
    return time.perf_counter() - start, predicting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, default=4, help="tiles per side")
    parser.add_argument("--tile", type=int, default=512, help="tile side in pixels")
    parser.add_argument("--window", type=int, default=64, help="window side in pixels")
    parser.add_argument("--work", type=Path, default=Path("/tmp/geoct-mosaic-bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    tiles = args.work / "tiles"
    tiles.mkdir(exist_ok=True)
    paths = write_tiles(tiles, args.grid, args.tile)
    ckpt = save_checkpoint(args.work / "tiny.ckpt")
    python = [sys.executable, "-m", "geoct"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", "2", "-m", "geoct"]  # fmt: skip
    (one, one_predict), (two, two_predict) = (
        run(python, paths, args.work / "one", ckpt, args.window),
        run(torchrun, paths, args.work / "two", ckpt, args.window),
    )
    same = all(
        np.array_equal(
            rasterio.open(args.work / "one" / f"{p.stem}.classes.tif").read(),
            rasterio.open(args.work / "two" / f"{p.stem}.classes.tif").read(),
        )
        for p in paths
    )
    results = {
        "tiles": len(paths),
        "tile_px": args.tile,
        "window": args.window,
        "one_process_s": one,
        "two_processes_s": two,
        "speed_up": one / two,
        "one_process_predict_s": one_predict,
        "two_processes_predict_s": two_predict,
        "predict_speed_up": one_predict / two_predict,
        "halo_cost": halo_cost(paths, args.window),
        "identical": same,
    }
    header = ["tiles", "tile px", "window", "1 process (s)", "2 processes (s)", "speed-up",
              "predicting only: 1 / 2 processes", "halo cost", "identical"]  # fmt: skip
    row = [len(paths), args.tile, args.window, f"{one:.1f}", f"{two:.1f}", f"{one / two:.2f}x",
           f"{one_predict:.1f} s / {two_predict:.1f} s = {one_predict / two_predict:.2f}x",
           f"{results['halo_cost']:.3f}x", same]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    print("| " + " | ".join(map(str, row)) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "mosaic_scaling.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
