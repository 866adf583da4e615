"""pipeline.ndfilters against scipy.ndimage: dask-image's test grid for convolve/correlate and
scipy's own known-value cases, on NumPy arrays and on Dask arrays chunked smaller than the kernel.

The grids follow dask-image's tests/test_dask_image/test_ndfilters/test__conv.py (its shapes,
chunkings, kernels, origins and bad arguments with the exceptions it expects) and the known arrays
of scipy's ndimage/tests/test_filters.py (test_correlate01…26); the code is ours.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline import ndfilters
from pipeline.errors import PipelineError

FUNCTIONS = {"convolve": (ndfilters.convolve, ndimage.convolve), "correlate": (ndfilters.correlate, ndimage.correlate)}
# Every border mode scipy's filters take, written out so that one dropped from the module shows.
MODES = ("reflect", "constant", "nearest", "mirror", "wrap", "grid-mirror", "grid-constant", "grid-wrap")
# scipy's test types: every integer width, signed and not, and both floats.
TYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64)
DISK = (np.mgrid[-2:3, -2:3] ** 2).sum(axis=0) < 2.5**2  # dask-image's boolean footprint


@pytest.fixture(autouse=True)
def _one_thread():
    with dask.config.set(scheduler="synchronous"):  # hundreds of tiny graphs: threads only add overhead
        yield


def both(name: str):
    return pytest.mark.parametrize("ours, scipys", [FUNCTIONS[name]], ids=[name])


each_function = pytest.mark.parametrize("name", list(FUNCTIONS))


def assert_same(got, expected, *, exact: bool = False) -> None:
    """Our result is scipy's: dtype, shape, and values (bytes for integers; floats to their rounding)."""
    got = np.asarray(got)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if exact or expected.dtype.kind not in "fc":
        np.testing.assert_array_equal(got, expected)
    else:
        tol = 2e-6 if expected.dtype in (np.float32, np.complex64) else 1e-12
        np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * max(1.0, float(np.abs(expected).max(initial=0))))


# --- dask-image's grid ---------------------------------------------------------------------------


@each_function
@pytest.mark.parametrize(
    "error, weights, origin",
    [
        (ValueError, np.ones((1,)), 0),
        (ValueError, np.ones((1, 0)), 0),
        (RuntimeError, np.ones((1, 1)), (0,)),
        (RuntimeError, np.ones((1, 1)), [(0,)]),
        (ValueError, np.ones((1, 1)), 1),
        (TypeError, np.ones((1, 1)), 0.0),
        (TypeError, np.ones((1, 1)), (0.0, 0.0)),
        (TypeError, np.ones((1, 1)), 1 + 0j),
        (TypeError, np.ones((1, 1)), (0 + 0j, 1 + 0j)),
    ],
)
def test_bad_arguments_raise_what_dask_image_raises(name: str, error, weights, origin) -> None:
    image = da.from_array(np.arange(140.0).reshape(10, 14), chunks=(5, 7))
    with pytest.raises(error) as raised:
        FUNCTIONS[name][0](image, weights, origin=origin)
    assert isinstance(raised.value, PipelineError) and raised.value.exit_code == 2  # one family with the CLI
    with pytest.raises(error):  # the same on NumPy, before any work
        FUNCTIONS[name][0](image.compute(), weights, origin=origin)


@each_function
@pytest.mark.parametrize("mode", ["zero", "grid", ""])
def test_an_unknown_mode_is_scipys_runtime_error_naming_the_modes(name: str, mode: str) -> None:
    with pytest.raises(RuntimeError, match="mode must be one of reflect"):
        FUNCTIONS[name][0](np.ones((3, 3)), np.ones((2, 2)), mode=mode)
    with pytest.raises(RuntimeError):  # scipy agrees that it is one
        FUNCTIONS[name][1](np.ones((3, 3)), np.ones((2, 2)), mode=mode)


@each_function
def test_a_sequence_of_modes_is_refused_as_by_scipy(name: str) -> None:
    for function in FUNCTIONS[name]:
        with pytest.raises(RuntimeError):
            function(np.ones((3, 3)), np.ones((2, 2)), mode=["nearest", "reflect"])


@each_function
def test_origin_below_the_kernel_is_refused_as_by_scipy(name: str) -> None:
    for function in FUNCTIONS[name]:
        with pytest.raises(ValueError):
            function(np.ones((6, 6)), np.ones((5, 5)), origin=-3)


