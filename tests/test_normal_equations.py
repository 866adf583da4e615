"""The tile parts of the normal equations against the explicit design matrix, and tiles adding up.

``design_matrix`` and ``photo`` are the oracles the solver and gradient tests share.
"""

from __future__ import annotations

import doctest
from math import prod

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from pipeline.learning import normal_equations, tiles
from pipeline.learning.normal_equations import NormalParts, accumulate
from pipeline.learning.tiles import tile_window


def design_matrix(x: np.ndarray, kernel: tuple[int, ...], *, bias: bool) -> np.ndarray:
    """One row per valid position, one column per weight (channel, then offset in C order)."""
    ndim = len(kernel)
    windows = sliding_window_view(x, kernel, axis=tuple(range(1, ndim + 1)))  # (C, *valid, *kernel)
    rows = np.moveaxis(windows, 0, ndim).reshape(-1, x.shape[0] * prod(kernel))
    return np.hstack([rows, np.ones((rows.shape[0], 1))]) if bias else rows


def photo(shape: tuple[int, ...], *, channels: int = 1, seed: int = 0, detail: float = 0.05) -> np.ndarray:
    """A photo-like image (C, *shape): smooth structure at several scales, some fine detail, an offset."""
    rng = np.random.default_rng(seed)
    image = np.full((channels, *shape), 0.5)
    for sigma, amplitude in ((0, detail), (1, 0.2), (3, 0.3), (8, 0.4)):
        for c in range(channels):
            layer = ndimage.gaussian_filter(rng.normal(size=shape), sigma) if sigma else rng.normal(size=shape)
            image[c] += amplitude * layer / layer.std()
    return image


def whole_image_parts(x: np.ndarray, y: np.ndarray, kernel: tuple[int, ...], *, bias: bool) -> NormalParts:
    """The parts of a whole (input, same-shaped target) image pair, read as one tile."""
    window = tile_window(x.shape[1:], kernel, tuple(slice(None) for _ in kernel))
    return accumulate(x[(slice(None), *window.x)], y, kernel, bias=bias, valid_region=window.valid)


def assert_close(actual: np.ndarray, expected: np.ndarray, relative: float) -> None:
    """Equal to ``relative`` times the largest entry of ``expected`` (a matrix norm, not per entry)."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=relative * np.abs(expected).max())


CASES = [  # (image shape, kernel, channels C, outputs K)
    ((40,), (5,), 1, 1),
    ((31,), (4,), 3, 2),
    ((23, 31), (3, 7), 3, 2),
    ((20, 18), (4, 6), 1, 1),
    ((12, 20), (1, 5), 2, 1),  # a row kernel on a 2-D image
    ((24, 24), (15, 15), 1, 1),
    ((6, 9), (5, 7), 2, 1),  # barely larger than the kernel
    ((9, 10, 11), (3, 3, 3), 3, 2),
    ((8, 9, 7), (2, 3, 4), 1, 2),
]


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("shape, kernel, channels, outputs", CASES, ids=[f"{c[0]}-{c[1]}-C{c[2]}K{c[3]}" for c in CASES])
def test_parts_equal_those_of_the_explicit_design_matrix(shape, kernel, channels, outputs, bias):
    x = photo(shape, channels=channels, seed=1) - 0.5
    valid = tuple(n - m + 1 for n, m in zip(shape, kernel))
    y = np.random.default_rng(2).normal(size=(outputs, *valid))
    parts = accumulate(x, y, kernel, bias=bias)

    design = design_matrix(x, kernel, bias=bias)
    targets = y.reshape(outputs, -1).T
    assert parts.gram.shape == (design.shape[1],) * 2 and parts.count == design.shape[0]
    assert_close(parts.gram, design.T @ design, 1e-9)
    assert_close(parts.cross, design.T @ targets, 1e-9)
    np.testing.assert_allclose(parts.y_sq, np.sum(targets**2, axis=0), rtol=1e-12)
    np.testing.assert_allclose(parts.y_sum, np.sum(targets, axis=0), rtol=1e-12)


def test_float32_blocks_are_accumulated_in_float64():
    x = photo((300, 300), seed=3).astype(np.float32)
    y = x[:, 1:-1, 1:-1] * np.float32(0.3)
    parts = accumulate(x, y, (3, 3), bias=True)
    design = design_matrix(x.astype(np.float64), (3, 3), bias=True)
    assert parts.gram.dtype == np.float64
    # float32 sums over 90 000 positions would be off by ~1e-4 relative.
    assert_close(parts.gram, design.T @ design, 1e-12)
    assert_close(parts.cross, design.T @ y.astype(np.float64).reshape(1, -1).T, 1e-12)


def _cuts(size: int, most: int):
    """Cut points of one axis: tiles of any size from 1 sample up, smaller than the kernel too."""
    return st.lists(st.integers(1, size - 1), max_size=most, unique=True).map(lambda c: [0, *sorted(c), size])


def _tile_sum(x: np.ndarray, y: np.ndarray, kernel: tuple[int, ...], cuts: list[list[int]], *, bias: bool):
    total = 0
    grids = np.meshgrid(*[np.arange(len(c) - 1) for c in cuts], indexing="ij")
    for index in zip(*(g.ravel() for g in grids)):
        own = tuple(slice(c[i], c[i + 1]) for c, i in zip(cuts, index))
        window = tile_window(x.shape[1:], kernel, own)
        total = total + accumulate(x[(slice(None), *window.x)], y[(slice(None), *own)], kernel, bias=bias,
                                   valid_region=window.valid)
    return total


TILED = [((37, 29), (5, 4), 2, 2), ((45,), (6,), 1, 1), ((10, 9, 8), (3, 3, 2), 1, 1)]


@pytest.mark.parametrize("shape, kernel, channels, outputs", TILED, ids=[str(c[1]) for c in TILED])
@settings(max_examples=25, deadline=None, derandomize=True)
@given(data=st.data())
def test_the_tiles_of_an_image_add_up_to_the_whole_image(shape, kernel, channels, outputs, data):
    most = {1: 8, 2: 5, 3: 2}[len(shape)]  # at most 9, 36 or 27 tiles
    cuts = [data.draw(_cuts(n, most), label=f"cuts of axis {axis}") for axis, n in enumerate(shape)]
    bias = data.draw(st.booleans(), label="bias")
    x = photo(shape, channels=channels, seed=4)
    y = np.random.default_rng(5).normal(size=(outputs, *shape))
    whole = whole_image_parts(x, y, kernel, bias=bias)
    tiled = _tile_sum(x, y, kernel, cuts, bias=bias)

    assert tiled.count == whole.count == prod(n - m + 1 for n, m in zip(shape, kernel))
    for name in ("gram", "cross", "y_sq", "y_sum"):
        assert_close(getattr(tiled, name), getattr(whole, name), 1e-10)


def test_whole_image_targets_count_the_valid_positions_only():
    """Targets of the input's shape: those whose window leaves the image are left out."""
    x = photo((30, 26), seed=6)
    y = np.random.default_rng(7).normal(size=(1, 30, 26))
    parts = whole_image_parts(x, y, (4, 5), bias=False)
    inner = y[:, 2:-1, 2:-2]  # ndimage centring: m // 2 before, m - 1 - m // 2 after
    design = design_matrix(x, (4, 5), bias=False)
    assert_close(parts.cross, design.T @ inner.reshape(1, -1).T, 1e-12)
    assert parts.y_sq[0] == pytest.approx(np.sum(inner**2), rel=1e-12)


