from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
TILES = ["2_10", "2_11", "2_12", "2_13"]


@pytest.fixture(scope="session")
def potsdam_download(tmp_path_factory: pytest.TempPathFactory, potsdam_data: ModuleType) -> Path:
    """A zipped fake official download: tiles 2_10, 2_11, 2_12 (train) and 2_13 (test)."""
    root = tmp_path_factory.mktemp("potsdam_download")
    potsdam_data.make_download(root, tiles=tuple(TILES))
    return root


@pytest.fixture(scope="session")
def potsdam_root(tmp_path_factory: pytest.TempPathFactory, potsdam_download: Path) -> Path:
    """The fake download prepared by the Potsdam recipe (96 px tiles, 64 px blocks)."""
    from geoct.datasets.recipes import prepare_potsdam

    out = tmp_path_factory.mktemp("potsdam_prepared")
    prepare_potsdam(potsdam_download, out, tiles=TILES, block_size=64)
    return out
