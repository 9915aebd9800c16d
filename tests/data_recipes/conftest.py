import importlib.util
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]

RunScript = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def potsdam_data() -> ModuleType:
    """tests/data/potsdam/data.py (not a package), imported as a module."""
    path = REPO / "tests" / "data" / "potsdam" / "data.py"
    spec = importlib.util.spec_from_file_location("potsdam_fixture_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def run_script() -> RunScript:
    """Run a data_recipes/ script with the test interpreter; returns the completed process."""

    def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(REPO / "data_recipes" / script), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run
