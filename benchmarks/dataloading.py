"""Patch loading speed: TorchGeo's default path vs geoct's datasets vs raw rasterio reads.

Reads the same random 512 px windows (RGBIR + DSM image, label mask) three ways, in one
process:

* ``torchgeo``: plain ``RasterDataset`` subclasses with no overrides, ``ortho & dsm & mask``;
* ``geoct``: the datasets :class:`geoct.datasets.PotsdamDataModule` trains on;
* ``rasterio``: windowed ``src.read`` of the three files with handles kept open.

It first checks that all three return identical pixels, then times them on the
recipe's tiled output and on a strip-layout copy (the official files' layout).
GDAL's block cache is kept small so repeated windows do not turn into memory copies.

    python benchmarks/dataloading.py [--size 6000] [--patches 200] [--data DIR]
"""

import os

os.environ.setdefault("GDAL_CACHEMAX", "64")

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import WindowError
from rasterio.windows import Window, from_bounds
from torchgeo.datasets import RasterDataset

from geoct.compat import RandomPatchSampler
from geoct.datasets import PotsdamDataModule, read_dataset_json
from geoct.datasets.recipes import prepare_synthetic


class TGOrtho(RasterDataset):
    filename_glob = "*.tif"
    all_bands = ("R", "G", "B", "IR")


class TGDSM(RasterDataset):
    filename_glob = "*.tif"


class TGLabel(RasterDataset):
    filename_glob = "*.tif"
    is_image = False


def strip_copy(root: Path, out: Path) -> Path:
    """Copy a prepared dataset with every raster rewritten uncompressed in strips."""
    shutil.copytree(root, out)
    for path in sorted(out.rglob("*.tif")):
        with rasterio.open(path) as src:
            profile = src.profile
            data = src.read()
        for key in ("blockxsize", "blockysize", "compress", "predictor"):
            profile.pop(key, None)
        profile.update(tiled=False, blockysize=1 if data.dtype == np.float32 else 2)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return out


class RawReader:
    """Windowed rasterio reads of image, DSM and label, handles kept open.

    A window over two adjacent tiles is read from both and pasted together.
    """

    def __init__(self, tiles: list[dict[str, str]]) -> None:
        self.tiles = [
            {k: rasterio.open(v) for k, v in t.items() if k in ("image", "dsm", "label")}
            for t in tiles
        ]

    def read(self, product: str, x: slice, y: slice, fill: float) -> np.ndarray:
        out = None
        for files in self.tiles:
            src = files[product]
            window = from_bounds(x.start, y.start, x.stop, y.stop, src.transform)
            window = window.round_offsets().round_lengths()
            try:
                inside = window.intersection(Window(0, 0, src.width, src.height))
            except WindowError:
                continue
            if inside == window:
                return src.read(window=window)
            if out is None:
                out = np.full((src.count, window.height, window.width), fill, src.dtypes[0])
            r, c = inside.row_off - window.row_off, inside.col_off - window.col_off
            out[:, r : r + inside.height, c : c + inside.width] = src.read(window=inside)
        return out

    def __call__(self, x: slice, y: slice) -> dict[str, np.ndarray]:
        image = self.read("image", x, y, 0)
        dsm = self.read("dsm", x, y, -9999)
        label = self.read("label", x, y, 255)[0]
        return {"image": np.concatenate([image.astype(np.float32), dsm]), "mask": label}


def windows(dataset: object, n: int, size: int, seed: int) -> list[tuple[slice, slice]]:
    sampler = RandomPatchSampler(dataset, size=size, length=n, generator=seed)
    return list(sampler)


def compare(torchgeo_ds: object, geoct_ds: object, raw: RawReader, queries: list) -> dict:
    """Check geoct against raw reads (must be identical) and against TorchGeo's path.

    TorchGeo's merge reads windows whose float bounds are a hair off the pixel grid with
    resampling, so a few pixels may come from a neighbour; that share is reported.
    """
    same_image = same_mask = total = 0
    max_diff = 0.0
    for q in queries:
        a, b, c = torchgeo_ds[q], geoct_ds[q], raw(*q)
        if not np.array_equal(b["image"].numpy(), c["image"]):
            raise AssertionError(f"geoct and rasterio images differ at {q}")
        if not np.array_equal(b["mask"].numpy(), c["mask"].astype(np.int64)):
            raise AssertionError(f"geoct and rasterio masks differ at {q}")
        if a["image"].shape != b["image"].shape:
            raise AssertionError(f"torchgeo and geoct shapes differ at {q}")
        same_image += int((a["image"] == b["image"]).all(0).sum())
        same_mask += int((a["mask"] == b["mask"]).sum())
        total += b["mask"].numel()
        max_diff = max(max_diff, float((a["image"] - b["image"]).abs().max()))
    return {
        "geoct_equals_rasterio": True,
        "torchgeo_identical_image_pixels": same_image / total,
        "torchgeo_identical_mask_pixels": same_mask / total,
        "torchgeo_max_abs_image_diff": max_diff,
    }


