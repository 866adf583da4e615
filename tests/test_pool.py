"""Pooling block functions against skimage.measure.block_reduce and explicit windows."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import block_reduce

from pipeline.steps.pool import Pool

RNG = np.random.default_rng(21)
REDUCERS = {"max": np.max, "min": np.min, "mean": np.mean, "l2": lambda w, axis: np.sqrt(np.sum(w * w, axis=axis))}


@pytest.mark.parametrize("function", ["max", "mean", "min", "l2"])
@pytest.mark.parametrize("shape", [(2, 12, 16), (3, 13, 17), (1, 7, 5)], ids=["even", "odd", "small"])
@pytest.mark.parametrize("size", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_valid_pooling_is_block_reduce_without_the_ragged_edge(function: str, shape, size: int, dtype) -> None:
    block = RNG.standard_normal(shape).astype(dtype)
    pool = Pool(function, (size, size), (size, size))
    ny, nx = shape[1] // size, shape[2] // size
    expected = block_reduce(block[:, : ny * size, : nx * size].astype(np.float64), (1, size, size), func=REDUCERS[function])
    got = pool.apply(block)
    assert got.shape == (shape[0], ny, nx) and got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("function, func, cval", [("max", np.max, -np.inf), ("min", np.min, np.inf), ("mean", np.nanmean, np.nan)])
def test_same_padding_reduces_the_cut_windows_over_their_own_samples(function: str, func, cval) -> None:
    block = RNG.standard_normal((2, 13, 11))
    expected = block_reduce(block, (1, 3, 3), func=func, cval=cval)
    got = Pool(function, (3, 3), (3, 3), "same").apply(block)
    assert got.shape == (2, 5, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-12)


@pytest.mark.parametrize("size, stride", [((3, 3), (2, 2)), ((2, 3), (1, 2)), ((2, 2), (3, 3))], ids=["overlap", "rect", "gaps"])
def test_strided_windows_match_explicit_loops(size, stride) -> None:
    block = RNG.standard_normal((2, 11, 14))
    pool = Pool("max", size, stride)
    got = pool.apply(block)
    oy, ox = pool.output_size(11, 0), pool.output_size(14, 1)
    expected = np.empty((2, oy, ox))
    for i in range(oy):
        for j in range(ox):
            window = block[:, i * stride[0] : i * stride[0] + size[0], j * stride[1] : j * stride[1] + size[1]]
            expected[:, i, j] = window.max(axis=(1, 2))
    np.testing.assert_array_equal(got, expected)


def test_blocks_on_the_pool_grid_pool_like_the_whole_image() -> None:
    image = RNG.standard_normal((1, 40, 36)).astype(np.float32)
    for pool in (Pool("max", (2, 2), (2, 2)), Pool("mean", (3, 3), (3, 3)), Pool("max", (3, 3), (2, 2))):
        whole = pool.apply(image)
        (ky, kx), (sy, sx) = pool.size, pool.stride
        top, left = 4 * sy, 6 * sx  # a block starting on the grid, holding its windows' overlap after it
        outputs = (3, 2)
        block = image[:, top : top + (outputs[0] - 1) * sy + ky, left : left + (outputs[1] - 1) * sx + kx]
        np.testing.assert_array_equal(pool.apply(block, outputs=outputs), whole[:, 4 : 4 + outputs[0], 6 : 6 + outputs[1]])


def test_bad_pools_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Pool("max", (2, 2), (0, 0))
    with pytest.raises(ValueError, match="must be one of"):
        Pool("median", (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"pool size \[9, 9\] is larger than the image \[4, 40\]"):
        Pool("max", (9, 9), (9, 9)).check_fits((4, 40))


def test_value_ranges() -> None:
    assert Pool("max", (2, 2), (2, 2)).value_range(-1.0, 3.0) == (-1.0, 3.0)
    assert Pool("l2", (2, 2), (2, 2)).value_range(-1.0, 3.0) == (0.0, 6.0)
