"""Volumes: multi-page TIFF stacks convolved in 3-D, read slice by slice, against scipy on the whole stack."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage, signal

from pipeline.config import validate_config
from pipeline.errors import InputError, KernelError
from pipeline.job_plan import build_plan
from pipeline.steps.kernels import build_kernel

RNG = np.random.default_rng(8)


@pytest.fixture
def stacks(tmp_path: Path) -> Path:
    folder = tmp_path / "stacks"
    folder.mkdir()
    for index in range(2):
        tifffile.imwrite(folder / f"s{index}.tif", RNG.integers(0, 4096, (9, 14, 17), dtype=np.uint16), photometric="minisblack")
    return folder


def _plan(folder: Path, steps: list, color: str = "gray", budget: str = "auto", dtype: str = "float64"):
    return build_plan(
        validate_config(
            {
                "input": {"paths": str(folder), "layout": "volume", "color": color},
                "steps": steps,
                "output": {"path": "unused.zarr", "dtype": dtype},
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


GAUSS_3D = {"convolve": {"kernel": "gaussian", "params": {"sigma": 1.0, "ndim": 3}}}


def _slab_budget(depth: int, halo: int) -> str:
    """A budget for slabs of ``depth`` float32 slices of 14 x 17 (952 bytes) read with ``halo`` each side."""
    return "auto" if depth == 9 else str(952 * (4 * depth + 2 * halo))


@pytest.mark.parametrize(
    "kernel, params, halo",
    # an even box: a 1-slice slab at the end and its halo (3 + 1 slices) were once too thin for OpenCV
    [("gaussian", {"sigma": 1.0, "ndim": 3}, 4), ("box", {"size": 6, "ndim": 3}, 3)],
    ids=["gaussian", "even box"],
)
def test_any_memory_budget_gives_the_same_bytes(stacks: Path, kernel: str, params: dict, halo: int) -> None:
    """Slabs of 1 to 9 slices, as a laptop's budget or a node's: byte for byte the same float32 result."""
    steps = [{"convolve": {"kernel": kernel, "params": params}}]
    results = {}
    for depth in (1, 2, 4, 7, 9):
        plan = _plan(stacks, steps, budget=_slab_budget(depth, halo), dtype="float32")
        assert plan.spec.chunks[0] == depth and plan.stages[0].strategies == ("separable (scipy)",)
        results[depth] = plan.result().compute(scheduler="sync")
    volume = tifffile.imread(sorted(stacks.glob("*.tif"))[0]).astype(np.float64)
    expected = ndimage.convolve(volume, build_kernel(kernel, params).weights, mode="reflect")
    np.testing.assert_allclose(results[9][0], expected, rtol=1e-5)
    for depth in (1, 2, 4, 7):
        differing = np.argwhere(results[depth] != results[9])
        assert differing.size == 0, f"slabs of {depth}: {len(differing)} values differ, e.g. at {differing[:3].tolist()}"


def test_fft_results_follow_the_slabs_to_a_few_ulp_and_the_plan_says_so(stacks: Path) -> None:
    from pipeline.steps.convolve import Convolution, bind_convolution

    steps = [{"convolve": {**GAUSS_3D["convolve"], "strategy": "fft"}}]
    results = {}
    for depth in (2, 9):
        plan = _plan(stacks, steps, budget=_slab_budget(depth, 4), dtype="float32")
        assert plan.stages[0].strategies == ("fft (scipy)",)
        results[depth] = plan.result().compute(scheduler="sync")
    weights = build_kernel("gaussian", {"sigma": 1.0, "ndim": 3}).weights
    planned = bind_convolution(Convolution(weights, strategy="fft"), ndim=4, spatial_ndim=3, dtype=np.dtype("float32"))
    assert not planned.kernel.reproducible
    np.testing.assert_allclose(results[2], results[9], rtol=0, atol=8 * np.finfo(np.float32).eps * np.abs(results[9]).max())


@pytest.mark.parametrize("steps", [[GAUSS_3D], [{"convolve": {"kernel": "box", "params": {"size": 5, "ndim": 3}}}],
                                   [GAUSS_3D, {"activation": "relu"}]],
                         ids=["gaussian", "box", "gaussian + relu"])
def test_slabs_come_raw_to_a_pass_along_z_with_the_same_bytes(stacks: Path, steps: list, monkeypatch: pytest.MonkeyPatch) -> None:
    """A separable kernel along z reads the uint16 slabs as stored (half the bytes, no converted copy):
    the store's bytes are those of slabs converted to float32 by the source."""
    from pipeline.sources import volume
    from pipeline.steps.convolve import ConvolveStep

    read: list[str] = []
    real = volume._read_slab

    def counted(*, block_id: tuple[int, ...], **options) -> np.ndarray:
        read.append(options["out_dtype"])
        return real(block_id=block_id, **options)

    monkeypatch.setattr(volume, "_read_slab", counted)
    budget = _slab_budget(4, 4)
    raw = _plan(stacks, steps, budget=budget, dtype="float32").result().compute(scheduler="sync")
    assert set(read) == {"<u2"}
    monkeypatch.setattr(ConvolveStep, "takes_raw", lambda self, *args: False)
    read.clear()
    converted = _plan(stacks, steps, budget=budget, dtype="float32").result().compute(scheduler="sync")
    assert set(read) == {"float32"} and raw.dtype == converted.dtype == np.float32
    assert np.array_equal(raw, converted)
    volume_0 = tifffile.imread(sorted(stacks.glob("*.tif"))[0]).astype(np.float64)
    kernel = steps[0]["convolve"]
    expected = ndimage.correlate(volume_0, build_kernel(kernel["kernel"], kernel["params"]).weights, mode="reflect")
    np.testing.assert_allclose(raw[0], np.maximum(expected, 0) if len(steps) > 1 else expected, rtol=1e-5)


@pytest.mark.parametrize("stored, compute, raw", [("uint16", "float32", "<u2"), ("uint8", "float32", "|u1"),
                                                  ("int32", "float32", "float32"), ("int32", "float64", "<i4"),
                                                  ("float32", "float32", "float32"), ("float64", "float32", "float32")])
def test_raw_slabs_only_where_the_compute_dtype_holds_them_exactly(stored: str, compute: str, raw: str) -> None:
    from pipeline.sources.volume import stored_dtype

    assert stored_dtype((4, 5, 6), stored, "native", compute) == raw
    assert stored_dtype((4, 5, 6), stored, "unit", compute) == compute  # divided by the type's maximum
    assert stored_dtype((4, 5, 6, 3), stored, "native", compute) == compute  # RGB pages: mixed to luma
