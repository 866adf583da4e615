"""Tile and slab sizes from a memory budget: pure arithmetic, checked against its own definition."""

from __future__ import annotations

import pytest

from pipeline.budget import (
    AUTO_PER_WORKER,
    MIB,
    WORKING_COPIES,
    BlockBudget,
    parse_size,
    slab_depth,
    tile_shape,
    worker_budget,
    working_set,
)


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