@each_function
def test_shape_stays_plain_ints(name: str) -> None:
    result = FUNCTIONS[name][0](da.from_array(np.arange(140.0).reshape(10, 14), chunks=(5, 7)), np.ones((1, 1)))
    assert all(type(n) is int for n in result.shape)


@each_function
def test_results_stack_and_concatenate_as_arrays(name: str) -> None:
    data = np.random.default_rng(0).random((3, 12, 14))
    images = da.from_array(data, chunks=(3, 6, 7))
    each = [FUNCTIONS[name][0](images[i], np.ones((1, 1))) for i in range(len(images))]
    np.testing.assert_array_equal(da.stack(each).compute(), data)
    np.testing.assert_array_equal(da.concatenate([e[None] for e in each]).compute(), data)


@both("convolve")
def test_identity_kernel_leaves_the_image(ours, scipys) -> None:
    data = np.arange(140.0).reshape(10, 14)
    result = ours(da.from_array(data, chunks=(5, 7)), np.ones((1, 1)))
    assert isinstance(result, da.Array) and result.chunks == ((5, 5), (7, 7))
    assert_same(result.compute(), data, exact=True)
    assert_same(result.compute(), scipys(data, np.ones((1, 1))), exact=True)


DASK_IMAGE_CASES = [
    (np.ones((2, 2)), 0),
    (np.ones((2, 3)), 0),
    (np.ones((2, 3)), (0, 1)),
    (np.ones((2, 3)), (0, -1)),
    (DISK, 0),
    (DISK, (1, 2)),
    (DISK, (-1, -2)),
    (np.ones((5, 5)), 0),
    (np.ones((7, 7)), 0),
    (np.ones((8, 8)), 0),
    (np.ones((10, 10)), 0),
    (np.ones((5, 5)), 2),
    (np.ones((5, 5)), -2),
]


# dask-image's chunks in every mode; chunks smaller than most of the kernels in each distinct rule
# (the grid-* names are aliases of three of them)
GRID_CHUNKS = [((5, 7), mode) for mode in MODES] + [((3, 4), mode) for mode in MODES[:5]]


@each_function
@pytest.mark.parametrize("weights, origin", DASK_IMAGE_CASES, ids=range(len(DASK_IMAGE_CASES)))
@pytest.mark.parametrize("chunks, mode", GRID_CHUNKS, ids=[f"{c[0]}x{c[1]}-{m}" for c, m in GRID_CHUNKS])
def test_dask_image_grid_equals_scipy_in_every_mode(name: str, weights, origin, mode: str, chunks) -> None:
    data = np.arange(140.0).reshape(10, 14)
    ours, scipys = FUNCTIONS[name]
    expected = scipys(data, weights, mode=mode, cval=2.5, origin=origin)
    lazy = ours(da.from_array(data, chunks=chunks), weights, mode=mode, cval=2.5, origin=origin)
    assert lazy.chunks == da.from_array(data, chunks=chunks).chunks
    assert_same(lazy.compute(), expected)
    assert_same(ours(data, weights, mode=mode, cval=2.5, origin=origin), expected)


@each_function
@pytest.mark.parametrize("dtype", TYPES + (np.bool_,))
@pytest.mark.parametrize("mode", ["reflect", "constant", "wrap"])
def test_every_dtype_is_scipys_dtype_and_values_integers_byte_for_byte(name: str, dtype, mode: str) -> None:
    data = (np.random.default_rng(3).random((9, 11)) * 120).astype(dtype)
    weights = np.random.default_rng(4).normal(size=(3, 4))
    ours, scipys = FUNCTIONS[name]
    expected = scipys(data, weights, mode=mode, cval=3)
    assert_same(ours(data, weights, mode=mode, cval=3), expected)
    assert_same(ours(da.from_array(data, chunks=(4, 3)), weights, mode=mode, cval=3).compute(), expected)


def test_uint8_wraps_exactly_as_scipy_does() -> None:
    # what code written against scipy.ndimage relies on; pipeline.convolve promotes instead
    image = np.full((4, 5), 200, dtype=np.uint8)
    expected = ndimage.convolve(image, np.ones((3, 3)))
    assert expected.dtype == np.uint8 and expected[1, 1] == 1800 % 256
    assert_same(ndfilters.convolve(da.from_array(image, chunks=2), np.ones((3, 3))).compute(), expected)


