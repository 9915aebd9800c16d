import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

RunScript = Callable[..., subprocess.CompletedProcess[str]]


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
