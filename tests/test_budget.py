"""Tile and slab sizes from a memory budget: pure arithmetic, checked against its own definition."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import budget as budgets
from pipeline.budget import (
    AUTO_PER_WORKER,
    MIB,
    WORKING_COPIES,
    BlockBudget,
    ImageBudget,
    available_memory,
    format_size,
    parse_size,
    slab_depth,
    tile_shape,
    whole_image_budget,
    worker_budget,
    working_set,
)

GIB = 1024 * MIB


@pytest.mark.parametrize(
    "text, size",
    [("512MiB", 512 * MIB), ("1.5 GB", 1_500_000_000), ("2gib", 2 * 1024**3), ("64kB", 64_000), ("1000", 1000),
     (1000, 1000), ("7B", 7)],
)
def test_sizes_are_parsed(text, size) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "", "0", "0MiB", "-1MiB", "12 parsecs", "1e3", "MiB", True])
def test_bad_sizes_name_the_units(text) -> None:
    with pytest.raises(ValueError, match="512MiB or 2GB"):
        parse_size(text)


@pytest.mark.parametrize(
    "setting, workers, share",
    [("auto", 1, AUTO_PER_WORKER), ("auto", 8, AUTO_PER_WORKER), ("1GiB", 4, 256 * MIB), ("1GiB", 3, 1024**3 // 3),
     ("10", 20, 1)],
)
def test_each_worker_gets_an_equal_share(setting, workers, share) -> None:
    assert worker_budget(setting, workers) == share


@pytest.mark.parametrize(
    "budget, halo, step, tile",
    [
        (96 * MIB, (7, 7), (512, 512), (2048, 2048)),  # the default on a 12000² uint16 TIFF, 15x15 kernel
        (128 * MIB, (7, 7), (512, 512), (2560, 2560)),
        (64 * MIB, (7, 7), (512, 512), (1536, 1536)),
        (128 * MIB, (0, 0), (1, 1), (2896, 2896)),  # 4 float32 copies of 2896² are just under 128 MiB
        (128 * MIB, (100, 100), (1, 1), (2845, 2845)),  # a halo costs room
        (1000, (7, 7), (512, 256), (512, 256)),  # never less than one file tile
        (128 * MIB, (7, 7), (512, 256), (2560, 2816)),
    ],
)
def test_tiles_are_the_largest_whole_file_tiles_that_fit(budget, halo, step, tile) -> None:
    assert tile_shape(budget, pixel_bytes=4, halo=halo, step=step) == tile


@pytest.mark.parametrize("budget", [10**6, 7 * MIB, 128 * MIB, 3 * 1024**3])
@pytest.mark.parametrize("halo", [0, 1, 7, 40])
def test_a_chosen_square_fits_and_one_pixel_more_would_not(budget, halo) -> None:
    (side, _) = tile_shape(budget, pixel_bytes=4, halo=(halo, halo), step=(1, 1))
    assert working_set(side * side, (side + 2 * halo) ** 2, 4) <= budget
    assert working_set((side + 1) ** 2, (side + 1 + 2 * halo) ** 2, 4) > budget


@pytest.mark.parametrize(
    "budget, halo, multiple, depth",
    [
        (96 * MIB, 2, 1, 5),  # the default, 1024² float32 slices: 5 + 2·2 read, 3·5 more held = 24 of 4 MiB
        (128 * MIB, 2, 1, 7),
        (128 * MIB, 0, 1, 8),
        (128 * MIB, 2, 16, 16),  # a store of 16-slice chunks: whole chunks, even beyond the budget
        (1 * MIB, 2, 1, 1),  # never less than one slice
        (1024 * MIB, 2, 4, 60),
    ],
)
def test_slabs_are_as_deep_as_fits(budget, halo, multiple, depth) -> None:
    assert slab_depth(budget, plane_bytes=4 * MIB, halo=halo, multiple=multiple) == depth


def test_the_halo_of_the_last_axes() -> None:
    budget = BlockBudget(halo=(2, 7, 7))
    assert budget.reach(2) == (7, 7) and budget.reach(3) == (2, 7, 7) and budget.reach(4) == (0, 2, 7, 7)
    assert BlockBudget(halo=(7,)).reach(2) == (0, 7) and BlockBudget().reach(3) == (0, 0, 0)


def test_the_working_set_counts_the_halo_once() -> None:
    assert working_set(100, 144, 4) == (144 + (WORKING_COPIES - 1) * 100) * 4


@pytest.mark.parametrize("setting, workers, limit", [("1GiB", 4, 256 * MIB), ("1GiB", 1, GIB), ("6GiB", 3, 2 * GIB)])
def test_a_whole_image_may_take_the_workers_share_of_a_given_budget(setting, workers, limit) -> None:
    assert whole_image_budget(setting, workers) == limit


@pytest.mark.parametrize("workers, limit", [(1, 8 * GIB), (8, GIB), (1000, AUTO_PER_WORKER)])
def test_auto_gives_whole_images_half_the_memory_over_the_workers(workers, limit, monkeypatch) -> None:
    monkeypatch.setattr(budgets, "available_memory", lambda: 16 * GIB)
    assert whole_image_budget("auto", workers) == limit


def test_a_resumed_store_is_held_to_no_less_than_auto(monkeypatch) -> None:
    """It reads its images as it was created to: a smaller budget cannot refuse them, a larger one counts."""
    monkeypatch.setattr(budgets, "available_memory", lambda: 16 * GIB)
    assert whole_image_budget("200kB", 8, resumed=True) == GIB
    assert whole_image_budget("64GiB", 8, resumed=True) == 8 * GIB


def test_auto_passes_a_50_megapixel_photo_on_a_laptop(monkeypatch) -> None:
    """16 GiB and 8 workers: a 50 MP photo, worked on as gray in float32, fits; 30000² pixels do not."""
    monkeypatch.setattr(budgets, "available_memory", lambda: 16 * GIB)
    gray = BlockBudget(whole=whole_image_budget("auto", 8), itemsize=4).whole_image((5774, 8660))
    assert gray.needs(8660 * 5774) <= gray.bytes < gray.needs(30000 * 30000)


def test_a_whole_image_needs_what_a_tile_of_its_size_would() -> None:
    """The working set of a block without halo, in the compute dtype, of the channels worked on."""
    assert ImageBudget(1, pixel_bytes=12).needs(100) == working_set(100, 100, 12) == 100 * 12 * WORKING_COPIES
    assert BlockBudget(whole=5 * MIB, itemsize=8).whole_image((3, 40, 50)) == ImageBudget(5 * MIB, 24)
    assert BlockBudget(whole=5 * MIB, itemsize=4).whole_image((40, 50)) == ImageBudget(5 * MIB, 4)
    assert BlockBudget().whole_image((40, 50)) is None  # not checked unless a plan says how much


def test_available_memory_is_the_least_of_ram_cgroups_and_the_address_space_limit(tmp_path, monkeypatch) -> None:
    import resource

    physical = available_memory()
    monkeypatch.setattr(budgets, "PROC_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(budgets, "CGROUP_ROOT", tmp_path / "fs")
    (tmp_path / "cgroup").write_text("4:memory:/batch/job_7\n1:cpu,cpuacct:/batch\n0::/job_7/step_0\n")
    for where, name, text in [
        ("job_7", "memory.max", f"{physical // 4}\n"),  # v2: the job's limit holds for its steps
        ("job_7/step_0", "memory.max", "max\n"),
        ("memory/batch", "memory.limit_in_bytes", f"{physical // 2}\n"),  # v1
    ]:
        (tmp_path / "fs" / where).mkdir(parents=True, exist_ok=True)
        (tmp_path / "fs" / where / name).write_text(text)
    assert available_memory() == physical // 4
    monkeypatch.setattr(resource, "getrlimit", lambda which: (physical // 8, resource.RLIM_INFINITY))
    assert available_memory() == physical // 8


@pytest.mark.parametrize("size, text", [(96 * MIB, "96 MiB"), (GIB, "1.0 GiB"), (int(15.1 * GIB), "15.1 GiB")])
def test_sizes_in_messages(size, text) -> None:
    assert format_size(size) == text
