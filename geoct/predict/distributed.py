"""Sharing mosaic tiles between processes with torch.distributed.

Any launcher that sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (``torchrun``,
SLURM through torchrun, ...) starts one process per device; without them the run is
a single process. Tiles are handed out dynamically through a counter in
torch.distributed's own key-value store (``store.add`` is atomic), so a slow tile
never holds another process idle; there is no scheduler of geoct's own. Each process
uses the GPU of its ``LOCAL_RANK`` (the gloo backend on CPU).
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

#: Key of the tile counter in the process group's store.
COUNTER_KEY = "geoct/mosaic/next_tile"


@dataclass
class Workers:
    """This process's place among the processes of a run.

    Attributes:
        rank: Global rank (0 in a single process).
        world_size: Number of processes.
        local_rank: Rank on this machine, which picks the GPU.
        distributed: Whether a process group was set up.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False
    _counters: dict[str, int] = field(default_factory=dict)

    @property
    def device(self) -> str:
        """``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``."""
        return f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"

    def _add(self, key: str, amount: int) -> int:
        if not self.distributed:
            self._counters[key] = self._counters.get(key, 0) + amount
            return self._counters[key]
        return int(dist.distributed_c10d._get_default_store().add(key, amount))

    def increment(self, key: str) -> int:
        """Add one to a counter shared by all processes; return its new value."""
        return self._add(key, 1)

    def count(self, key: str) -> int:
        """Return a shared counter's value."""
        return self._add(key, 0)

    def next_index(self) -> int:
        """Return the next unclaimed work index (shared by all processes)."""
        return self.increment(COUNTER_KEY) - 1

    def claim(self, count: int) -> Iterator[int]:
        """Yield work indexes below *count* as this process claims them."""
        while (index := self.next_index()) < count:
            yield index

    def gather(self, value: Any) -> list[Any]:
        """Return *value* of every process, in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait for every process."""
        if self.distributed:
            dist.barrier()


@contextmanager
def workers() -> Iterator[Workers]:
    """Join the process group that the launcher describes, or run as a single process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Workers()
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    try:
        yield Workers(dist.get_rank(), dist.get_world_size(), local_rank, True)
    finally:
        dist.destroy_process_group()
