"""Which images are durably written, and what each source file was when it was processed.

Small arrays inside the store:

    ledger/done      uint8 (images,)    1 once the image's chunks are on disk, 2 if it was unreadable
                                        and skipped (input.on_error: skip; the reason is in
                                        the group's attributes under "unreadable"); written
                                        after each batch
    ledger/stats     int64 (images, 2)  the source file's size and mtime (ns) when it was read;
                                        written as its batch begins
    ledger/progress  int32 (images, blocks)  per image and write task ("block": each level's
                                        tiles of a chunk of images, one column each), the token
                                        of the batch whose task wrote that block's chunks, set by
                                        the task itself as soon as they are on disk

The ledger group's attributes hold the batch begun and not yet recorded in ``done``, ``{"start",
"stop", "token"}``, with a token new to the store (once it is recorded, only the token stays). A
run killed inside a batch thus loses only the images of its unfinished chunks: an image of that
batch whose every block carries the batch's token is on disk, whole, and reads as written
(``done_flags``); the next run records it in ``done`` before it begins a batch (``settle_batch``).
A token of an earlier, abandoned attempt never counts, so a block left from it is written again.

On a local disk the tasks do not write ``ledger/progress``'s chunks: each appends a record of 20
bytes (token, first and last image, column, CRC-32) to ``ledger/progress/journal``, which the
batch's beginning and end empty. Creating a file costs about 1 ms on the ext4 disk the benchmarks
run on, appending 7 µs: one more file per chunk of 16 small images made the 4,000-image job 7% slower.
Zarr never reads or lists files inside an array's folder other than its chunks, and a record that
is not whole or whose checksum fails (two hosts appending over NFS) is ignored: its chunk is
written again.

Every array names its dimensions (``image``, ``stat``, ``block``), like every array of the store,
so xarray opens the ledger as a group of its own (``xarray.open_datatree``).

Zarr's local store writes every chunk to a temporary file and renames it into place, and an
object store writes each chunk in one request, so a run killed at any moment leaves each ledger
chunk either before or after a write, never half-written.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import zarr
from zarr.storage import LocalStore

from pipeline.sinks.layout import IMAGE_AXIS, named_dimensions
from pipeline.storage import file_stats  # noqa: F401 (the ledger's stats come from here)

LEDGER = "ledger"
LEDGER_CHUNK = 4096
STATS = ("size", "mtime_ns")  # the columns of ledger/stats
PROGRESS = "progress"
BATCH_KEY = "batch"  # the ledger group's attribute: the batch begun and not yet in done
TOKEN_LIMIT = 2**31 - 1  # tokens count up to this, then start again at 1 (int32 progress)
JOURNAL = "journal"  # inside ledger/progress's folder, on a local disk
RECORD = struct.Struct("<iiii")  # token, start, stop, column; then the CRC-32 of these 16 bytes
RECORD_SIZE = RECORD.size + 4


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
    ledger = group[LEDGER]
    if PROGRESS in ledger:
        progress = ledger[PROGRESS]
        progress.resize((count, progress.shape[1]))


def mark_done(group: zarr.Group, start: int, stop: int, stats: np.ndarray | None = None) -> None:
    """Record images ``start:stop`` as written; call only after their chunks are on disk.

    ``stats``: the files' stats, when ``begin_batch`` has not recorded them already.
    """
    done = group[f"{LEDGER}/done"]
    if stats is not None:
        group[f"{LEDGER}/stats"][start:stop] = stats
    flags = done[start:stop]
    done[start:stop] = np.where(flags == UNREADABLE, UNREADABLE, WRITTEN)


class Progress(NamedTuple):
    """Where one level's write tasks record their blocks: ``ledger/progress``, its first column, the token."""

    array: zarr.Array
    column: int  # the level's first column
    blocks: int  # its columns: the tasks that write one chunk of its images
    token: int


def progress_array(group: zarr.Group, blocks: int, images_per_chunk: int) -> zarr.Array:
    """``ledger/progress`` with ``blocks`` columns, made (anew) unless it already has exactly that layout.

    Its chunks hold one column of one chunk of images, so no two tasks ever write one chunk.
    """
    ledger = group[LEDGER]
    count = group[f"{LEDGER}/done"].shape[0]
    chunks = (max(1, images_per_chunk), 1)
    if PROGRESS in ledger:
        array = ledger[PROGRESS]
        if array.shape == (count, blocks) and tuple(array.chunks) == chunks:
            return array
    # A new layout of tasks (another memory budget, say) or a store from before progress was kept:
    # called after settle_batch, so nothing the old columns say is still needed.
    return ledger.create_array(
        PROGRESS, shape=(count, blocks), chunks=chunks, dtype="int32", fill_value=0, compressors=None, overwrite=True,
        **named_dimensions((IMAGE_AXIS, "block"), group.metadata.zarr_format, {"meaning": "token of the batch that wrote the block"}),
    )


