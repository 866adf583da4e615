"""Kernels as data: built-ins, parameters, inline matrices and kernel files, good and bad."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, signal

from helpers import assert_error
from pipeline.errors import KernelError
from pipeline.steps.kernels import BUILTINS, MAX_KERNEL_ELEMENTS, build_kernel, check_matrix, load_kernel_file


def weights(spec, params=None) -> np.ndarray:
    return build_kernel(spec, params).weights


# --- built-ins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_builds_a_finite_float_kernel(name: str) -> None:
    kernel = build_kernel(name)
    assert kernel.source == name
    assert kernel.weights.dtype == np.float64
    assert 1 <= kernel.weights.ndim <= 3 and kernel.weights.size > 0
    assert np.isfinite(kernel.weights).all()


@pytest.mark.parametrize(
    "spec, params, expected",
    [
        ("edge", None, [[1, 1, 1], [1, -8, 1], [1, 1, 1]]),
        ("blur", None, np.ones((3, 3)) / 9),
        ("identity", None, [[0, 0, 0], [0, 1, 0], [0, 0, 0]]),
        ("laplacian", None, [[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
        ("box", {"size": 4}, np.ones((4, 4)) / 16),
        ("box", {"size": 2, "ndim": 1}, [0.5, 0.5]),
        ("identity", {"size": 1}, [[1]]),
    ],
)
def test_known_matrices(spec: str, params, expected) -> None:
    np.testing.assert_array_equal(weights(spec, params), np.asarray(expected, dtype=float))


def test_builtin_constants_are_copies() -> None:
    weights("edge")[1, 1] = 100.0
    assert weights("edge")[1, 1] == -8.0


@pytest.mark.parametrize("params", [{}, {"sigma": 0.7}, {"sigma": 2.0, "truncate": 3.0}, {"sigma": 1.5, "ndim": 1}])
def test_gaussian_matches_scipy_gaussian_filter(params: dict) -> None:
    kernel = weights("gaussian", params)
    assert kernel.sum() == pytest.approx(1.0)
    assert kernel.shape[0] % 2 == 1
    # gaussian_filter of a delta spreads exactly the filter's weights around it.
    delta = np.zeros((41,) * kernel.ndim)
    delta[(20,) * kernel.ndim] = 1.0
    sigma, truncate = params.get("sigma", 1.0), params.get("truncate", 4.0)
    want = ndimage.gaussian_filter(delta, sigma, mode="constant", truncate=truncate)
    got = ndimage.convolve(delta, kernel, mode="constant")
    np.testing.assert_allclose(got, want, atol=1e-15)


# Derivative kernels in true-convolution orientation: d/dx of a ramp is a positive constant.
# Expected value = (sum of the smoothing part) * (x[+1] - x[-1] = 2): 4 * 2 for Sobel, 3 * 2 for Prewitt.
@pytest.mark.parametrize(
    "name, ramp_axis, slope",
    [("sobel_x", 1, 8.0), ("sobel_y", 0, 8.0), ("prewitt_x", 1, 6.0), ("prewitt_y", 0, 6.0)],
)
def test_derivative_kernels_point_uphill(name: str, ramp_axis: int, slope: float) -> None:
    yy, xx = np.mgrid[0:8, 0:9].astype(float)
    ramp, across = (xx, yy) if ramp_axis == 1 else (yy, xx)
    kernel = weights(name)
    np.testing.assert_allclose(signal.convolve2d(ramp, kernel, mode="valid"), slope)
    np.testing.assert_allclose(signal.convolve2d(across, kernel, mode="valid"), 0.0, atol=1e-12)


# --- bad names and parameters -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, params, fragments",
    [
        ("gausian", None, ["unknown kernel 'gausian'", "did you mean 'gaussian'"]),
        ("Edge", None, ["did you mean 'edge'"]),
        ("zzzz", None, ["unknown kernel", "built-in name", ".npy"]),
        ("gaussian", {"radius": 3}, ["does not take ['radius']", "sigma (default 1.0)", "truncate", "ndim"]),
        ("edge", {"size": 3}, ["does not take ['size']", "no parameters"]),
        ("box", {"size": 2.5}, ["'size' must be an integer", "2.5"]),
        ("box", {"size": True}, ["'size' must be an integer"]),
        ("gaussian", {"sigma": "wide"}, ["'sigma' must be a number", "'wide'"]),
        ("gaussian", {"sigma": False}, ["'sigma' must be a number"]),
        ("gaussian", {"sigma": 0}, ["sigma must be a positive number"]),
        ("gaussian", {"sigma": float("nan")}, ["sigma must be a positive number"]),
        ("gaussian", {"truncate": -1.0}, ["truncate must be a positive number"]),
        ("box", {"size": 0}, ["box size must be a positive integer"]),
        ("identity", {"size": 4}, ["positive odd integer"]),
        ("box", {"ndim": 4}, ["ndim must be 1, 2 or 3"]),
        ([[1, 2]], {"size": 3}, ["inline matrix takes no parameters"]),
    ],
)
def test_bad_kernel_specs_say_what_is_wrong(spec, params, fragments: list[str]) -> None:
    with pytest.raises(KernelError) as info:
        build_kernel(spec, params)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_integer_accepted_where_a_float_is_expected() -> None:
    np.testing.assert_array_equal(weights("gaussian", {"sigma": 2}), weights("gaussian", {"sigma": 2.0}))


# --- inline matrices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "matrix, shape",
    [([1, 2, 3], (3,)), ([[1, 2], [3, 4]], (2, 2)), ([[[1]], [[2]]], (2, 1, 1)), (np.eye(3, dtype=int), (3, 3))],
)
def test_good_matrices(matrix, shape: tuple[int, ...]) -> None:
    result = check_matrix(matrix, what="inline kernel")
    assert result.shape == shape and result.dtype == np.float64
    np.testing.assert_array_equal(result, np.asarray(matrix, dtype=float))
    assert build_kernel(matrix).source == "inline"


@pytest.mark.parametrize(
    "matrix, fragment",
    [
        ([[1.0, float("nan")]], "NaN or infinite"),
        ([[1.0, float("inf")]], "NaN or infinite"),
        ([], "is empty"),
        ([[]], "is empty"),
        ([[1, 2], [3]], "rectangular matrix of numbers"),
        ([["a", "b"]], "rectangular matrix of numbers"),
        ([[1, None]], "rectangular matrix of numbers"),
        (np.ones((1, 1, 1, 1)), "4 dimensions; at most 3"),
        ([[[[1]]]], "4 dimensions; at most 3"),
        ([1, [2]], "rows of equal length"),
        ([[1, 10**400]], "integer too large for a float"),
        ([["1e-3"]], "non-number ('1e-3')"),
    ],
)
def test_bad_matrices(matrix, fragment: str) -> None:
    with pytest.raises(KernelError, match="my kernel") as info:
        check_matrix(matrix, what="my kernel")
    assert fragment in str(info.value)


# --- kernel files -------------------------------------------------------------------------------

MATRIX = np.array([[1.0, -2.5, 3.0], [0.0, 4.25, -1.0]])


def _write(folder: Path, name: str, content) -> str:
    """Text goes in as written; anything else is saved with np.save (pickles allowed, to be refused)."""
    path = folder / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        np.save(path, content, allow_pickle=True)
    return str(path)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("k.npy", MATRIX, MATRIX),
        ("k.npy", np.arange(3, dtype=np.int16), [0.0, 1.0, 2.0]),
        ("k.csv", "1,-2.5,3\n0,4.25,-1\n", MATRIX),
        ("K.CSV", "1, 2, 3\n", [1.0, 2.0, 3.0]),
        ("k.txt", "1 -2.5 3\n0\t4.25   -1\n", MATRIX),
        ("k.txt", "7\n", [7.0]),
    ],
)
def test_kernel_files_load(tmp_path: Path, name: str, content, expected) -> None:
    path = _write(tmp_path, name, content)
    np.testing.assert_array_equal(load_kernel_file(path), np.asarray(expected))
    kernel = build_kernel(path)
    assert kernel.source == path
    np.testing.assert_array_equal(kernel.weights, np.asarray(expected))


@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("k.npy", np.array([{"a": 1}, None], dtype=object), "pickle"),
        ("k.npy", np.ones((2, 2, 2, 2)), "4 dimensions"),
        ("k.npy", np.array([1.0, np.nan]), "NaN or infinite"),
        ("k.csv", "a,b\n1,2\n", "not a numeric matrix"),
        ("k.csv", "1,2,3\n4,5\n", "not a numeric matrix"),
        ("k.txt", "1 2 inf\n", "NaN or infinite"),
    ],
)
def test_bad_kernel_files(tmp_path: Path, name: str, content, fragment: str) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(KernelError) as info:
        load_kernel_file(path)
    assert fragment in str(info.value) and path in str(info.value)


def test_text_saved_as_npy_is_not_called_a_pickle(tmp_path: Path) -> None:
    path = _write(tmp_path, "k.npy", "1,2,3\n")
    with pytest.raises(KernelError) as info:
        load_kernel_file(path)
    assert "pickle" not in str(info.value) and "cannot be read" in str(info.value)


def test_missing_kernel_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.npy")
    for call in (lambda: load_kernel_file(missing), lambda: build_kernel(missing)):
        with pytest.raises(KernelError, match="does not exist"):
            call()


def test_a_missing_kernel_file_with_params_is_called_missing(tmp_path: Path, monkeypatch, make_job, write_config, run_cli) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KernelError) as info:
        build_kernel("missing.npy", {"sigma": 2})
    assert str(info.value) == f"kernel file 'missing.npy' does not exist (resolved against {tmp_path})"
    raw = make_job(kernel="missing.npy", params={"sigma": 2})
    line = assert_error(run_cli("run", write_config(raw)), 2, "steps.0.convolve: kernel file 'missing.npy' does not exist")
    assert "no parameters" not in line and str(tmp_path) in line


def test_kernel_file_takes_no_params(tmp_path: Path) -> None:
    with pytest.raises(KernelError, match="takes no parameters"):
        build_kernel(_write(tmp_path, "k.npy", MATRIX), {"size": 3})


# --- sizes -----------------------------------------------------------------------------------------


def _npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "<f8") -> Path:
    """A .npy file whose header declares ``shape`` and that holds no data."""
    with path.open("wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
    return path


def test_a_npy_kernel_declaring_a_huge_shape_is_refused_from_its_header(tmp_path, make_job, write_config, run_cli) -> None:
    path = _npy_header_only(tmp_path / "huge.npy", (100000, 100000))
    line = assert_error(run_cli("run", write_config(make_job(kernel=str(path)))), 2, f"kernel file {str(path)!r} has 100000x100000")
    assert f"at most {MAX_KERNEL_ELEMENTS:,}" in line


def test_a_npy_kernel_shorter_than_its_header(tmp_path) -> None:
    path = _npy_header_only(tmp_path / "short.npy", (3, 3))
    with pytest.raises(KernelError, match="fewer values than its header declares"):
        load_kernel_file(str(path))


def test_a_too_large_inline_matrix_is_refused_before_numpy_builds_it() -> None:
    side = 2**12 + 1
    row = [0.0] * side
    with pytest.raises(KernelError, match=f"inline kernel has {side}x{side} = {side * side:,} values"):
        check_matrix([row] * side, what="inline kernel")


def test_a_deeply_nested_list_is_refused_without_recursing() -> None:
    matrix: list = [1.0]
    for _ in range(5000):
        matrix = [matrix]
    with pytest.raises(KernelError, match="has 5001 dimensions; at most 3"):
        check_matrix(matrix, what="inline kernel")


@pytest.mark.parametrize(
    "name, params, shape",
    [("gaussian", {"sigma": 1e4, "ndim": 3}, "80001x80001x80001"), ("box", {"size": 5000}, "5000x5000"),
     ("identity", {"size": 4097}, "4097x4097")],
)
def test_a_too_large_builtin_is_refused_before_it_is_built(name, params, shape) -> None:
    with pytest.raises(KernelError, match=f"{name} kernel .*has {shape} = "):
        build_kernel(name, params)


def test_the_largest_kernel_is_accepted() -> None:
    assert build_kernel("box", {"size": 2**12}).weights.size == MAX_KERNEL_ELEMENTS


def test_provenance_records_the_matrix() -> None:
    record = build_kernel("box", {"size": 2}).to_provenance()
    assert record == {"source": "box", "params": {"size": 2}, "shape": [2, 2], "matrix": [[0.25, 0.25], [0.25, 0.25]]}
