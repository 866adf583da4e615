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

An image read whole (a PNG or JPEG, a TIFF that fits) has no smaller piece to read: before it is
decoded, the working set its header declares (the same measure as a tile's, so that a TIFF that
``input.tile: auto`` reads whole is never then refused) is checked against ``whole_image_budget``,
since decoders fail only after allocating what a header declares (a 200-byte PNG can declare
30000² pixels). With an explicit budget that is the worker's share; with ``auto`` it is half the
memory this process may use (the least of physical memory, its cgroups' limits and ``RLIMIT_AS``)
over the workers, so that large photographs pass.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

MIB = 1024 * 1024
AUTO_PER_WORKER = 96 * MIB
WORKING_COPIES = 4
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
SIZE = re.compile(r"^(\d+(?:\.\d*)?)\s*([a-zA-Z]*)$")
# auto: whole images may take this fraction of the memory the process may use, shared by its workers.
WHOLE_IMAGE_SHARE = 0.5
# This process's cgroups, and where a cgroup's memory limit is kept: v2 (the unified hierarchy, no
# controller named in /proc/self/cgroup) and v1 (the memory controller's own hierarchy).
PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_LIMITS = {"": ("", "memory.max"), "memory": ("memory", "memory.limit_in_bytes")}

Budget = Union[str, int]


@dataclass(frozen=True)
class ImageBudget:
    """What one task may hold for an image read whole, and the bytes of one pixel as it is worked on."""

    bytes: int
    pixel_bytes: int = 4  # its channels (after colour handling) in the compute dtype

    def needs(self, pixels: int) -> int:
        """Bytes to decode, convert and work on an image of ``pixels``: a block without halo."""
        return working_set(pixels, pixels, self.pixel_bytes)


@dataclass(frozen=True)
class BlockBudget:
    """What sizes a task's block: one worker's share, the compute dtype's size, the leading halo."""

    bytes: int = AUTO_PER_WORKER
    itemsize: int = 4
    halo: tuple[int, ...] = ()  # the first convolutions' reach per spatial axis, the last axis last
    whole: int | None = None  # the most a task may hold for an image read whole; None: not checked

    def reach(self, axes: int) -> tuple[int, ...]:
        """The halo along the last ``axes`` spatial axes (0 where no kernel reaches)."""
        return ((0,) * axes + self.halo)[len(self.halo):]

    def whole_image(self, shape: tuple[int, ...]) -> ImageBudget | None:
        """The check of images read whole, of ``shape`` ([c,] y, x) after colour handling."""
        return None if self.whole is None else ImageBudget(self.whole, self.itemsize * math.prod(shape[:-2]))


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


def whole_image_budget(setting: Budget, workers: int, *, resumed: bool = False) -> int:
    """The most one worker may hold to decode an image whole (bytes of its working set, see ImageBudget).

    An explicit ``execution.memory_budget`` gives the worker's share; ``auto`` half the memory this
    process may use, shared by the workers, and never less than the auto share of a tile. A
    ``resumed`` store reads its images as it was created to, whatever the budget: a budget below
    auto's cannot refuse them there.
    """
    auto = max(AUTO_PER_WORKER, int(available_memory() * WHOLE_IMAGE_SHARE) // max(1, workers))
    if setting == "auto":
        return auto
    share = worker_budget(setting, workers)
    return max(share, auto) if resumed else share


def available_memory() -> int:
    """Bytes this process may use: the least of physical memory, its cgroups' limits and ``RLIMIT_AS``."""
    return min((*_physical_memory(), *_cgroup_limits(), *_address_space_limit()), default=sys.maxsize)


def _physical_memory() -> Iterator[int]:
    try:
        yield os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return


def _cgroup_limits() -> Iterator[int]:
    """The memory limits of this process's cgroup and of the cgroups above it (a Slurm job's, a container's)."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError:  # not Linux
        return
    for line in lines:
        _, controllers, where = line.split(":", 2)
        parts = [part for part in where.split("/") if part]
        for hierarchy, name in (CGROUP_LIMITS[c] for c in controllers.split(",") if c in CGROUP_LIMITS):
            for depth in range(len(parts) + 1):
                yield from _limit_in(CGROUP_ROOT.joinpath(hierarchy, *parts[:depth], name))


def _limit_in(path: Path) -> Iterator[int]:
    try:
        text = path.read_text().strip()
    except OSError:  # no such controller or cgroup here (a path outside a container's namespace)
        return
    if text.isdigit():  # "max": no limit
        yield int(text)


def _address_space_limit() -> Iterator[int]:
    try:
        import resource
    except ImportError:  # not a POSIX system
        return
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        yield soft


def format_size(size: int) -> str:
    """``96 MiB``, ``15.1 GiB``: a size for messages."""
    return f"{size / MIB:.0f} MiB" if size < 1024 * MIB else f"{size / (1024 * MIB):.1f} GiB"


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
