import json
import os
import platform
import subprocess
import sys

import pytest

#: Holds a 64 MiB torch tensor and prints how many bytes glibc mmapped for blocks
#: (``mallinfo2().hblkhd``) and what tune_for_streaming returned (in a fresh process,
#: since the allocator's settings are the process's).
PROBE = """
import ctypes, json, os, sys
from geoct.runtime import tune_for_streaming
tuned = tune_for_streaming() if sys.argv[1] == "tune" else None
import torch
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
block = torch.ones(16 << 20)
mmapped = libc.mallinfo2().hblkhd
print(json.dumps({"tuned": tuned, "mmapped": mmapped, "omp": os.environ.get("OMP_WAIT_POLICY")}))
"""


def probe(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in {"OMP_WAIT_POLICY", "LD_PRELOAD"}}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_tuned_allocator_keeps_large_blocks_in_the_heap() -> None:
    """Blocks freed by one batch are reused by the next instead of being unmapped."""
    assert probe("none")["mmapped"] >= 64 << 20
    tuned = probe("tune")
    assert tuned["tuned"] is True
    assert tuned["mmapped"] < 64 << 20
    assert tuned["omp"] == "PASSIVE"


def test_user_settings_are_kept() -> None:
    kept = probe("tune", OMP_WAIT_POLICY="ACTIVE", MALLOC_MMAP_MAX_="65536")
    assert kept["tuned"] is False
    assert kept["omp"] == "ACTIVE"
