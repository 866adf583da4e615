"""The final cast: integers are rounded to nearest and clipped to the type's range, never wrapped."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage

from pipeline.steps.cast import cast_to
from pipeline.steps.chain import convolve
from pipeline.steps.kernels import EDGE


def cast(values, dtype: str, *, scale: float = 1.0, source=np.float64) -> np.ndarray:
    arr = da.from_array(np.asarray(values, dtype=source), chunks=2)
    out = cast_to(arr, dtype, scale=scale)
    assert out.dtype == np.dtype(dtype)
    return out.compute()


@pytest.mark.parametrize(
    "dtype, values, expected",
    [
        ("uint8", [-3.0, 0.0, 7.4, 7.6, 254.6, 300.0, 1e9], [0, 0, 7, 8, 255, 255, 255]),
        ("uint8", [-0.4, 0.5, 1.5, 2.5], [0, 0, 2, 2]),  # round half to even, like np.rint
        ("uint16", [-1.0, 1234.49, 65535.4, 70000.0], [0, 1234, 65535, 65535]),
        ("int16", [-40000.0, -7.6, 7.6, 32767.6, 40000.0], [-32768, -8, 8, 32767, 32767]),
        ("int8", [-200.0, -128.4, 127.4, 200.0], [-128, -128, 127, 127]),
    ],
)
def test_rounds_and_clips(dtype: str, values: list[float], expected: list[int]) -> None:
    got = cast(values, dtype)
    np.testing.assert_array_equal(got, np.array(expected, dtype=dtype))


@pytest.mark.parametrize("source", [np.float32, np.float64])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16"])
def test_matches_numpy_clip_of_rint(dtype: str, source) -> None:
    values = np.random.default_rng(4).normal(scale=4e4, size=50)
    info = np.iinfo(dtype)
    want = np.clip(np.rint(values.astype(source)), info.min, info.max).astype(dtype)
    np.testing.assert_array_equal(cast(values, dtype, source=source), want)


def test_edge_result_never_wraps_around() -> None:
    # A white pixel among black ones: the edge kernel gives -8*255 at it and +255 around it.
    image = np.zeros((1, 7, 8))
    image[0, 3, 4] = 255.0
    image[0, 0, :] = 255.0  # and a bright row along the border
    oracle = ndimage.convolve(image, EDGE[None], mode="reflect")
    assert oracle.min() < -255 and oracle.max() > 255  # both ends really are out of range
    edges = convolve(da.from_array(image, chunks=(1, 3, 3)), EDGE, boundary="reflect")
    got = cast_to(edges, "uint8").compute()
    np.testing.assert_array_equal(got, np.clip(np.rint(oracle), 0, 255).astype(np.uint8))
    assert got[0, 3, 4] == 0  # -2040 clipped, not -2040 % 256 == 8


@pytest.mark.parametrize(
    "dtype, scale, values, expected",
    [
        ("uint8", 255.0, [0.0, 0.5, 1.0], [0, 128, 255]),  # 127.5 rounds to even: 128
        ("uint16", 65535.0, [0.0, 0.25, 1.0], [0, 16384, 65535]),
        ("uint8", 255.0, [-0.1, 1.1], [0, 255]),  # scaled first, then clipped
        ("float32", 2.0, [0.25, -1.5], [0.5, -3.0]),
    ],
)
def test_scale_multiplies_first(dtype: str, scale: float, values, expected) -> None:
    np.testing.assert_array_equal(cast(values, dtype, scale=scale), np.array(expected, dtype=dtype))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_float_outputs_are_not_rounded_or_clipped(dtype: str) -> None:
    values = np.array([-1e6, -0.4, 0.3, 7.6, 1e6])
    np.testing.assert_array_equal(cast(values, dtype), values.astype(dtype))


def test_same_dtype_is_returned_as_is() -> None:
    arr = da.from_array(np.array([0.5, 1.5]))
    assert cast_to(arr, "float64") is arr


@pytest.mark.parametrize("dtype", ["int32", "uint32"])
def test_float32_to_32_bit_integers_never_wraps(dtype: str) -> None:
    info = np.iinfo(dtype)
    got = cast([5e9, -5e9, 1.0], dtype, source=np.float32)
    np.testing.assert_array_equal(got, np.array([info.max, info.min, 1], dtype=dtype))