def begin_batch(group: zarr.Group, start: int, stop: int, stats: np.ndarray) -> int:
    """Record the batch about to be written, with its files' stats; return its token, new to this store."""
    group[f"{LEDGER}/stats"][start:stop] = stats
    ledger = group[LEDGER]
    _empty_journal(ledger)  # the last batch's records: settled or not, no longer needed
    last = ledger.attrs.get(BATCH_KEY, {}).get("token", 0)
    token = int(last) % TOKEN_LIMIT + 1
    ledger.attrs[BATCH_KEY] = {"start": start, "stop": stop, "token": token}
    return token


def end_batch(group: zarr.Group) -> None:
    """The batch begun last is in ``done`` now: forget its range and its records, keep its token."""
    ledger = group[LEDGER]
    batch = ledger.attrs.get(BATCH_KEY)
    if batch and "start" in batch:
        ledger.attrs[BATCH_KEY] = {"token": batch["token"]}
    _empty_journal(ledger)


def _empty_journal(ledger: zarr.Group) -> None:
    journal = _journal(ledger[PROGRESS]) if PROGRESS in ledger else None
    if journal is not None:
        journal.write_bytes(b"")


def record_progress(progress: Progress, start: int, stop: int, block: int) -> None:
    """In a write task: images ``start:stop`` of ``block`` (a column after ``progress.column``) are on disk."""
    array, column = progress.array, progress.column + block
    journal = _journal(array)
    if journal is None:  # an object store: the chunks themselves, one request each
        array[start:stop, column] = np.full(stop - start, progress.token, dtype=np.int32)
        return
    body = RECORD.pack(progress.token, start, stop, column)
    # one write of 20 bytes to a file opened for appending: whole, after every other task's
    handle = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(handle, body + struct.pack("<I", zlib.crc32(body))) != RECORD_SIZE:
            raise OSError(28, "No space left on device")  # a short write: the disk is full
    finally:
        os.close(handle)


def _journal(array: zarr.Array) -> Path | None:
    """Where the tasks of a local store record their blocks; None for other stores."""
    store_path = array.store_path
    if not isinstance(store_path.store, LocalStore):
        return None
    return Path(store_path.store.root) / store_path.path / JOURNAL


def _journaled(journal: Path, token: int, start: int, stop: int, blocks: int) -> np.ndarray:
    """Per image of ``start:stop`` and block, whether a whole record of ``token`` says it is on disk."""
    found = np.zeros((stop - start, blocks), dtype=bool)
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return found
    for offset in range(0, len(data) - RECORD_SIZE + 1, RECORD_SIZE):
        body = data[offset : offset + RECORD.size]
        if struct.unpack_from("<I", data, offset + RECORD.size)[0] != zlib.crc32(body):
            continue
        mark, first, last, column = RECORD.unpack(body)
        if mark == token and 0 <= column < blocks:
            found[max(first, start) - start : max(min(last, stop) - start, 0), column] = True
    return found


def _finished_in_batch(group: zarr.Group) -> tuple[int, np.ndarray] | None:
    """The batch begun last: its start, and per image whether every block carries its token."""
    ledger = group[LEDGER]
    batch = ledger.attrs.get(BATCH_KEY)
    if not batch or "start" not in batch or PROGRESS not in ledger:  # none begun, or it is in done
        return None
    progress = ledger[PROGRESS]
    start, stop = int(batch["start"]), min(int(batch["stop"]), progress.shape[0])
    if start >= stop or progress.shape[1] == 0:
        return None
    token = int(batch["token"])
    journal = _journal(progress)
    if journal is not None:
        return start, _journaled(journal, token, start, stop, progress.shape[1]).all(axis=1)
    return start, (progress[start:stop] == token).all(axis=1)


WRITTEN, UNREADABLE = 1, 2


def mark_unreadable(group: zarr.Group, index: int, source: str, reason: str) -> None:
    """Record an image skipped because its file could not be read; its chunk stays empty."""
    attrs = dict(group.attrs)
    listed = [entry for entry in attrs.get("unreadable", []) if entry["index"] != index]
    group.attrs["unreadable"] = [*listed, {"index": index, "source": source, "reason": reason}]
    group[f"{LEDGER}/done"][index] = UNREADABLE


def done_flags(group: zarr.Group) -> np.ndarray:
    """Per image: 0 still to do, 1 written, 2 unreadable and skipped.

    An image of an interrupted batch whose chunks are all on disk reads as written.
    """
    flags = group[f"{LEDGER}/done"][:]
    finished = _finished_in_batch(group)
    if finished is not None:
        start, whole = finished
        part = flags[start : start + whole.size]
        part[(part == 0) & whole] = WRITTEN
    return flags


def settle_batch(group: zarr.Group) -> int:
    """Record in ``done`` the images of an interrupted batch whose chunks are all on disk; return how many.

    Call before a new batch begins: beginning one forgets the last.
    """
    finished = _finished_in_batch(group)
    if finished is None:
        return 0
    start, whole = finished
    done = group[f"{LEDGER}/done"]
    flags = done[start : start + whole.size]
    settled = (flags == 0) & whole
    if settled.any():
        done[start : start + whole.size] = np.where(settled, WRITTEN, flags)
    end_batch(group)
    return int(settled.sum())


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
