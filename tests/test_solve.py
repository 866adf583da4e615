"""Kernels recovered from (photo, filtered photo) pairs; the solution against numpy's lstsq."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest
from scipy import ndimage
from test_normal_equations import design_matrix, photo, whole_image_parts

from pipeline.learning.normal_equations import NormalParts, accumulate
from pipeline.learning.solve import solve

RNG = np.random.default_rng(11)
EDGE = np.array([[1.0, 1, 1], [1, -8, 1], [1, 1, 1]])
SOBEL = np.outer([1.0, 2, 1], [-1.0, 0, 1])
GAUSSIAN_15 = np.exp(-0.5 * ((np.arange(15) - 7) / 2.5) ** 2)
GAUSSIAN_15 = np.outer(GAUSSIAN_15, GAUSSIAN_15) / GAUSSIAN_15.sum() ** 2
KERNELS = {
    "edge": EDGE,
    "sobel": SOBEL,
    "random-5x5": RNG.normal(size=(5, 5)),
    "gaussian-15x15": GAUSSIAN_15,
    "random-3x7": RNG.normal(size=(3, 7)),
    "random-3x3x3": RNG.normal(size=(3, 3, 3)),
}


def filtered_pair(kernel: np.ndarray, *, seed: int = 0, offset: float = 0.0):
    """A photo and ``ndimage.correlate`` of it (same shape; only its valid region is used)."""
    shape = (20, 22, 24) if kernel.ndim == 3 else (96, 96) if kernel.shape[0] > 9 else (64, 72)
    x = photo(shape, seed=seed)
    y = ndimage.correlate(x[0], kernel)[None] + offset
    return x, y


def assert_relative(actual, expected, relative: float) -> None:
    np.testing.assert_allclose(actual, expected, rtol=0, atol=relative * np.abs(expected).max())


@pytest.mark.parametrize("name", KERNELS)
def test_the_kernel_of_a_filtered_photo_is_recovered(name):
    kernel = KERNELS[name]
    x, y = filtered_pair(kernel)
    fit = solve(whole_image_parts(x, y, kernel.shape, bias=False))

    assert fit.weights.shape == (1, 1, *kernel.shape) and fit.bias is None
    assert_relative(fit.weights[0, 0], kernel, 1e-6)
    assert fit.rank == fit.unknowns == kernel.size and not fit.underdetermined
    assert fit.r2[0] == pytest.approx(1.0, abs=1e-9)
    assert fit.rmse[0] < 1e-6 * np.abs(y).mean()


def test_a_bias_is_recovered_with_the_kernel():
    x, y = filtered_pair(SOBEL, offset=0.7)
    fit = solve(whole_image_parts(x, y, SOBEL.shape, bias=True))
    assert_relative(fit.weights[0, 0], SOBEL, 1e-6)
    assert fit.bias == pytest.approx([0.7], rel=1e-6)
    assert fit.unknowns == 10 and fit.rank == 10


def test_a_bank_of_two_outputs_from_three_channels_is_recovered():
    bank = RNG.normal(size=(2, 3, 3, 3))  # (K, C, kh, kw)
    bias = np.array([0.25, -1.5])
    x = photo((48, 40), channels=3, seed=12)
    y = np.stack([sum(ndimage.correlate(x[c], bank[k, c]) for c in range(3)) + bias[k] for k in range(2)])
    fit = solve(whole_image_parts(x, y, (3, 3), bias=True))
    assert_relative(fit.weights, bank, 1e-6)
    np.testing.assert_allclose(fit.bias, bias, rtol=1e-6)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_noisy_targets_give_numpys_least_squares_solution(bias):
    kernel = KERNELS["random-3x7"]
    x, y = filtered_pair(kernel, seed=13, offset=0.3)
    y = y + np.random.default_rng(14).normal(scale=0.2, size=y.shape)
    fit = solve(whole_image_parts(x, y, kernel.shape, bias=bias))

    design = design_matrix(x, kernel.shape, bias=bias)
    targets = y[:, 1:-1, 3:-3].reshape(-1)
    expected, *_ = np.linalg.lstsq(design, targets, rcond=None)
    assert_relative(fit.weights.ravel(), expected[:kernel.size], 1e-8)
    if bias:
        assert fit.bias == pytest.approx(expected[-1:], rel=1e-8)
    residual = targets - design @ expected
    assert fit.rmse[0] == pytest.approx(np.sqrt(np.mean(residual**2)), rel=1e-8)
    assert fit.r2[0] == pytest.approx(1 - np.sum(residual**2) / np.sum((targets - targets.mean()) ** 2), rel=1e-8)


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("l2", [0.5, 300.0])
def test_ridge_equals_the_closed_form(l2, bias):
    x, y = filtered_pair(EDGE, seed=15, offset=2.0)
    y = y + np.random.default_rng(16).normal(scale=0.1, size=y.shape)
    fit = solve(whole_image_parts(x, y, (3, 3), bias=bias), l2=l2)

    design = design_matrix(x, (3, 3), bias=bias)
    targets = y[0, 1:-1, 1:-1].reshape(-1)
    penalty = np.eye(design.shape[1]) * l2
    if bias:
        penalty[-1, -1] = 0.0  # the bias is not penalised
    expected = np.linalg.solve(design.T @ design + penalty, design.T @ targets)
    assert_relative(fit.weights.ravel(), expected[:9], 1e-8)
    if bias:
        assert fit.bias == pytest.approx(expected[-1:], rel=1e-8)
    assert not np.allclose(fit.weights.ravel(), np.linalg.lstsq(design, targets, rcond=None)[0][:9], rtol=1e-3)


def test_a_flat_image_cannot_determine_the_kernel():
    x = np.full((1, 32, 32), 3.0)
    y = ndimage.correlate(x[0], EDGE)[None] + 1.0
    fit = solve(whole_image_parts(x, y, (3, 3), bias=True))
    # Every column of the design matrix is the same constant: one direction is determined.
    assert fit.rank == 1 and fit.underdetermined and fit.method == "eigh"
    assert fit.condition > 1e12
    # The minimum-norm solution still predicts the targets (the constant 1).
    assert 3.0 * fit.weights.sum() + fit.bias[0] == pytest.approx(1.0, rel=1e-9)
    assert fit.rmse[0] == pytest.approx(0.0, abs=1e-7) and np.isnan(fit.r2[0])


def test_stripes_determine_the_kernel_along_one_axis_only():
    stripes = np.broadcast_to(np.random.default_rng(17).normal(size=40), (40, 40))[None]
    y = ndimage.correlate(stripes[0], SOBEL)[None]
    fit = solve(whole_image_parts(stripes, y, (3, 3), bias=False))
    # Only the column sums of the kernel act on a picture that is constant down the columns.
    assert fit.rank == 3 and fit.underdetermined
    np.testing.assert_allclose(fit.weights[0, 0].sum(axis=0), SOBEL.sum(axis=0), atol=1e-9)


def test_fewer_positions_than_unknowns_is_underdetermined():
    x = photo((6, 6), seed=18)
    fit = solve(accumulate(x, x[:, 2:-2, 2:-2], (5, 5), bias=False))  # 4 positions, 25 unknowns
    assert fit.rank == 4 and fit.underdetermined


def test_an_ill_conditioned_problem_takes_the_eigen_path_and_still_fits():
    x = ndimage.gaussian_filter(np.random.default_rng(19).normal(size=(80, 80)), 6)[None]  # no fine detail
    y = ndimage.correlate(x[0], SOBEL)[None] + np.random.default_rng(20).normal(scale=1e-3, size=(1, 80, 80))
    fit = solve(whole_image_parts(x, y, (3, 3), bias=False))
    design = design_matrix(x, (3, 3), bias=False)
    expected, *_ = np.linalg.lstsq(design, y[0, 1:-1, 1:-1].ravel(), rcond=None)
    assert fit.method == "eigh" and fit.condition > 1e8 and fit.rank == 9
    assert_relative(fit.weights.ravel(), expected, 1e-5)  # a condition of ~1e10 costs digits


def test_a_well_conditioned_problem_takes_cholesky():
    x, y = filtered_pair(EDGE, seed=21)
    fit = solve(whole_image_parts(x, y, (3, 3), bias=True))
    assert fit.method == "cholesky" and 1 < fit.condition < 1e4


def test_no_positions_give_no_kernel():
    fit = solve(NormalParts.zeros((3, 3), 1, 1, bias=True))
    assert fit.rank == 0 and not fit.weights.any() and np.isnan(fit.rmse[0]) and np.isnan(fit.r2[0])


def test_bad_arguments_are_refused():
    parts = accumulate(photo((8, 8)), np.zeros((1, 6, 6)), (3, 3), bias=False)
    with pytest.raises(ValueError, match="l2 must be a finite number >= 0, got -1"):
        solve(parts, l2=-1)
    nan = accumulate(np.full((1, 8, 8), np.nan), np.zeros((1, 6, 6)), (3, 3), bias=False)
    with pytest.raises(ValueError, match="non-finite samples"):
        solve(nan)


def test_examples_in_docstrings_hold():
    assert doctest.testmod(importlib.import_module("pipeline.learning.solve")).failed == 0
