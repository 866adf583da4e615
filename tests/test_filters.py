"""The array functions (pipeline.filters) against scipy, numpy and skimage, on NumPy and Dask inputs.

``same`` is checked against scipy.ndimage.convolve/correlate with ``mode=boundary``; ``valid`` and
``full`` against numpy.convolve on vectors and scipy.signal.convolve/correlate in 2-D and 3-D;
``layer`` against a sum of scipy.ndimage.correlate per channel; ``pool`` against
skimage.measure.block_reduce. Dask inputs are chunked smaller than the kernels.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from scipy import ndimage, signal
from skimage.measure import block_reduce

import pipeline
from pipeline import activation, convolve, correlate, kernel, layer, pool
from pipeline.errors import ArgumentTypeError, KernelError, PipelineError, UnsupportedArgument
from pipeline.steps.kernels import build_kernel

RNG = np.random.default_rng(2024)
BOUNDARIES = ("reflect", "nearest", "mirror", "wrap", "constant")
STRATEGIES = ("auto", "direct", "separable", "fft")


@pytest.fixture(autouse=True)
def _one_thread():
    with dask.config.set(scheduler="synchronous"):  # many tiny graphs: threads only add overhead
        yield


def close(got, expected, dtype=np.float64) -> None:
    tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-10
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, rtol=tol, atol=tol * max(1.0, np.abs(expected).max()))


# (shape, chunks smaller than the kernel, kernel) for 1-D, 2-D and 3-D
CASES = {
    "1-D": ((23,), (4,), RNG.normal(size=7)),
    "2-D": ((13, 17), (3, 4), RNG.normal(size=(5, 4))),
    "3-D": ((7, 9, 8), (2, 3, 4), RNG.normal(size=(3, 5, 2))),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("correlating", [False, True], ids=["convolve", "correlate"])
def test_same_equals_scipy_ndimage_for_numpy_and_dask(case: str, boundary: str, correlating: bool) -> None:
    shape, chunks, weights = CASES[case]
    data = RNG.normal(size=shape)
    oracle = ndimage.correlate if correlating else ndimage.convolve
    expected = oracle(data, weights, mode=boundary, cval=2.5)
    function = correlate if correlating else convolve
    got = function(data, weights, boundary=boundary, cval=2.5)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    close(got, expected)
    lazy = function(da.from_array(data, chunks=chunks), weights, boundary=boundary, cval=2.5)
    assert isinstance(lazy, da.Array) and lazy.chunks == da.from_array(data, chunks=chunks).chunks
    close(lazy.compute(), expected)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("mode", ["valid", "full"])
@pytest.mark.parametrize("correlating", [False, True], ids=["convolve", "correlate"])
def test_valid_and_full_equal_scipy_signal(case: str, mode: str, correlating: bool) -> None:
    shape, chunks, weights = CASES[case]
    data = RNG.normal(size=shape)
    expected = (signal.correlate if correlating else signal.convolve)(data, weights, mode=mode, method="direct")
    function = correlate if correlating else convolve
    close(function(data, weights, mode=mode), expected)
    lazy = function(da.from_array(data, chunks=chunks), weights, mode=mode)
    assert isinstance(lazy, da.Array)
    close(lazy.compute(), expected)


@pytest.mark.parametrize("mode", ["valid", "full", "same"])
def test_vectors_are_numpy_convolve(mode: str) -> None:
    f, g = RNG.normal(size=40), RNG.normal(size=6)
    if mode == "same":  # numpy's same pads with zeros and centres an even kernel its own way
        expected = ndimage.convolve(f, g, mode="constant")
    else:
        expected = np.convolve(f, g, mode=mode)
    close(convolve(f, g, mode=mode, boundary="constant"), expected)
    close(convolve(da.from_array(f, chunks=5), g, mode=mode, boundary="constant").compute(), expected)
    if mode != "same":
        close(correlate(f, g, mode=mode), np.correlate(f, g, mode=mode))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strategies_change_how_never_what(strategy: str, dtype) -> None:
    data = RNG.normal(size=(3, 20, 24)).astype(dtype)
    weights = kernel("gaussian", sigma=1.5)
    expected = np.stack([ndimage.convolve(image.astype(np.float64), weights, mode="mirror") for image in data])
    got = convolve(da.from_array(data, chunks=(1, 7, 9)), weights, boundary="mirror", strategy=strategy).compute()
    assert got.dtype == dtype
    close(got, expected, dtype)


def test_leading_axes_are_batches_and_a_short_kernel_filters_the_last_axes() -> None:
    data = RNG.normal(size=(2, 3, 11, 12))  # (N, C, y, x)
    weights = RNG.normal(size=(3, 3))
    expected = np.stack([[ndimage.convolve(plane, weights, mode="nearest") for plane in image] for image in data])
    close(convolve(data, weights, boundary="nearest"), expected)
    close(convolve(da.from_array(data, chunks=(1, 2, 5, 5)), weights, boundary="nearest").compute(), expected)
    rows = RNG.normal(size=5)
    close(convolve(data, rows), ndimage.convolve1d(data, rows, axis=-1, mode="reflect"))


@pytest.mark.parametrize("dtype, computed", [
    (np.uint8, np.float32), (np.int8, np.float32), (np.uint16, np.float32), (np.int16, np.float32), (np.bool_, np.float32),
    (np.int32, np.float64), (np.uint32, np.float64), (np.int64, np.float64), (np.float16, np.float32),
])
def test_integers_are_promoted_never_wrapped(dtype, computed) -> None:
    data = (RNG.random((9, 10)) * (1 if dtype == np.bool_ else 120)).astype(dtype)
    expected = ndimage.convolve(data.astype(np.float64), np.ones((3, 3)), mode="reflect")
    for x in (data, da.from_array(data, chunks=4)):
        got = np.asarray(convolve(x, np.ones((3, 3))))
        assert got.dtype == computed
        close(got, expected, computed)


def test_uint8_two_hundreds_give_eighteen_hundred() -> None:
    lazy = convolve(da.full((6, 6), 200, dtype=np.uint8, chunks=3), np.ones((3, 3)))
    assert lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.compute(), np.full((6, 6), 1800.0, dtype=np.float32))


def test_empty_arrays_stay_empty_in_same_and_are_refused_otherwise() -> None:
    assert convolve(np.ones((3, 0)), [1.0, 2.0]).shape == (3, 0)
    assert convolve(da.ones((0, 4), chunks=2), np.ones((2, 2))).compute().shape == (0, 4)
    with pytest.raises(UnsupportedArgument, match="no samples to filter"):
        convolve(np.ones(0), [1.0], mode="full")


def test_built_in_names_are_kernels() -> None:
    data = RNG.normal(size=(10, 10))
    close(convolve(data, "sobel_x"), ndimage.convolve(data, build_kernel("sobel_x").weights, mode="reflect"))
    np.testing.assert_array_equal(kernel("gaussian", sigma=2.0), build_kernel("gaussian", {"sigma": 2.0}).weights)
    np.testing.assert_array_equal(kernel("box", size=4, ndim=1), np.full(4, 0.25))


@pytest.mark.parametrize("call, error, words", [
    (lambda: convolve(np.ones((5, 5)), np.ones((3, 3)), mode="reflect"), KernelError,
     "mode must be one of same, valid, full; got 'reflect'; for scipy.ndimage's boundary modes use boundary='reflect', or pipeline.ndfilters"),
    (lambda: convolve(np.ones((5, 5)), np.ones((3, 3)), mode="grid-mirror"), KernelError, "boundary='reflect'"),
    (lambda: convolve(np.ones((5, 5)), np.ones((3, 3)), boundary="zero"), KernelError, "boundary must be one of reflect, nearest, mirror, wrap, constant; got 'zero'"),
    (lambda: convolve(np.ones((5, 5)), np.ones((3, 3)), strategy="gemm"), KernelError, "strategy must be one of auto, direct, separable, fft"),
    (lambda: convolve(np.ones(5), np.ones((3, 3))), UnsupportedArgument, "kernel has 2 dimensions but x has only 1"),
    (lambda: convolve(np.ones((2, 5)), np.ones((3, 3)), mode="valid"), KernelError, "larger than the image"),
    (lambda: convolve(np.ones((5, 5), dtype=complex), np.ones((3, 3))), ArgumentTypeError, "complex"),
    (lambda: convolve("image.png", np.ones((3, 3))), ArgumentTypeError, "NumPy or Dask array"),
    (lambda: convolve(np.ones((5, 5)), np.full((3, 3), np.nan)), KernelError, "NaN"),
    (lambda: convolve(np.ones((5, 5)), "gausian"), KernelError, "did you mean 'gaussian'"),
    (lambda: convolve(np.ones((5, 5)), np.ones((3, 3)), cval="0"), ArgumentTypeError, "cval must be a real number"),
    (lambda: kernel("gaussian", sigma=-1.0), KernelError, "sigma must be a positive number"),
    (lambda: activation(np.ones(3), "relu", slope=0.1), KernelError, "activation 'relu' takes no parameters; got slope"),
    (lambda: activation(np.ones(3), "clip"), KernelError, "clip needs min, max or both"),
    (lambda: activation(np.ones(3), "softmax"), KernelError, "function must be one of relu"),
    (lambda: pool(np.ones((3, 3)), size=4), KernelError, "pool size [4, 4] is larger than the image"),
    (lambda: pool(np.ones(8)), UnsupportedArgument, "at least 2"),
    (lambda: pool(np.ones((4, 4)), size=1.5), ArgumentTypeError, "size must be positive integers"),
    (lambda: layer(np.ones((2, 8, 8)), np.ones((4, 3, 3, 3))), UnsupportedArgument, "x has 2 channels"),
    (lambda: layer(np.ones((8, 8)), np.ones((4, 3))), UnsupportedArgument, "give (K, C, kh, kw)"),
    (lambda: layer(np.ones((1, 8, 8)), np.ones((4, 1, 3, 3)), bias=np.ones(3)), UnsupportedArgument, "one value per output channel"),
    (lambda: layer(np.ones((1, 8, 8)), np.ones((4, 1, 3, 3)), stride=0), KernelError, "stride must be at least 1"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_bad_arguments_say_what_and_how_to_fix(call, error, words: str) -> None:
    with pytest.raises(error) as raised:
        call()
    assert words in str(raised.value)
    assert isinstance(raised.value, PipelineError) and raised.value.exit_code == 2
    assert "\n" not in str(raised.value) and "steps.0" not in str(raised.value)


def test_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        convolve(np.ones((4, 4)), np.ones((3, 3)), "valid")  # type: ignore[misc]
    with pytest.raises(TypeError):
        pool(np.ones((4, 4)), "max", 2)  # type: ignore[misc]


def test_the_caller_s_array_is_never_modified() -> None:
    data = RNG.normal(size=(6, 6))
    kept = data.copy()
    activation(data, "relu")
    activation(da.from_array(data, chunks=3), "tanh").compute()
    convolve(data, np.ones((1, 1)))
    np.testing.assert_array_equal(data, kept)


# --- layer ------------------------------------------------------------------------------------------


def bank_oracle(image: np.ndarray, weights: np.ndarray, bias, boundary: str = "reflect") -> np.ndarray:
    """(C, y, x) through (K, C, kh, kw): output k = sum_c correlate(image[c], weights[k, c]) + bias[k]."""
    out = np.stack([sum(ndimage.correlate(image[c], weights[k, c], mode=boundary) for c in range(weights.shape[1]))
                    for k in range(weights.shape[0])])
    return out + (0.0 if bias is None else np.asarray(bias)[:, None, None])


@pytest.mark.parametrize("strategy", ["auto", "direct", "gemm", "fft"])
def test_layer_is_a_sum_of_correlations_plus_bias(strategy: str) -> None:
    images = RNG.normal(size=(2, 3, 12, 13))
    weights, bias = RNG.normal(size=(4, 3, 3, 3)), RNG.normal(size=4)
    expected = np.stack([bank_oracle(image, weights, bias) for image in images])
    close(layer(images, weights, bias, strategy=strategy), expected)
    close(layer(images[0], weights, bias, strategy=strategy), expected[0])  # unbatched (C, y, x)
    lazy = layer(da.from_array(images, chunks=(1, 3, 5, 4)), weights, bias, strategy=strategy)
    assert isinstance(lazy, da.Array) and lazy.shape == (2, 4, 12, 13)
    close(lazy.compute(), expected)


def test_layer_valid_strided_is_pytorch_s_conv2d_without_padding() -> None:
    image = RNG.normal(size=(2, 11, 14))
    weights, bias = RNG.normal(size=(3, 2, 3, 3)), RNG.normal(size=3)
    same = bank_oracle(image, weights, bias)
    expected = same[:, 1:-1, 1:-1][:, ::2, ::3]  # valid, then every stride-th output
    got = layer(image, weights, bias, mode="valid", stride=(2, 3))
    assert got.shape == (3, 5, 4)
    close(got, expected)
    close(layer(da.from_array(image, chunks=(2, 4, 5)), weights, bias, mode="valid", stride=(2, 3)).compute(), expected)


def test_layer_of_gray_images_and_flipped_kernels() -> None:
    images = RNG.normal(size=(3, 10, 9))  # (N, y, x) with (K, kh, kw) weights
    weights = RNG.normal(size=(2, 3, 3))
    expected = np.stack([[ndimage.convolve(image, w, mode="nearest") for w in weights] for image in images])
    close(layer(images, weights, boundary="nearest", correlate=False), expected)
    close(layer(images[0], weights, boundary="nearest", correlate=False), expected[0])


def test_layer_promotes_integers() -> None:
    image = np.full((1, 5, 5), 200, dtype=np.uint8)
    got = layer(image, np.ones((1, 1, 3, 3)))
    assert got.dtype == np.float32 and got[0, 2, 2] == 1800.0


# --- activation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("function, params, oracle", [
    ("relu", {}, lambda x: np.maximum(x, 0)),
    ("leaky_relu", {"slope": 0.2}, lambda x: np.where(x >= 0, x, 0.2 * x)),
    ("tanh", {}, np.tanh),
    ("sigmoid", {}, lambda x: 1 / (1 + np.exp(-x))),
    ("abs", {}, np.abs),
    ("clip", {"min": -0.5, "max": 0.25}, lambda x: np.clip(x, -0.5, 0.25)),
])
def test_activations_are_their_formulas(function: str, params, oracle) -> None:
    data = RNG.normal(size=(4, 7)) * 3
    close(activation(data, function, **params), oracle(data))
    lazy = activation(da.from_array(data, chunks=(2, 3)), function, **params)
    assert isinstance(lazy, da.Array) and lazy.chunks == ((2, 2), (3, 3, 1))
    close(lazy.compute(), oracle(data))
    assert activation(data.astype(np.int16), function, **params).dtype == np.float32


# --- pool ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("function, reducer", [("max", np.max), ("mean", np.mean), ("min", np.min)])
@pytest.mark.parametrize("size", [2, 3, (2, 3)])
def test_pool_is_block_reduce_without_the_ragged_edge(function: str, reducer, size) -> None:
    data = RNG.normal(size=(2, 13, 17))
    ky, kx = (size, size) if isinstance(size, int) else size
    ny, nx = 13 // ky, 17 // kx
    expected = block_reduce(data[:, : ny * ky, : nx * kx], (1, ky, kx), func=reducer)
    close(pool(data, function, size=size), expected)
    lazy = pool(da.from_array(data, chunks=(1, 5, 4)), function, size=size)
    assert isinstance(lazy, da.Array)
    close(lazy.compute(), expected)


def test_pool_same_padding_and_overlapping_windows() -> None:
    data = RNG.normal(size=(11, 10))
    close(pool(data, "max", size=3, padding="same"), block_reduce(data, (3, 3), func=np.max, cval=-np.inf))
    windows = np.array([[data[y : y + 3, x : x + 3].max() for x in range(0, 8, 2)] for y in range(0, 9, 2)])
    close(pool(data, "max", size=3, stride=2), windows)
    close(pool(da.from_array(data, chunks=3), "max", size=3, stride=2).compute(), windows)
    l2 = block_reduce(data[:10, :10], (2, 2), func=lambda w, axis: np.sqrt(np.sum(w * w, axis=axis)))
    close(pool(data, "l2"), l2)


# --- the package --------------------------------------------------------------------------------------


def test_the_package_exports_the_functions() -> None:
    assert pipeline.convolve is convolve and pipeline.layer is layer and pipeline.kernel is kernel
    assert pipeline.ndfilters.convolve.__module__ == "pipeline.ndfilters"
    assert {"convolve", "correlate", "layer", "activation", "pool", "kernel", "ndfilters"} <= set(dir(pipeline))
    with pytest.raises(AttributeError):
        pipeline.no_such_function  # noqa: B018
