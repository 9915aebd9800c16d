#!/usr/bin/env python3

"""Tiny fake ISPRS Potsdam download in the official file naming, zipped or extracted.

Run as a script to write one into this folder (``python tests/data/potsdam/data.py``);
the tests call :func:`make_download` into a temporary folder instead.
"""

import argparse
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

CRS = "EPSG:32633"
GSD = 0.05
TILES = ("2_10", "2_11", "2_12", "2_13")
COLOURS = np.array(
    [(255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)],
    dtype=np.uint8,
)
ARCHIVES = {
    "ortho": "4_Ortho_RGBIR",
    "dsm": "1_DSM",
    "ndsm": "1_DSM_normalisation",
    "label": "5_Labels_all",
}


def transform_of(tile_id: str, size: int) -> Affine:
    row, col = (int(v) for v in tile_id.split("_"))
    return Affine(GSD, 0, 366000 + col * size * GSD, 0, -GSD, 5808000 - row * size * GSD)


def labels_of(tile_id: str, size: int, seed: int = 0) -> np.ndarray:
    """Class ids 0..5 in blocks of 8 pixels, with a black (ignore) boundary line."""
    rng = np.random.default_rng([seed, *map(int, tile_id.split("_"))])
    blocks = rng.integers(0, 6, (size // 8 + 1, size // 8 + 1), dtype=np.uint8)
    ids = np.kron(blocks, np.ones((8, 8), dtype=np.uint8))[:size, :size]
    ids[:, size // 2] = 255
    return ids


def write(path: Path, array: np.ndarray, transform: Affine | None, crs: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": array.shape[2],
        "height": array.shape[1],
        "count": array.shape[0],
        "dtype": array.dtype,
    }
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(array)


def write_tile(
    root: Path,
    tile_id: str,
    size: int = 96,
    seed: int = 0,
    label_size: int | None = None,
    dsm_crs: str = CRS,
    ortho_georeferenced: bool = True,
    unknown_colour: bool = False,
) -> dict[str, np.ndarray]:
    """Write one tile's ortho, DSM, nDSM and colour label into product folders.

    Returns:
        The arrays written: ``image`` (4, H, W), ``dsm``, ``ndsm`` and ``ids`` (H, W).
    """
    rng = np.random.default_rng([seed, 7, *map(int, tile_id.split("_"))])
    ids = labels_of(tile_id, size, seed)
    image = rng.integers(0, 256, (4, size, size), dtype=np.uint8)
    ndsm = (ids == 1) * 10.0 + (ids == 3) * 6.0 + rng.random((size, size))
    dsm = (ndsm + 35.0).astype(np.float32)
    transform = transform_of(tile_id, size)
    pid = "{:02d}_{:02d}".format(*map(int, tile_id.split("_")))
    write(
        root / ARCHIVES["ortho"] / f"top_potsdam_{tile_id}_RGBIR.tif",
        image,
        transform if ortho_georeferenced else None,
        CRS,
    )
    write(root / ARCHIVES["dsm"] / f"dsm_potsdam_{pid}.tif", dsm[None], transform, dsm_crs)
    write(
        root / ARCHIVES["ndsm"] / f"dsm_potsdam_{pid}_normalized_lastools.tif",
        ndsm.astype(np.float32)[None],
        transform,
        CRS,
    )
    label_ids = ids if label_size is None else labels_of(tile_id, label_size, seed)
    colours = np.zeros((3, *label_ids.shape), dtype=np.uint8)
    known = label_ids != 255
    colours[:, known] = COLOURS[label_ids[known]].T
    if unknown_colour:
        colours[:, :2, :3] = np.array([12, 34, 56], dtype=np.uint8)[:, None, None]
    write(root / ARCHIVES["label"] / f"top_potsdam_{tile_id}_label.tif", colours, None, None)
    return {"image": image, "dsm": dsm, "ndsm": ndsm.astype(np.float32), "ids": ids}


def zip_products(root: Path) -> None:
    """Replace each product folder under *root* by ``<folder>.zip`` holding the folder."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        with zipfile.ZipFile(root / f"{folder.name}.zip", "w") as archive:
            for file in sorted(folder.iterdir()):
                archive.write(file, f"{folder.name}/{file.name}")
        shutil.rmtree(folder)


def make_download(
    root: Path, tiles: tuple[str, ...] = TILES, size: int = 96, zipped: bool = True, **kwargs
) -> dict[str, dict[str, np.ndarray]]:
    """Write a fake download of *tiles*; keyword arguments go to :func:`write_tile`."""
    root = Path(root)
    arrays = {t: write_tile(root, t, size, **kwargs) for t in tiles}
    if zipped:
        zip_products(root)
    return arrays


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "download"))
    parser.add_argument("--extracted", action="store_true", help="do not zip the products")
    args = parser.parse_args()
    make_download(Path(args.out), zipped=not args.extracted)
