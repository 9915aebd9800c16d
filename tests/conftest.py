import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

DATA = Path(__file__).resolve().parent / "data"


def load_fixture_data(name: str) -> ModuleType:
    """Import the fixture generator ``tests/data/<name>/data.py`` (not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_fixture_data", DATA / name / "data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def potsdam_data() -> ModuleType:
    """The Potsdam fixture generator, tests/data/potsdam/data.py."""
    return load_fixture_data("potsdam")


@pytest.fixture(scope="session")
def mosaic_data() -> ModuleType:
    """The mosaic fixture generator, tests/data/mosaic/data.py."""
    return load_fixture_data("mosaic")


@pytest.fixture(scope="session")
def predict_data() -> ModuleType:
    """The prediction fixture generator, tests/data/predict/data.py."""
    return load_fixture_data("predict")


@pytest.fixture(scope="session")
def own_data() -> ModuleType:
    """The own-data fixture generator (orthophoto + label polygons), tests/data/own_data/data.py."""
    return load_fixture_data("own_data")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic Potsdam dataset: 4 tiles of 128 px, seed 0 (2 train, 1 val, 1 test)."""
    from geoct.datasets.recipes import prepare_synthetic

    root = tmp_path_factory.mktemp("synthetic_potsdam")
    prepare_synthetic(root, tiles=4, size=128, seed=0)
    return root
