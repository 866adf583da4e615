"""z passes as sums of whole rows: against scipy.ndimage.correlate1d, and the same bytes in any band or block."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline.steps import leading_passes
from pipeline.steps.leading_passes import filter_along, source_rows

RNG = np.random.default_rng(7)
MODES = ("reflect", "mirror", "nearest", "wrap", "constant")
VECTORS = {
    "box 5": np.full(5, 0.2),
    "gauss 7": np.exp(-0.5 * (np.arange(7) - 3.0) ** 2 / 1.5**2),
    "ones 4": np.ones(4),
    "signed 3": np.array([1.0, -2.0, 0.5]),
    "one tap": np.array([3.0]),
}


def _volume(shape: tuple[int, ...], dtype) -> np.ndarray:
    return (RNG.normal(size=shape) * 10.0 ** RNG.uniform(-2, 2, shape)).astype(dtype)


def _oracle(block: np.ndarray, vector: np.ndarray, axis: int, anchor: int, mode: str) -> np.ndarray:
    # correlate1d's origin shifts the kernel's centre (m // 2) to the anchor
    origin = anchor - vector.size // 2
    return ndimage.correlate1d(block.astype(np.float64), vector, axis=axis, mode=mode, cval=0.0, origin=origin)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list(VECTORS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_agrees_with_correlate1d(mode: str, name: str, dtype) -> None:
    vector = VECTORS[name]
    block = _volume((11, 6, 37), dtype)
    for anchor in sorted({0, vector.size // 2, vector.size - 1}):
        for rows in (slice(None), slice(2, 9), slice(0, 3), slice(8, 11)):
            got = filter_along(block, vector, 0, anchor, mode, rows)
            want = _oracle(block, vector, 0, anchor, mode)[rows]
            scale = np.abs(vector).sum() * np.abs(block).max() * np.finfo(dtype).eps
            assert got.dtype == dtype and got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=0, atol=4 * scale, err_msg=f"anchor {anchor} rows {rows}")


def test_a_second_leading_axis_filters_each_of_the_first() -> None:
    block = _volume((3, 9, 5, 8), np.float32)
    vector = VECTORS["gauss 7"]
    got = filter_along(block, vector, 1, 3, "reflect", slice(1, 8))
    want = _oracle(block, vector, 1, 3, "reflect")[:, 1:8]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(block).max())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["box 5", "gauss 7"])
def test_a_sample_has_the_same_bytes_in_any_band_and_slab(mode: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bands of 16 to 37 columns and slabs read with their halo give the whole volume's bytes."""
    vector = VECTORS[name]
    reach = vector.size // 2
    volume = _volume((24, 5, 37), np.float32)
    whole = filter_along(volume, vector, 0, reach, mode, slice(None))
    for band in (16 * 4, 20 * 4, 37 * 4):
        monkeypatch.setattr(leading_passes, "BAND_BYTES", band)
        assert np.array_equal(filter_along(volume, vector, 0, reach, mode, slice(None)), whole), band
    if mode == "wrap":  # wrap reads the far edge: its slabs are the whole axis (strategies._pass_along)
        return
    for z0, depth in [(0, 4), (3, 7), (17, 7), (0, 24), (10, 1)]:
        low, high = max(0, z0 - reach), min(24, z0 + depth + reach)
        rows = slice(z0 - low, z0 - low + depth)
        got = filter_along(volume[low:high], vector, 0, reach, mode, rows)
        assert np.array_equal(got, whole[z0 : z0 + depth]), (z0, depth)


def test_nan_and_inf_reach_only_the_outputs_whose_taps_read_them() -> None:
    block = np.ones((12, 2, 16), dtype=np.float32)
    block[5, 0, 3] = np.nan
    block[5, 1, 4] = np.inf
    got = filter_along(block, VECTORS["box 5"], 0, 2, "reflect", slice(None))
    assert np.isnan(got[3:8, 0, 3]).all() and np.isinf(got[3:8, 1, 4]).all()
    assert np.isfinite(np.delete(got[:, 0, 3], range(3, 8))).all()
    assert np.isfinite(got[:, 0, 4]).all() and np.isfinite(got[:, 1, 3]).all()


def test_border_rules_read_the_rows_scipy_reads() -> None:
    assert source_rows(5, 2, 2, "reflect").tolist() == [1, 0, 0, 1, 2, 3, 4, 4, 3]
    assert source_rows(5, 2, 2, "mirror").tolist() == [2, 1, 0, 1, 2, 3, 4, 3, 2]
    assert source_rows(5, 2, 2, "nearest").tolist() == [0, 0, 0, 1, 2, 3, 4, 4, 4]
    assert source_rows(5, 2, 2, "wrap").tolist() == [3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert source_rows(5, 2, 2, "constant").tolist() == [-1, -1, 0, 1, 2, 3, 4, -1, -1]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["box 5", "gauss 7", "signed 3"])
@pytest.mark.parametrize("stored, dtype", [(np.uint16, np.float32), (np.int16, np.float32), (np.uint8, np.float64)],
                         ids=["uint16 in float32", "int16 in float32", "uint8 in float64"])
def test_raw_integers_give_the_bytes_of_converting_first(mode: str, name: str, stored, dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """A volume's raw slab, converted band by band as it is read: the bytes of the converted slab."""
    info = np.iinfo(stored)
    block = RNG.integers(info.min, info.max, (10, 4, 53), endpoint=True).astype(stored)
    vector = VECTORS[name]
    for band in (16 * np.dtype(dtype).itemsize, 1 << 17):
        monkeypatch.setattr(leading_passes, "BAND_BYTES", band)
        for rows in (slice(None), slice(2, 8)):
            got = filter_along(block, vector, 0, vector.size // 2, mode, rows, dtype)
            want = filter_along(block.astype(dtype), vector, 0, vector.size // 2, mode, rows)
            assert got.dtype == dtype and np.array_equal(got, want), (band, rows)
    # no sum wraps in the integers' own type
    top = np.full((6, 2, 8), info.max, dtype=stored)
    np.testing.assert_array_equal(filter_along(top, np.ones(5), 0, 2, "nearest", slice(None), dtype), 5.0 * info.max)