@each_function
@pytest.mark.parametrize("output", [np.float32, np.float64, np.int16, "uint8"])
def test_output_dtype_is_honoured(name: str, output) -> None:
    data = np.arange(48, dtype=np.uint8).reshape(6, 8)
    ours, scipys = FUNCTIONS[name]
    expected = scipys(data, np.full((3, 3), 0.5), output=output)
    assert_same(ours(data, np.full((3, 3), 0.5), output=output), expected)
    assert_same(ours(da.from_array(data, chunks=3), np.full((3, 3), 0.5), output=output).compute(), expected)


def test_an_output_array_is_filled_for_numpy_and_refused_for_dask() -> None:
    data = np.arange(12.0).reshape(3, 4)
    target = np.zeros((3, 4), dtype=np.float32)
    assert ndfilters.correlate(data, np.ones((2, 2)), output=target) is target
    assert_same(target, ndimage.correlate(data, np.ones((2, 2)), output=np.float32))
    with pytest.raises(TypeError, match="lazy"):
        ndfilters.correlate(da.from_array(data), np.ones((2, 2)), output=target)


@pytest.mark.parametrize("shape, chunks, weights", [
    ((17,), (4,), np.array([1.0, -2.0, 0.5, 3.0])),
    ((6, 9, 10), (2, 4, 3), np.random.default_rng(5).normal(size=(3, 2, 5))),
    ((6, 9, 10), (3, 9, 10), np.random.default_rng(6).normal(size=(1, 3, 3))),
], ids=["1-D", "3-D", "3-D slices"])
@each_function
@pytest.mark.parametrize("mode", ["reflect", "nearest", "mirror", "wrap", "constant"])
def test_any_ndim_equals_scipy(name: str, shape, chunks, weights, mode: str) -> None:
    data = np.random.default_rng(7).normal(size=shape)
    ours, scipys = FUNCTIONS[name]
    expected = scipys(data, weights, mode=mode, cval=-1.0)
    assert_same(ours(da.from_array(data, chunks=chunks), weights, mode=mode, cval=-1.0).compute(), expected)
    assert_same(ours(data.astype(np.float32), weights, mode=mode, cval=-1.0), scipys(data.astype(np.float32), weights, mode=mode, cval=-1.0))


@each_function
@pytest.mark.parametrize("axes, origin", [(0, 1), (1, -1), ((-1,), 0), ((0, 2), (0, -1)), ((2, 0), (1, 0))])
def test_axes_filters_the_named_axes_only(name: str, axes, origin) -> None:
    data = np.random.default_rng(8).normal(size=(5, 6, 7))
    weights = np.random.default_rng(9).normal(size=(3,) * len(np.atleast_1d(axes)))
    ours, scipys = FUNCTIONS[name]
    expected = scipys(data, weights, axes=axes, origin=origin)
    assert_same(ours(da.from_array(data, chunks=2), weights, axes=axes, origin=origin).compute(), expected)


@each_function
def test_complex_kernels_and_images_follow_scipy(name: str) -> None:
    rng = np.random.default_rng(10)
    image = rng.normal(size=(7, 8))
    weights = rng.normal(size=(3, 3)) + 1j * rng.normal(size=(3, 3))
    ours, scipys = FUNCTIONS[name]
    for data in (image, image + 1j * image[::-1]):
        expected = scipys(data, weights, mode="constant")
        assert_same(ours(da.from_array(data, chunks=3), weights, mode="constant").compute(), expected)


@each_function
def test_kernels_longer_than_the_image_equal_scipy(name: str) -> None:
    data = np.random.default_rng(11).normal(size=(4, 5))
    weights = np.random.default_rng(12).normal(size=(9, 11))
    ours, scipys = FUNCTIONS[name]
    for mode in MODES:
        assert_same(ours(da.from_array(data, chunks=2), weights, mode=mode).compute(), scipys(data, weights, mode=mode))