def rate(read: Callable[[tuple[slice, slice]], object], queries: list) -> float:
    start = time.perf_counter()
    for q in queries:
        read(q)
    return len(queries) / (time.perf_counter() - start)


def run_layout(root: Path, n: int, patch: int, seed: int, repeats: int) -> dict[str, float]:
    info = read_dataset_json(root)
    tiles = list(info.tiles)
    files = {p: info.tile_files(root, tiles, p) for p in ("image", "dsm", "label")}
    torchgeo_ds = TGOrtho(files["image"]) & TGDSM(files["dsm"]) & TGLabel(files["label"])
    dm = PotsdamDataModule(root, height="dsm", patch_size=patch)
    geoct_ds = dm.build_dataset(tiles)
    raw = RawReader([{p: str(root / f) for p, f in info.tiles[t].items()} for t in tiles])
    queries = windows(geoct_ds, n, patch, seed)

    agreement = compare(torchgeo_ds, geoct_ds, raw, queries[:10])
    print(f"{root.name}: pixel agreement over 10 windows: {agreement}")

    methods = {
        "torchgeo": lambda q: torchgeo_ds[q],
        "geoct": lambda q: geoct_ds[q],
        "rasterio": lambda q: raw(*q),
    }
    result: dict[str, object] = {name: 0.0 for name in methods}
    for _ in range(repeats):
        for name, read in methods.items():
            result[name] = max(result[name], rate(read, queries))
    result["geoct_vs_torchgeo"] = result["geoct"] / result["torchgeo"]
    result["geoct_vs_rasterio"] = result["geoct"] / result["rasterio"]
    result["agreement"] = agreement
    return result


def tile_size(root: Path) -> int:
    info = read_dataset_json(root)
    with rasterio.open(root / next(iter(info.tiles.values()))["image"]) as src:
        return src.width


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared dataset (default: generate 2 tiles)")
    parser.add_argument("--size", type=int, default=6000, help="side of generated tiles (px)")
    parser.add_argument("--patch", type=int, default=512, help="patch side (px)")
    parser.add_argument("--patches", type=int, default=200, help="windows per method")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-strip", action="store_true", help="skip the strip-layout copy")
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "dataloading.json"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="geoct-bench-") as tmp:
        root = args.data
        if root is None:
            root = Path(tmp) / "tiled"
            t0 = time.perf_counter()
            prepare_synthetic(root, tiles=2, size=args.size, seed=args.seed)
            print(f"generated 2 tiles of {args.size} px in {time.perf_counter() - t0:.0f} s")
        layouts = {"tiled": root}
        if not args.no_strip:
            layouts["strip"] = strip_copy(root, Path(tmp) / "strip")
        results = {
            name: run_layout(path, args.patches, args.patch, args.seed, args.repeats)
            for name, path in layouts.items()
        }
        size = tile_size(root)

    print(f"\n{args.patches} windows of {args.patch} px, RGBIR + DSM + mask, one process")
    header = f"{'layout':<8}{'torchgeo':>10}{'geoct':>10}{'rasterio':>10}{'vs tg':>8}{'vs raw':>8}"
    print(header)
    for name, r in results.items():
        print(
            f"{name:<8}{r['torchgeo']:>10.1f}{r['geoct']:>10.1f}{r['rasterio']:>10.1f}"
            f"{r['geoct_vs_torchgeo']:>7.2f}x{r['geoct_vs_rasterio']:>7.2f}x"
        )
    print("(patches per second; ratios are geoct / torchgeo and geoct / rasterio)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "dataloading",
        "unit": "patches/s",
        "tile_size": size,
        "patch_size": args.patch,
        "patches": args.patches,
        "gdal_cachemax_mb": int(os.environ["GDAL_CACHEMAX"]),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform()},
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
