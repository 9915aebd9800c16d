import importlib.util
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def data() -> ModuleType:
    """tests/data/predict/data.py (not a package), imported as a module."""
    path = Path(__file__).parents[1] / "data" / "predict" / "data.py"
    spec = importlib.util.spec_from_file_location("predict_fixture_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def checkpoint(data: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real geoct checkpoint (resnet10t + FPN, random weights)."""
    return data.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
