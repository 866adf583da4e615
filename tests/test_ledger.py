"""The per-image ledger: which ranges are still to do, and what is recorded on a real Zarr group."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.sinks.ledger import (
    LEDGER,
    UNREADABLE,
    WRITTEN,
    Progress,
    begin_batch,
    create_ledger,
    end_batch,
    done_flags,
    file_stats,
    mark_done,
    mark_unreadable,
    pending_batches,
    progress_array,
    record_progress,
    recorded_stats,
    resize_ledger,
    settle_batch,
)


def _flags(text: str) -> np.ndarray:
    """'1001' -> [True, False, False, True]: a readable way to write a done mask."""
    return np.array([char == "1" for char in text], dtype=bool)


@pytest.mark.parametrize(
    ("done", "size", "expected"),
    [
        pytest.param("", 3, [], id="no-images"),
        pytest.param("0", 3, [(0, 1)], id="one-pending"),
        pytest.param("1111", 2, [], id="all-done"),
        pytest.param("0000", 4, [(0, 4)], id="exact-one-batch"),
        pytest.param("0000", 10, [(0, 4)], id="batch-larger-than-work"),
        pytest.param("0000000", 3, [(0, 3), (3, 6), (6, 7)], id="split-with-remainder"),
        pytest.param("000000", 3, [(0, 3), (3, 6)], id="split-even"),
        pytest.param("0000", 1, [(0, 1), (1, 2), (2, 3), (3, 4)], id="batch-of-one"),
        pytest.param("100010", 2, [(1, 3), (3, 4), (5, 6)], id="docstring-example"),
        pytest.param("0101010", 5, [(0, 1), (2, 3), (4, 5), (6, 7)], id="alternating-gaps"),
        pytest.param("1100011", 2, [(2, 4), (4, 5)], id="gap-in-the-middle"),
        pytest.param("0011100", 4, [(0, 2), (5, 7)], id="done-in-the-middle"),
        pytest.param("111000000", 4, [(3, 7), (7, 9)], id="batches-start-at-the-gap"),
        pytest.param("1111110", 3, [(6, 7)], id="only-the-last"),
    ],
)
def test_pending_batches(done: str, size: int, expected: list[tuple[int, int]]) -> None:
    batches = list(pending_batches(_flags(done), size))
    assert batches == expected
    assert all(isinstance(value, int) for batch in batches for value in batch)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_pending_batches_cover_every_pending_image_once(size: int) -> None:
    rng = np.random.default_rng(size)
    done = rng.random(200) < 0.4
    batches = list(pending_batches(done, size))
    covered = [index for start, stop in batches for index in range(start, stop)]
    assert covered == list(np.flatnonzero(~done))
    assert all(0 < stop - start <= size for start, stop in batches)
    # a batch never spans an image that is already done
    assert all(not done[start:stop].any() for start, stop in batches)


@pytest.mark.parametrize(
    ("done", "size", "expected"),
    [
        pytest.param("1000000000", 4, [(1, 4), (4, 8), (8, 10)], id="resumed-mid-batch"),
        pytest.param("0010000", 2, [(0, 2), (3, 4), (4, 6), (6, 7)], id="around-a-done-image"),
        pytest.param("00000", 8, [(0, 5)], id="one-short-batch"),
    ],
)
def test_aligned_batches_end_on_multiples_of_the_batch_size(done: str, size: int, expected: list[tuple[int, int]]) -> None:
    """So a batch of whole chunks of images never shares a chunk with the next, wherever a resume began."""
    assert list(pending_batches(_flags(done), size, aligned=True)) == expected


def _finished(group: zarr.Group) -> np.ndarray:
    """The 'nothing left to do' mask pending_batches takes (flags are 0 to do, 1 written, 2 unreadable)."""
    return done_flags(group) != 0


@pytest.fixture
def group(tmp_path: Path) -> zarr.Group:
    group = zarr.open_group(str(tmp_path / "store.zarr"), mode="w")
    create_ledger(group, 5)
    return group


def test_new_ledger_is_all_pending(group: zarr.Group) -> None:
    assert done_flags(group).tolist() == [0] * 5
    assert list(pending_batches(_finished(group), 2)) == [(0, 2), (2, 4), (4, 5)]
    assert recorded_stats(group).shape == (5, 2)
    assert (recorded_stats(group) == -1).all()


def test_mark_done_round_trip_on_disk(group: zarr.Group, tmp_path: Path) -> None:
    stats = np.array([[10, 1_700_000_000_123_456_789], [20, 1_700_000_001_000_000_000]], dtype=np.int64)
    mark_done(group, 1, 3, stats)

    reopened = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert done_flags(reopened).tolist() == [0, WRITTEN, WRITTEN, 0, 0]
    recorded = recorded_stats(reopened)
    np.testing.assert_array_equal(recorded[1:3], stats)  # int64 nanoseconds survive exactly
    assert (recorded[[0, 3, 4]] == -1).all()
    assert list(pending_batches(_finished(reopened), 10)) == [(0, 1), (3, 5)]

    mark_done(group, 0, 1, np.array([[5, 6]], dtype=np.int64))
    mark_done(group, 3, 5, np.array([[7, 8], [9, 10]], dtype=np.int64))
    reopened = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert (done_flags(reopened) == WRITTEN).all()
    assert list(pending_batches(_finished(reopened), 2)) == []
    assert recorded_stats(reopened)[:, 0].tolist() == [5, 10, 20, 7, 9]


def test_resize_ledger_keeps_old_entries_and_adds_pending(group: zarr.Group, tmp_path: Path) -> None:
    mark_done(group, 0, 5, np.arange(10, dtype=np.int64).reshape(5, 2))
    resize_ledger(group, 8)
    reopened = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert done_flags(reopened).tolist() == [WRITTEN] * 5 + [0] * 3
    np.testing.assert_array_equal(recorded_stats(reopened)[:5], np.arange(10).reshape(5, 2))
    assert (recorded_stats(reopened)[5:] == -1).all()
    assert list(pending_batches(_finished(reopened), 2)) == [(5, 7), (7, 8)]


def test_unreadable_images_are_finished_and_stay_unreadable(group: zarr.Group, tmp_path: Path) -> None:
    mark_unreadable(group, 2, "c.png", "cannot read image 'c.png'")
    mark_unreadable(group, 4, "e.png", "truncated")
    mark_unreadable(group, 2, "c.png", "still broken")  # a second record replaces the first
    # the batch around them is then written; its mark_done must not turn them into 'written'
    mark_done(group, 1, 5, np.zeros((4, 2), dtype=np.int64))
    reopened = zarr.open_group(str(tmp_path / "store.zarr"), mode="r")
    assert done_flags(reopened).tolist() == [0, WRITTEN, UNREADABLE, WRITTEN, UNREADABLE]
    assert list(pending_batches(_finished(reopened), 3)) == [(0, 1)]
    assert sorted((entry["index"], entry["source"], entry["reason"]) for entry in reopened.attrs["unreadable"]) == [
        (2, "c.png", "still broken"),
        (4, "e.png", "truncated"),
    ]


def test_empty_ledger(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    create_ledger(group, 0)
    assert LEDGER in group
    assert done_flags(group).shape == (0,)
    assert list(pending_batches(_finished(group), 4)) == []


def test_file_stats_present_and_missing(tmp_path: Path) -> None:
    present = tmp_path / "a.png"
    present.write_bytes(b"x" * 123)
    os.utime(present, ns=(1_600_000_000_000_000_001, 1_600_000_000_987_654_321))
    other = tmp_path / "b.png"
    other.write_bytes(b"")
    missing = tmp_path / "gone.png"

    stats = file_stats([str(present), str(missing), str(other)])
    assert stats.dtype == np.int64 and stats.shape == (3, 2)
    assert stats[0].tolist() == [123, os.stat(present).st_mtime_ns]
    assert stats[1].tolist() == [-1, -1]
    assert stats[2].tolist() == [0, os.stat(other).st_mtime_ns]
    assert file_stats([]).shape == (0, 2)


def test_file_stats_sees_a_rewritten_file(tmp_path: Path) -> None:
    path = tmp_path / "img.png"
    path.write_bytes(b"first")
    before = file_stats([str(path)])
    path.write_bytes(b"second!")
    os.utime(path, ns=(before[0, 1] + 10**9, before[0, 1] + 10**9))
    after = file_stats([str(path)])
    assert (before != after).all()


# --------------------------------------------------------------------------------------------
# progress inside a batch: what a killed batch finished counts, and nothing else


@pytest.fixture
def ten(tmp_path: Path) -> zarr.Group:
    group = zarr.open_group(str(tmp_path / "ten.zarr"), mode="w")
    create_ledger(group, 10)
    return group


def _stats(count: int, base: int = 100) -> np.ndarray:
    return np.arange(base, base + 2 * count, dtype=np.int64).reshape(count, 2)


def test_a_batch_whose_blocks_are_all_recorded_reads_as_written_and_is_settled(ten: zarr.Group, tmp_path: Path) -> None:
    # two levels: level 0 written by 2 tasks a chunk of images (tiles), level 1 by one; chunks of 2 images
    progress = progress_array(ten, 3, 2)
    token = begin_batch(ten, 2, 8, _stats(6))
    level0, level1 = Progress(progress, 0, 2, token), Progress(progress, 2, 1, token)
    for block in (0, 1):
        record_progress(level0, 2, 4, block)
    record_progress(level1, 2, 4, 0)  # images 2-3: every block on disk
    record_progress(level0, 4, 6, 0)
    record_progress(level1, 4, 6, 0)  # images 4-5: one tile of level 0 missing
    record_progress(level0, 6, 8, 1)  # images 6-7: one block only

    reopened = zarr.open_group(str(tmp_path / "ten.zarr"), mode="r")
    assert done_flags(reopened).tolist() == [0, 0, WRITTEN, WRITTEN, 0, 0, 0, 0, 0, 0]
    assert reopened[f"{LEDGER}/done"][:].sum() == 0  # read as written, not yet recorded
    np.testing.assert_array_equal(recorded_stats(reopened)[2:8], _stats(6))  # stats come with the batch

    assert settle_batch(ten) == 2
    assert ten[f"{LEDGER}/done"][:].tolist() == [0, 0, WRITTEN, WRITTEN, 0, 0, 0, 0, 0, 0]
    assert settle_batch(ten) == 0  # idempotent


def test_blocks_of_an_abandoned_attempt_do_not_count(ten: zarr.Group) -> None:
    progress = progress_array(ten, 1, 2)
    first = begin_batch(ten, 0, 4, _stats(4))
    record_progress(Progress(progress, 0, 1, first), 0, 2, 0)
    record_progress(Progress(progress, 0, 1, first), 2, 4, 0)
    # the next batch begins before anyone settled the first: its token is new, so the old blocks are not its
    second = begin_batch(ten, 0, 4, _stats(4, base=7))
    assert second != first
    assert done_flags(ten).tolist() == [0] * 10
    record_progress(Progress(progress, 0, 1, second), 2, 4, 0)
    assert done_flags(ten).tolist() == [0, 0, WRITTEN, WRITTEN] + [0] * 6


def test_unreadable_images_stay_unreadable_when_their_batch_is_settled(ten: zarr.Group) -> None:
    progress = progress_array(ten, 1, 1)
    token = begin_batch(ten, 0, 3, _stats(3))
    mark_unreadable(ten, 1, "b.png", "truncated")
    for image in (0, 2):
        record_progress(Progress(progress, 0, 1, token), image, image + 1, 0)
    assert settle_batch(ten) == 2
    assert done_flags(ten)[:3].tolist() == [WRITTEN, UNREADABLE, WRITTEN]


def test_progress_is_remade_for_another_layout_and_grows_with_the_ledger(ten: zarr.Group) -> None:
    first = progress_array(ten, 2, 4)
    assert (first.shape, tuple(first.chunks)) == ((10, 2), (4, 1))
    assert progress_array(ten, 2, 4).shape == (10, 2)  # the same layout: kept
    token = begin_batch(ten, 0, 4, _stats(4))
    record_progress(Progress(first, 0, 2, token), 0, 4, 0)
    remade = progress_array(ten, 3, 4)  # another task layout: made anew, empty
    assert remade.shape == (10, 3) and (remade[:] == 0).all()
    resize_ledger(ten, 13)
    assert ten[f"{LEDGER}/progress"].shape == (13, 3)


def test_progress_on_a_local_disk_is_a_journal_of_whole_records(ten: zarr.Group, tmp_path: Path) -> None:
    """Records appended by the tasks; a torn or corrupt one is ignored; a new batch empties the journal."""
    progress = progress_array(ten, 1, 4)
    token = begin_batch(ten, 0, 10, _stats(10))
    record_progress(Progress(progress, 0, 1, token), 0, 4, 0)
    record_progress(Progress(progress, 0, 1, token), 4, 8, 0)
    journal = tmp_path / "ten.zarr" / LEDGER / "progress" / "journal"
    assert journal.stat().st_size == 40
    assert not any(path.name.startswith("c") for path in journal.parent.iterdir())  # no chunk files
    assert done_flags(ten)[:10].tolist() == [WRITTEN] * 8 + [0] * 2

    data = bytearray(journal.read_bytes())
    data[25] ^= 0xFF  # the second record's first image: its checksum no longer matches
    journal.write_bytes(bytes(data) + data[:7])  # and a torn record at the end
    assert done_flags(ten)[:10].tolist() == [WRITTEN] * 4 + [0] * 6

    # a record appended after a torn one is off the records' boundaries: lost too, never misread
    record_progress(Progress(progress, 0, 1, token), 8, 10, 0)
    assert done_flags(ten)[:10].tolist() == [WRITTEN] * 4 + [0] * 6
    assert settle_batch(ten) == 4
    begin_batch(ten, 4, 10, _stats(6))
    assert journal.stat().st_size == 0


def test_progress_on_an_object_store_is_written_into_its_chunks() -> None:
    group = zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    create_ledger(group, 6)
    progress = progress_array(group, 2, 2)
    token = begin_batch(group, 0, 6, _stats(6))
    for block in (0, 1):
        record_progress(Progress(progress, 0, 2, token), 0, 4, block)
    record_progress(Progress(progress, 0, 2, token), 4, 6, 1)
    assert progress[:].tolist() == [[token, token]] * 4 + [[0, token]] * 2
    assert done_flags(group).tolist() == [WRITTEN] * 4 + [0, 0]


def test_a_batch_recorded_in_done_is_forgotten(ten: zarr.Group, tmp_path: Path) -> None:
    """Once done holds the batch, its records say nothing more (a ledger edited later is believed)."""
    progress = progress_array(ten, 1, 2)
    token = begin_batch(ten, 0, 4, _stats(4))
    record_progress(Progress(progress, 0, 1, token), 0, 4, 0)
    mark_done(ten, 0, 4)
    end_batch(ten)
    assert (tmp_path / "ten.zarr" / LEDGER / "progress" / "journal").stat().st_size == 0
    assert ten[LEDGER].attrs["batch"] == {"token": token}
    ten[f"{LEDGER}/done"][2:4] = 0
    assert done_flags(ten)[:4].tolist() == [WRITTEN, WRITTEN, 0, 0]
    assert begin_batch(ten, 2, 4, _stats(2)) == token + 1  # tokens keep counting
