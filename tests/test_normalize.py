"""Per-image rescaling against numpy computed image by image."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from pipeline.steps.normalize import normalize, unit_range_to


@pytest.fixture
def stack() -> np.ndarray:
    """Four images with very different ranges, so a global (not per-image) rescale would show."""
    rng = np.random.default_rng(11)
    scales = np.array([1.0, 100.0, 1e-3, 7.0])[:, None, None]
    offsets = np.array([0.0, -50.0, 3.0, -200.0])[:, None, None]
    return rng.normal(size=(4, 6, 7)) * scales + offsets


def run(x: np.ndarray, how: str, chunks=(1, 3, 4), image_axes: int = 1) -> np.ndarray:
    out = normalize(da.from_array(x, chunks=chunks[: x.ndim]), how, image_axes=image_axes)
    assert isinstance(out, da.Array)
    return out.compute()


def minmax_each(images) -> np.ndarray:
    return np.stack([(img - img.min()) / (img.max() - img.min()) for img in images])


def max_each(images) -> np.ndarray:
    return np.stack([img / np.abs(img).max() for img in images])


ORACLES = {"minmax": minmax_each, "max": max_each}


def test_minmax_maps_each_image_to_unit_range(stack: np.ndarray) -> None:
    got = run(stack, "minmax")
    np.testing.assert_allclose(got, minmax_each(stack), rtol=1e-12, atol=1e-15)
    for img in got:
        assert img.min() == 0.0 and img.max() == pytest.approx(1.0)


def test_max_divides_by_largest_magnitude(stack: np.ndarray) -> None:
    got = run(stack, "max")
    np.testing.assert_allclose(got, max_each(stack), rtol=1e-12)
    assert np.abs(got).reshape(4, -1).max(axis=1) == pytest.approx(1.0)
    # Signs are kept: the mostly-negative images stay negative.
    np.testing.assert_array_equal(np.sign(got), np.sign(stack))


@pytest.mark.parametrize("how", ["minmax", "max"])
@pytest.mark.parametrize("value", [0.0, 5.0, -3.0])
def test_constant_images_become_zeros(stack: np.ndarray, how: str, value: float) -> None:
    x = stack.copy()
    x[2] = value
    got = run(x, how)
    assert np.isfinite(got).all()
    if how == "minmax" or value == 0.0:
        np.testing.assert_array_equal(got[2], 0.0)
    else:  # max of a constant non-zero image: value / |value| = ±1 everywhere
        np.testing.assert_array_equal(got[2], np.sign(value))
    # ...and the other images are not disturbed by it.
    others = np.delete(stack, 2, axis=0)
    np.testing.assert_allclose(np.delete(got, 2, axis=0), ORACLES[how](others), rtol=1e-12, atol=1e-15)


def test_channels_normalised_together_with_image_axes_1() -> None:
    x = np.random.default_rng(2).normal(size=(3, 2, 5, 4)) * np.array([1.0, 10.0])[None, :, None, None]
    got = run(x, "minmax", chunks=(1, 1, 2, 3), image_axes=1)
    np.testing.assert_allclose(got, minmax_each(x), rtol=1e-12, atol=1e-15)  # over (c, y, x)


def test_each_channel_on_its_own_with_image_axes_2() -> None:
    x = np.random.default_rng(3).normal(size=(3, 2, 5, 4)) * np.array([1.0, 10.0])[None, :, None, None]
    got = run(x, "minmax", chunks=(2, 1, 5, 2), image_axes=2)
    want = minmax_each(x.reshape(6, 5, 4)).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(stack: np.ndarray, dtype) -> None:
    assert run(stack.astype(dtype), "minmax").dtype == dtype


def test_unknown_method_is_refused(stack: np.ndarray) -> None:
    with pytest.raises(ValueError, match="'zscore'"):
        normalize(da.from_array(stack), "zscore")


@pytest.mark.parametrize(
    "dtype, scale", [("uint8", 255.0), ("uint16", 65535.0), ("int16", 32767.0), ("float32", 1.0), ("float64", 1.0)]
)
def test_unit_range_to(dtype: str, scale: float) -> None:
    assert unit_range_to(np.dtype(dtype)) == scale