@pytest.mark.parametrize(
    "size, kernel, own, x, valid",
    [
        (10, 3, slice(0, 4), slice(0, 5), slice(1, 4)),  # first tile: the border position is not valid
        (10, 3, slice(4, 7), slice(3, 8), slice(0, 3)),  # interior: halo on both sides
        (10, 3, slice(7, 10), slice(6, 10), slice(0, 2)),  # last tile
        (10, 4, slice(0, 3), slice(0, 4), slice(2, 3)),  # even kernel: 2 before, 1 after
        (10, 4, slice(8, 10), slice(6, 10), slice(0, 1)),
        (10, 4, slice(9, 10), slice(0, 0), slice(0, 0)),  # nothing valid in this tile
        (10, 5, slice(0, 2), slice(0, 0), slice(0, 0)),  # a tile smaller than the reach
        (10, 1, slice(3, 5), slice(3, 5), slice(0, 2)),
    ],
)
def test_tile_window_reads_the_windows_of_the_valid_positions(size, kernel, own, x, valid):
    assert tile_window((size,), (kernel,), (own,)) == tiles.TileWindow(x=(x,), valid=(valid,))


def test_a_tile_without_valid_positions_adds_nothing():
    parts = accumulate(np.ones((2, 0, 0)), np.ones((1, 1, 3)), (3, 3), bias=True, valid_region=(slice(0, 0),) * 2)
    assert parts.count == 0 and not parts.gram.any() and parts.gram.shape == (19, 19)
    assert sum([parts, parts]).count == 0


@pytest.mark.parametrize(
    "x_shape, y_shape, kernel, valid_region, message",
    [
        ((1, 10, 10), (1, 8, 9), (3, 3), None, "expected (10, 11)"),
        ((1, 10, 10), (1, 8, 8), (3,), None, "with 1 spatial axes"),
        ((1, 10, 10), (1, 10, 10), (3, 3), (slice(1, 9),), "valid_region must have 2 slices"),
        ((1, 10, 10), (0, 8, 8), (3, 3), None, "at least one channel"),
        ((1, 10, 10), (1, 8, 8), (3, 0), None, "positive sizes"),
    ],
)
def test_blocks_that_do_not_fit_are_refused(x_shape, y_shape, kernel, valid_region, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        accumulate(np.zeros(x_shape), np.zeros(y_shape), kernel, bias=False, valid_region=valid_region)


def test_parts_of_different_layouts_do_not_add():
    one = accumulate(np.ones((1, 5, 5)), np.ones((1, 3, 3)), (3, 3), bias=False)
    other = accumulate(np.ones((1, 5, 5)), np.ones((1, 3, 3)), (3, 3), bias=True)
    with pytest.raises(ValueError, match="different layouts"):
        one + other


def test_examples_in_docstrings_hold():
    for module in (normal_equations, tiles):
        assert doctest.testmod(module).failed == 0
