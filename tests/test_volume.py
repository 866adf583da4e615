"""Volumes: multi-page TIFF stacks convolved in 3-D, read slice by slice, against scipy on the whole stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage, signal

from pipeline.config import validate_config
from pipeline.errors import InputError, KernelError
from pipeline.plan import build_plan
from pipeline.steps.kernels import build_kernel

RNG = np.random.default_rng(8)


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    folder = tmp_path / "stacks"
    folder.mkdir()
    for index in range(2):
        tifffile.imwrite(folder / f"s{index}.tif", RNG.integers(0, 4096, (9, 14, 17), dtype=np.uint16), photometric="minisblack")
    return folder


def _plan(folder: Path, steps: list, color: str = "gray", budget: str = "auto"):
    return build_plan(
        validate_config(
            {
                "input": {"paths": str(folder), "layout": "volume", "color": color},
                "steps": steps,
                "output": {"path": "unused.zarr", "dtype": "float64"},
                "execution": {"workers": 1, "memory_budget": budget},
            }
        )
    )


def test_3d_kernels_match_scipy_across_slabs(stacks: Path) -> None:
    steps = [
        {"convolve": {"kernel": "gaussian", "params": {"sigma": 1.0, "ndim": 3}, "boundary": "mirror"}},
        {"convolve": {"kernel": "edge"}},  # a 2-D kernel filters each slice
        {"convolve": {"kernel": "box", "params": {"size": 2, "ndim": 3}, "mode": "full"}},
    ]
    # Slices of 14 x 17 float64 (1904 bytes); the gaussian and the edge reach 4 + 0 slices along z:
    # (budget / 1904 - 2 * 4) / 4 working copies = slabs of 4 slices, whose halos cross slab boundaries.
    plan = _plan(stacks, steps, budget=str(1904 * (4 * 4 + 2 * 4)))
    assert plan.axes == ("image", "z", "y", "x") and plan.spec.chunks == (4, 14, 17)
    assert plan.chunks == (1, 1, 15, 18)  # the store: one slice per chunk, whatever the slabs
    result = plan.result().compute(scheduler="sync")
    for index, path in enumerate(sorted(stacks.glob("*.tif"))):
        volume = tifffile.imread(path).astype(np.float64)
        expected = ndimage.convolve(volume, build_kernel("gaussian", {"sigma": 1.0, "ndim": 3}).weights, mode="mirror")
        expected = ndimage.convolve(expected, build_kernel("edge").weights[None], mode="reflect")
        expected = signal.convolve(expected, np.full((2, 2, 2), 1 / 8), mode="full")
        np.testing.assert_allclose(result[index], expected, rtol=1e-10, atol=1e-9)


def _slices_read(plan, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    from pipeline.sources import volume

    ranges: list[tuple[int, int]] = []
    real = volume.read_slices
    monkeypatch.setattr(volume, "read_slices", lambda path, start, stop: ranges.append((start, stop)) or real(path, start, stop))
    plan.result(0, 1).compute(scheduler="sync")
    return sorted(ranges)


def test_every_slice_is_read_once(stacks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = _plan(stacks, [], budget=str(1904 * 4 * 3))  # slabs of 3 slices
    assert _slices_read(plan, monkeypatch) == [(0, 3), (3, 6), (6, 9)]


def test_a_slab_reads_its_halo_of_slices_too(stacks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    box = {"convolve": {"kernel": "box", "params": {"size": 5, "ndim": 3}}}
    plan = _plan(stacks, [box], budget=str(1904 * (4 * 3 + 2 * 2)))  # slabs of 3, a halo of 2 slices
    assert _slices_read(plan, monkeypatch) == [(0, 5), (1, 8), (4, 9)]
    volume = tifffile.imread(next(iter(sorted(stacks.glob("*.tif"))))).astype(np.float64)
    np.testing.assert_allclose(plan.result(0, 1).compute()[0], ndimage.convolve(volume, np.full((5, 5, 5), 1 / 125)), rtol=1e-10)


@pytest.mark.parametrize("budget, depth", [("auto", 9), ("1MiB", 9), (str(1904 * 4 * 2), 2), ("1", 1)])
def test_slabs_are_as_deep_as_the_budget_allows(stacks: Path, budget: str, depth: int) -> None:
    assert _plan(stacks, [], budget=budget).spec.chunks[0] == depth


def test_a_3d_kernel_on_2d_images_is_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "flat.tif", np.zeros((6, 6), np.uint16))
    config = validate_config(
        {
            "input": {"paths": str(tmp_path)},
            "steps": [{"convolve": {"kernel": "gaussian", "params": {"ndim": 3}}}],
            "output": {"path": "unused.zarr"},
        }
    )
    with pytest.raises(KernelError, match="3 dimensions"):
        build_plan(config)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: tifffile.imwrite(d / "s9.tif", np.zeros((4, 14, 17), np.uint16), photometric="minisblack"), r"s9\.tif.*\(4, 14, 17\)"),
        (lambda d: (d / "s9.png").write_bytes(b"x"), "not a TIFF"),
    ],
    ids=["other depth", "not a TIFF"],
)
def test_bad_volumes_are_named(stacks: Path, make, message: str) -> None:
    make(stacks)
    with pytest.raises(InputError, match=message):
        _plan(stacks, []).result().compute(scheduler="sync")


def test_volumes_are_gray(stacks: Path) -> None:
    with pytest.raises(InputError, match="gray"):
        _plan(stacks, [], color="keep")


@pytest.mark.parametrize("compression", [None, "zlib"], ids=["mapped from the file", "decoded page by page"])
def test_stored_and_compressed_stacks_read_the_same(tmp_path: Path, compression) -> None:
    from pipeline.sources.volume import read_slices

    pixels = RNG.integers(0, 4096, (6, 10, 12), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.tif", pixels, photometric="minisblack", compression=compression)
    np.testing.assert_array_equal(np.stack(list(read_slices(str(tmp_path / "s.tif"), 2, 5))), pixels[2:5])
    result = _plan(tmp_path, [{"convolve": {"kernel": "box", "params": {"size": 3, "ndim": 3}}}], budget=str(480 * 8 * 6))
    assert result.spec.chunks[0] < 6  # several slabs
    expected = ndimage.convolve(pixels.astype(np.float64), np.full((3, 3, 3), 1 / 27))
    np.testing.assert_allclose(result.result().compute()[0], expected, rtol=1e-10)
