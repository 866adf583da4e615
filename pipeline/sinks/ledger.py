"""Which images are durably written, and what each source file was when it was processed.

Two small arrays inside the store, written only after a batch's chunk writes have all finished:

    ledger/done    uint8 (images,)    1 once the image's chunk is on disk, 2 if it was unreadable
                                      and skipped (input.on_error: skip; the reason is in
                                      the group's attributes under "unreadable")
    ledger/stats   int64 (images, 2)  the source file's size and mtime (ns) when it was read

Both name their dimensions (``image``, ``stat``), like every array of the store, so xarray opens
the ledger as a group of its own (``xarray.open_datatree``).

Zarr's local store writes every chunk to a temporary file and renames it into place, and an
object store writes each chunk in one request, so a run killed at any moment leaves each ledger
chunk either before or after a batch, never half-written.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import zarr

from pipeline.sinks.layout import IMAGE_AXIS, named_dimensions
from pipeline.storage import file_stats  # noqa: F401 (the ledger's stats come from here)

LEDGER = "ledger"
LEDGER_CHUNK = 4096
STATS = ("size", "mtime_ns")  # the columns of ledger/stats


def create_ledger(group: zarr.Group, count: int) -> None:
    ledger = group.create_group(LEDGER)
    chunk = min(max(count, 1), LEDGER_CHUNK)
    version = group.metadata.zarr_format
    ledger.create_array(
        "done", shape=(count,), chunks=(chunk,), dtype="uint8", fill_value=0,
        **named_dimensions((IMAGE_AXIS,), version, {"flag_values": [0, WRITTEN, UNREADABLE], "flag_meanings": "to_do written unreadable"}),
    )
    ledger.create_array(
        "stats", shape=(count, 2), chunks=(chunk, 2), dtype="int64", fill_value=-1,
        **named_dimensions((IMAGE_AXIS, "stat"), version, {"columns": list(STATS)}),
    )


def resize_ledger(group: zarr.Group, count: int) -> None:
    group[f"{LEDGER}/done"].resize((count,))
    group[f"{LEDGER}/stats"].resize((count, 2))


def mark_done(group: zarr.Group, start: int, stop: int, stats: np.ndarray) -> None:
    """Record images ``start:stop`` as written; call only after their chunks are on disk."""
    done = group[f"{LEDGER}/done"]
    group[f"{LEDGER}/stats"][start:stop] = stats
    flags = done[start:stop]
    done[start:stop] = np.where(flags == UNREADABLE, UNREADABLE, WRITTEN)


WRITTEN, UNREADABLE = 1, 2


def mark_unreadable(group: zarr.Group, index: int, source: str, reason: str) -> None:
    """Record an image skipped because its file could not be read; its chunk stays empty."""
    attrs = dict(group.attrs)
    listed = [entry for entry in attrs.get("unreadable", []) if entry["index"] != index]
    group.attrs["unreadable"] = [*listed, {"index": index, "source": source, "reason": reason}]
    group[f"{LEDGER}/done"][index] = UNREADABLE


def done_flags(group: zarr.Group) -> np.ndarray:
    """Per image: 0 still to do, 1 written, 2 unreadable and skipped."""
    return group[f"{LEDGER}/done"][:]


def recorded_stats(group: zarr.Group) -> np.ndarray:
    return group[f"{LEDGER}/stats"][:]


def pending_batches(done: np.ndarray, batch_size: int, *, aligned: bool = False) -> Iterator[tuple[int, int]]:
    """Ranges ``(start, stop)`` of images not done yet (``done`` false or 0), at most ``batch_size`` long.

    ``aligned``: batches end at multiples of ``batch_size`` (a batch of whole chunks of images
    then never shares a chunk with the next, even after a resume or an append began mid-chunk).

    Examples
    --------
    >>> list(pending_batches(np.array([1, 0, 0, 0, 1, 0], bool), 2))
    [(1, 3), (3, 4), (5, 6)]
    >>> list(pending_batches(np.array([1, 0, 0, 0, 1, 0], bool), 2, aligned=True))
    [(1, 2), (2, 4), (5, 6)]
    """
    todo = np.flatnonzero(np.asarray(done) == 0)
    if todo.size == 0:
        return
    breaks = np.flatnonzero(np.diff(todo) != 1) + 1
    for run in np.split(todo, breaks):
        first, last = int(run[0]), int(run[-1]) + 1
        start = first
        while start < last:
            stop = min((start // batch_size + 1) * batch_size if aligned else start + batch_size, last)
            yield start, stop
            start = stop
