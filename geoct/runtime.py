"""Process-wide settings for commands that stream large arrays through threads.

``geoct predict`` runs the model on every core while its pipeline threads (reading,
blending, writing) share them, and each batch allocates and frees tens of
megabytes (the model's activations and logits). Two process-wide defaults of the
C runtime then cost time, so :func:`tune_for_streaming` changes them, unless the
user already set them:

* OpenMP threads that spin after each parallel region take the cores from the
  pipeline threads; ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep at once. It must
  be in the environment before torch loads OpenMP.
* glibc gives large freed blocks back to the kernel: blocks above its mmap
  threshold are unmapped, and the top of the heap is trimmed once enough of it is
  free. The next batch's blocks are then fresh pages that the kernel maps and
  zeroes again, one page fault per 4 KiB. On the 4096 px null-model benchmark that
  was 53 to 135 thousand faults per scene and about a tenth of the run's CPU time.
  With mmap off and the heap's top kept (:data:`MALLOC_OPTIONS`), freed blocks stay
  in the heap and most are reused (there, about 16 thousand faults per scene): the
  process keeps its peak memory, which prediction keeps flat in the scene size,
  instead of returning it between batches.

These are the process's settings, not the library's: the ``geoct`` command applies
them to its streaming commands, and a Python program calling
:func:`geoct.predict.engine.predict_scene` may call :func:`tune_for_streaming`
itself, first thing.
"""

import ctypes
import ctypes.util
import os
import platform

#: Environment defaults for OpenMP, applied unless already set.
OPENMP_ENV: dict[str, str] = {"OMP_WAIT_POLICY": "PASSIVE"}

#: glibc ``mallopt`` parameters and values: ``M_MMAP_MAX`` (-4) 0, so no block is
#: mmapped, and ``M_TRIM_THRESHOLD`` (-1) 1 GiB, so the heap's free top is kept (a conv
#: net's activations are hundreds of MB a batch: at 256 MB its CPU forward was 1.6x slower).
MALLOC_OPTIONS: dict[int, int] = {-4: 0, -1: 1 << 30}

#: Environment variables by which a user sets glibc's allocator; any of them set
#: leaves the allocator alone.
MALLOC_ENV = ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "LD_PRELOAD")


def tune_for_streaming() -> bool:
    """Apply :data:`OPENMP_ENV` and, with glibc, :data:`MALLOC_OPTIONS`, unless set.

    Returns:
        Whether the allocator was tuned (``False`` without glibc, when the user set
        the allocator up, or when ``mallopt`` refused).
    """
    for name, value in OPENMP_ENV.items():
        os.environ.setdefault(name, value)
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in MALLOC_ENV):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    return all(libc.mallopt(option, value) == 1 for option, value in MALLOC_OPTIONS.items())
