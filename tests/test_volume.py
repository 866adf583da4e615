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


def _plan(folder: Path, steps: list, color: str = "gray"):
    return build_plan(
        validate_config(
            {
                "input": {"paths": str(folder), "layout": "volume", "color": color},
                "steps": steps,
                "output": {"path": "unused.zarr", "dtype": "float64"},
            }
        )
    )


def test_3d_kernels_match_scipy_across_slabs(stacks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.sources import images, volume

    for module in (images, volume):  # slabs of 4 slices: halos cross slab boundaries
        monkeypatch.setattr(module, "SLAB", 4)
    steps = [
        {"convolve": {"kernel": "gaussian", "params": {"sigma": 1.0, "ndim": 3}, "boundary": "mirror"}},
        {"convolve": {"kernel": "edge"}},  # a 2-D kernel filters each slice
        {"convolve": {"kernel": "box", "params": {"size": 2, "ndim": 3}, "mode": "full"}},
    ]
    plan = _plan(stacks, steps)
    assert plan.axes == ("image", "z", "y", "x") and plan.chunks == (1, 4, 15, 18)
    result = plan.result().compute(scheduler="sync")
    for index, path in enumerate(sorted(stacks.glob("*.tif"))):
        volume = tifffile.imread(path).astype(np.float64)
        expected = ndimage.convolve(volume, build_kernel("gaussian", {"sigma": 1.0, "ndim": 3}).weights, mode="mirror")
        expected = ndimage.convolve(expected, build_kernel("edge").weights[None], mode="reflect")
        expected = signal.convolve(expected, np.full((2, 2, 2), 1 / 8), mode="full")
        np.testing.assert_allclose(result[index], expected, rtol=1e-10, atol=1e-9)


def test_every_slice_is_read_once(stacks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.sources import volume

    keys: list[int] = []
    real = volume.tifffile.imread
    monkeypatch.setattr(volume.tifffile, "imread", lambda path, key: keys.append(key) or real(path, key=key))
    _plan(stacks, []).result(0, 1).compute(scheduler="sync")
    assert sorted(keys) == list(range(9))


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
