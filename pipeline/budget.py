"""How large a block one task may hold: tiles of huge images and slabs of volumes, from a memory budget.

``execution.memory_budget`` is the memory the workers' blocks may take together; each worker gets an
equal share. A task holds, in the compute dtype, its block read with the halo its convolutions need,
and ``WORKING_COPIES - 1`` more arrays the size of the block: the filter's output, and the
contiguous copy and compressed bytes of the write (the file's raw pixels and the kernels' scratch
are smaller and short-lived). Tiles and slabs are the largest whose working set fits a worker's
share; the interpreter and its libraries (≈ 115 MiB) come on top of the budget.

The default share, 96 MiB a worker, reads a 16-bit TIFF with 512-pixel file tiles by 2048² tiles:
float32 blocks of 16 MiB, well under the 32 MiB up to which glibc serves (and, see allocator.py,
reuses) allocations from its heap. A 128 MiB share (2560² tiles, 25 MiB blocks) measured no faster
and held 100 MiB more; a 48 MiB share (1536²) measured 8% slower.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

MIB = 1024 * 1024
AUTO_PER_WORKER = 96 * MIB
WORKING_COPIES = 4
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE = re.compile(r"^(\d+(?:\.\d*)?)\s*([a-zA-Z]*)$")

Budget = Union[str, int]


@dataclass(frozen=True)
class BlockBudget:
    """What sizes a task's block: one worker's share, the compute dtype's size, the leading halo."""

    bytes: int = AUTO_PER_WORKER
    itemsize: int = 4
    halo: tuple[int, ...] = ()  # the first convolutions' reach per spatial axis, the last axis last

    def reach(self, axes: int) -> tuple[int, ...]:
        """The halo along the last ``axes`` spatial axes (0 where no kernel reaches)."""
        return ((0,) * axes + self.halo)[len(self.halo):]


def parse_size(text: str | int) -> int:
    """Bytes in ``512MiB``, ``1.5 GB`` or ``1000000``; raises ValueError naming the accepted units."""
    found = SIZE.match(str(text).strip())
    number = float(found.group(1)) if found else 0.0
    if not found or found.group(2).lower() not in UNITS or not 0 < number < math.inf:
        raise ValueError("expected a size such as 512MiB or 2GB (units: B, kB, MB, GB, KiB, MiB, GiB)")
    return int(number * UNITS[found.group(2).lower()])


def worker_budget(setting: Budget, workers: int) -> int:
    """One worker's share of ``execution.memory_budget`` (``auto``: 96 MiB a worker)."""
    workers = max(1, workers)
    total = AUTO_PER_WORKER * workers if setting == "auto" else parse_size(setting)
    return max(1, total // workers)


def working_set(pixels: int, haloed: int, pixel_bytes: int) -> int:
    """Bytes a task holds for a block of ``pixels``, read with its halo as ``haloed`` pixels."""
    return (haloed + (WORKING_COPIES - 1) * pixels) * pixel_bytes


def tile_shape(budget: int, *, pixel_bytes: int, halo: tuple[int, int], step: tuple[int, int]) -> tuple[int, int]:
    """The largest square (y, x) tile, rounded down to whole ``step``s (file tiles), whose task fits.

    Never smaller than one step.
    """
    # (side + 2h)² + (copies - 1)·side² ≤ budget / pixel_bytes, solved for side
    h, room = max(halo), budget // pixel_bytes
    copies = WORKING_COPIES
    root = math.isqrt(max(0, copies * room - 4 * (copies - 1) * h * h))
    side = max(0, (root - 2 * h) // copies)
    return tuple(max(unit, side // unit * unit) for unit in step)


def slab_depth(budget: int, *, plane_bytes: int, halo: int, multiple: int = 1) -> int:
    """Slices per slab: the most whose task, reading ``halo`` more slices on each side, fits ``budget``.

    A whole number of ``multiple`` (the store's slices per chunk), and never less than one.
    """
    planes = (budget // plane_bytes - 2 * halo) // WORKING_COPIES
    return max(multiple, planes // multiple * multiple)
