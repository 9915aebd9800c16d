"""Georeferenced TorchGeo datasets, the prepared data layout and the datamodule.

Names are imported lazily, so that the data recipes do not pay for importing TorchGeo.
"""

import importlib
from typing import Any

_EXPORTS = {
    "PotsdamDataModule": "datamodule",
    "TileGriddedPatchSampler": "datamodule",
    "POTSDAM_TEST_TILES": "layout",
    "POTSDAM_TRAIN_TILES": "layout",
    "POTSDAM_VAL_TILES": "layout",
    "DatasetInfo": "layout",
    "canonical_tile_id": "layout",
    "padded_tile_id": "layout",
    "read_dataset_json": "layout",
    "AlignedRasterDataset": "potsdam",
    "HeightRaster": "potsdam",
    "ImageRaster": "potsdam",
    "LabelRaster": "potsdam",
    "PotsdamDSM": "potsdam",
    "PotsdamLabels": "potsdam",
    "PotsdamNDSM": "potsdam",
    "PotsdamOrtho": "potsdam",
}

__all__ = tuple(sorted(_EXPORTS))


def __getattr__(name: str) -> Any:
    """Import an exported name from its submodule on first use."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
