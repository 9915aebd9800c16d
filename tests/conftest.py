from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic Potsdam dataset: 4 tiles of 128 px, seed 0 (2 train, 1 val, 1 test)."""
    from geoct.datasets.recipes import prepare_synthetic

    root = tmp_path_factory.mktemp("synthetic_potsdam")
    prepare_synthetic(root, tiles=4, size=128, seed=0)
    return root
