import os
import subprocess
import sys

import pytest

from geoct import __version__
from geoct.cli import main


def run_geoct(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoct", *args], capture_output=True, text=True, timeout=600
    )


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("fit", "validate", "test", "predict", "vectorize", "evaluate"):
        assert command in out


def test_no_command_is_usage_error() -> None:
    assert main([]) == 2


def test_unknown_command_is_one_line_error() -> None:
    proc = run_geoct("frobnicate")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0] == "geoct: error: unknown command 'frobnicate'"
    assert "Traceback" not in proc.stderr


def test_predict_sets_passive_openmp_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