@settings(max_examples=40, deadline=None, database=None)
@given(
    shape=st.tuples(st.integers(1, 12), st.integers(1, 12)),
    kernel=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    chunk=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    mode=st.sampled_from(MODES),
    name=st.sampled_from(sorted(FUNCTIONS)),
    dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
    origin_seed=st.integers(0, 2**16),
    seed=st.integers(0, 2**16),
)
def test_any_chunking_origin_and_mode_equals_scipy(shape, kernel, chunk, mode, name, dtype, origin_seed, seed) -> None:
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 100).astype(dtype)
    weights = rng.normal(size=kernel)
    origin = tuple(int(np.random.default_rng(origin_seed + i).integers(-(m // 2), (m - 1) // 2 + 1)) for i, m in enumerate(kernel))
    ours, scipys = FUNCTIONS[name]
    expected = scipys(data, weights, mode=mode, cval=1.5, origin=origin)
    assert_same(ours(da.from_array(data, chunks=chunk), weights, mode=mode, cval=1.5, origin=origin).compute(), expected)


# --- scipy.ndimage's known values (test_filters.py: test_correlate01…26) --------------------------


# (array, weights, correlation, convolution, options): scipy's arrays and expected outputs.
KNOWN = {
    "01": ([1, 2], [2], [2, 4], [2, 4], {}),
    "02": ([1, 2, 3], [1], [1, 2, 3], [1, 2, 3], {}),
    "03": ([1], [1, 1], [2], [2], {}),
    "04": ([1, 2], [1, 1], [2, 3], [3, 4], {}),
    "05": ([1, 2, 3], [1, 1], [2, 3, 5], [3, 5, 6], {}),
    "06": ([1, 2, 3], [1, 2, 3], [9, 14, 17], [7, 10, 15], {}),
    "07": ([1, 2, 3], [1, 2, 1], [5, 8, 11], [5, 8, 11], {}),
    "08": ([1, 2, 3], [1, 2, -1], [1, 2, 5], [3, 6, 7], {}),
    "11": ([[1, 2, 3], [4, 5, 6]], [[1, 1], [1, 1]], [[4, 6, 10], [10, 12, 16]], [[12, 16, 18], [18, 22, 24]], {}),
    "12": ([[1, 2, 3], [4, 5, 6]], [[1, 0], [0, 1]], [[2, 3, 5], [5, 6, 8]], [[6, 8, 9], [9, 11, 12]], {}),
    "17": ([1, 2, 3], [1, 1], [3, 5, 6], [2, 3, 5], {"origin": -1}),
    "18": ([[1, 2, 3], [4, 5, 6]], [[1, 0], [0, 1]], [[6, 8, 9], [9, 11, 12]], [[2, 3, 5], [5, 6, 8]],
           {"mode": "nearest", "origin": -1}),
    "19": ([[1, 2, 3], [4, 5, 6]], [[1, 0], [0, 1]], [[5, 6, 8], [8, 9, 11]], [[3, 5, 6], [6, 8, 9]],
           {"mode": "nearest", "origin": [-1, 0]}),
    # scipy's correlate1d/convolve1d along axis 0, as `axes=0`
    "21": ([[1, 2, 3], [2, 4, 6]], [1, 2, 1], [[5, 10, 15], [7, 14, 21]], [[5, 10, 15], [7, 14, 21]], {"axes": 0}),
    "22": ([[1, 2, 3], [2, 4, 6]], [1, 2, 1], [[6, 12, 18], [6, 12, 18]], [[6, 12, 18], [6, 12, 18]], {"axes": 0, "mode": "wrap"}),
    "23": ([[1, 2, 3], [2, 4, 6]], [1, 2, 1], [[5, 10, 15], [7, 14, 21]], [[5, 10, 15], [7, 14, 21]], {"axes": 0, "mode": "nearest"}),
    "24": ([[1, 2, 3], [2, 4, 6]], [1, 2, 1], [[7, 14, 21], [8, 16, 24]], [[4, 8, 12], [5, 10, 15]],
           {"axes": 0, "mode": "nearest", "origin": -1}),
    "25": ([[1, 2, 3], [2, 4, 6]], [1, 2, 1], [[4, 8, 12], [5, 10, 15]], [[7, 14, 21], [8, 16, 24]],
           {"axes": 0, "mode": "nearest", "origin": 1}),
    "26": ([1.0], [1.0] * 5, [5.0], [5.0], {"mode": "mirror"}),  # gh-11661: mirror of a length-1 signal
}


@pytest.mark.parametrize("case", list(KNOWN))
@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
def test_scipy_known_values(case: str, lazy: bool) -> None:
    array, weights, correlation, convolution, options = KNOWN[case]
    data = np.asarray(array)
    image = da.from_array(data, chunks=1) if lazy else data
    for function, expected in ((ndfilters.correlate, correlation), (ndfilters.convolve, convolution)):
        got = function(image, np.asarray(weights), **options)
        assert isinstance(got, da.Array) == lazy
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected, dtype=data.dtype))
        assert np.asarray(got).dtype == data.dtype


@pytest.mark.parametrize("lazy", [False, True], ids=["numpy", "dask"])
def test_scipy_empty_arrays(lazy: bool) -> None:  # test_correlate09, test_correlate10
    for data, weights in ((np.array([]), np.array([1, 1])), (np.array([[]]), np.array([[1, 1]]))):
        image = da.from_array(data) if lazy else data
        for function in (ndfilters.correlate, ndfilters.convolve):
            got = np.asarray(function(image, weights))
            assert got.shape == data.shape and got.dtype == data.dtype


@pytest.mark.parametrize("dtype_array", TYPES)
@pytest.mark.parametrize("dtype_output", TYPES)
def test_scipy_known_values_in_every_output_dtype(dtype_array, dtype_output) -> None:  # test_correlate13/14
    data = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype_array)
    weights = np.array([[1, 0], [0, 1]])
    for lazy in (False, True):
        image = da.from_array(data, chunks=1) if lazy else data
        got = np.asarray(ndfilters.correlate(image, weights, output=dtype_output))
        np.testing.assert_array_equal(got, [[2, 3, 5], [5, 6, 8]])
        assert got.dtype == dtype_output
        got = np.asarray(ndfilters.convolve(image, weights, output=dtype_output))
        np.testing.assert_array_equal(got, [[6, 8, 9], [9, 11, 12]])
        assert got.dtype == dtype_output
    target = np.zeros(data.shape, dtype=dtype_output)  # test_correlate14: an output array
    ndfilters.correlate(data, weights, output=target)
    np.testing.assert_array_equal(target, [[2, 3, 5], [5, 6, 8]])


@pytest.mark.parametrize("dtype_array", TYPES)
def test_scipy_known_values_with_float32_output(dtype_array) -> None:  # test_correlate15, 16, 18, 19
    data = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype_array)
    cases = [
        ([[1, 0], [0, 1]], {}, [[2, 3, 5], [5, 6, 8]], [[6, 8, 9], [9, 11, 12]]),
        ([[0.5, 0], [0, 0.5]], {}, [[1, 1.5, 2.5], [2.5, 3, 4]], [[3, 4, 4.5], [4.5, 5.5, 6]]),
        ([[1, 0], [0, 1]], {"mode": "nearest", "origin": -1}, [[6, 8, 9], [9, 11, 12]], [[2, 3, 5], [5, 6, 8]]),
        ([[1, 0], [0, 1]], {"mode": "nearest", "origin": [-1, 0]}, [[5, 6, 8], [8, 9, 11]], [[3, 5, 6], [6, 8, 9]]),
    ]
    for weights, options, correlation, convolution in cases:
        for image in (data, da.from_array(data, chunks=(1, 2))):
            got = np.asarray(ndfilters.correlate(image, np.array(weights), output=np.float32, **options))
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, correlation, rtol=1e-6)
            got = np.asarray(ndfilters.convolve(image, np.array(weights), output=np.float32, **options))
            np.testing.assert_allclose(got, convolution, rtol=1e-6)


@pytest.mark.parametrize("dtype_array", TYPES)
@pytest.mark.parametrize("dtype_output", TYPES)
def test_scipy_known_values_along_axis_0(dtype_array, dtype_output) -> None:  # test_correlate20, 22
    data = np.array([[1, 2, 3], [2, 4, 6]], dtype=dtype_array)
    for mode, expected in (("reflect", [[5, 10, 15], [7, 14, 21]]), ("wrap", [[6, 12, 18], [6, 12, 18]])):
        for function in (ndfilters.correlate, ndfilters.convolve):
            target = np.zeros((2, 3), dtype=dtype_output)
            function(data, np.array([1, 2, 1]), axes=0, mode=mode, output=target)
            np.testing.assert_array_equal(target, expected)
