from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="session")
def data(predict_data: ModuleType) -> ModuleType:
    """The prediction fixture generator (short name for this package's tests)."""
    return predict_data


@pytest.fixture(scope="session")
def checkpoint(data: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny real geoct checkpoint (resnet10t + FPN, random weights)."""
    return data.save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")
