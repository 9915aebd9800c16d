"""Scenes, a colour-to-class model and checkpoints for the predict tests.

Run as a script to write an example scene: ``python tests/data/predict/data.py OUT.tif``.
"""

import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from torch import nn

from geoct.classes import POTSDAM
from geoct.metadata import ModelSpec

#: Projected CRS of the scenes.
CRS = "EPSG:25833"

#: Non-integer origin and non-square pixels (0.05 m x 0.07 m).
TRANSFORM = Affine(0.05, 0.0, 368000.123, 0.0, -0.07, 5808000.456)

#: Mean and std used by :data:`SPEC`.
MEAN, STD = 100.0, 50.0

SPEC = ModelSpec(
    bands=("R", "G", "B", "IR"),
    mean=(MEAN,) * 4,
    std=(STD,) * 4,
    gsd=0.05,
    patch_size=64,
    classes=POTSDAM,
)

HEIGHT_SPEC = ModelSpec(
    bands=("R", "G", "B", "IR", "height"),
    mean=(MEAN,) * 4 + (10.0,),
    std=(STD,) * 4 + (5.0,),
    gsd=0.05,
    patch_size=64,
    classes=POTSDAM,
    height_source="dsm",
)

#: The scene colour of each class: (R, G, B, IR).
COLOURS = np.array(
    [
        (250, 250, 250, 10),
        (10, 10, 250, 60),
        (10, 250, 250, 120),
        (10, 250, 10, 180),
        (250, 250, 10, 230),
        (250, 10, 10, 30),
    ],
    dtype=np.uint8,
)


class ColourModel(nn.Module):
    """Per-pixel model: the logit of class k is minus the squared distance to its colour."""

    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        centres = (torch.from_numpy(COLOURS).float() - MEAN) / STD
        self.register_buffer("centres", centres[:, :, None, None])
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        diff = x[:, None, :4] - self.centres[None]
        return -(diff**2).sum(dim=2)


def class_map(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Random class ids with small blobs and single-pixel noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 6, (height // 7 + 1, width // 7 + 1))
    classes = np.kron(coarse, np.ones((7, 7), dtype=np.int64))[:height, :width]
    noise = rng.random((height, width)) < 0.05
    classes[noise] = rng.integers(0, 6, noise.sum())
    return classes.astype(np.uint8)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    transform: Affine = TRANSFORM,
    crs: str | None = CRS,
    nodata: float | None = None,
) -> Path:
    """Write a (C, H, W) array as a GeoTIFF (photometric MINISBLACK: no band is alpha)."""
    data = data if data.ndim == 3 else data[None]
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "nodata": nodata,
        "photometric": "MINISBLACK",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def write_scene(path: Path, height: int, width: int, seed: int = 0, **kwargs) -> np.ndarray:
    """Write a colour scene of *height* x *width* and return its true class map."""
    classes = class_map(height, width, seed)
    write_raster(path, COLOURS[classes].transpose(2, 0, 1).copy(), **kwargs)
    return classes


def save_checkpoint(path: Path, spec: ModelSpec = SPEC) -> Path:
    """Save a tiny geoct checkpoint readable by :func:`geoct.tasks.load_model`."""
    from geoct.tasks import ContrastiveSemanticSegmentationTask

    task = ContrastiveSemanticSegmentationTask(
        backbone="resnet10t",
        decoder="fpn",
        decoder_channels=8,
        in_channels=spec.in_channels,
        num_classes=spec.classes.num_classes,
        contrastive=False,
        model_spec=spec.to_dict(),
    )
    checkpoint = {
        "geoct": spec.to_dict(),
        "state_dict": {f"model.{k}": v for k, v in task.model.state_dict().items()},
        "hyper_parameters": dict(task.hparams),
    }
    torch.save(checkpoint, path)
    return path


if __name__ == "__main__":
    write_scene(Path(sys.argv[1]), 217, 300)
