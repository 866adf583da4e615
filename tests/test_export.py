"""Export: what each format receives, read back from the written files."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.sinks.export import export_images, to_displayable
from pipeline.sinks.zarr_store import StoreLayout, create_store


def test_float_is_stretched_to_8_bit() -> None:
    image = np.array([[-10.0, 0.0], [10.0, 30.0]], dtype=np.float32)
    np.testing.assert_array_equal(to_displayable(image, fmt="png", normalize="auto"), [[0, 64], [128, 255]])


def test_constant_image_is_black_not_nan() -> None:
    assert to_displayable(np.full((2, 2), 5.0), fmt="png", normalize="minmax").max() == 0


@pytest.mark.parametrize(
    "dtype, fmt, kept",
    [("uint8", "png", True), ("uint16", "png", True), ("uint16", "jpeg", False), ("float32", "tiff", True), ("float32", "jpeg", False)],
)
def test_auto_keeps_what_the_format_holds(dtype: str, fmt: str, kept: bool) -> None:
    image = np.array([[0, 3], [7, 200]], dtype=dtype)
    shown = to_displayable(image, fmt=fmt, normalize="auto")
    assert (shown.dtype == image.dtype and np.array_equal(shown, image)) is kept


def test_none_clips_instead_of_stretching() -> None:
    image = np.array([[-5.0, 100.4], [300.0, 7.0]])
    np.testing.assert_array_equal(to_displayable(image, fmt="png", normalize="none"), [[0, 100], [255, 7]])


def test_channels_move_last_and_single_channel_squeezes() -> None:
    rgb = np.zeros((3, 4, 5), np.uint8)
    assert to_displayable(rgb, fmt="png", normalize="auto").shape == (4, 5, 3)
    assert to_displayable(rgb[:1], fmt="png", normalize="auto").shape == (4, 5)


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = str(tmp_path / "s.zarr")
    layout = StoreLayout((3, 4, 5), (1, 4, 5), "uint16", ("image", "y", "x"), "blosc-lz4")
    array = create_store(path, layout, sources=("a/x1.tif", "a/x2.tif", "b/x3.tif"), provenance={})
    array[:] = np.arange(60, dtype=np.uint16).reshape(3, 4, 5) * 1000
    return path


def test_files_are_named_by_index_and_source(store: str, tmp_path: Path) -> None:
    written = export_images(store, str(tmp_path / "png"), fmt="png", indices=slice(1, None))
    assert [p.name for p in written] == ["1_x2.png", "2_x3.png"]
    np.testing.assert_array_equal(iio.imread(written[0]), np.arange(20, 40).reshape(4, 5) * 1000)


def test_empty_selection_is_an_error(store: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no images selected"):
        export_images(store, str(tmp_path / "none"), indices=slice(5, 9))


def test_percentile_ignores_a_few_extreme_pixels() -> None:
    image = np.tile(np.linspace(0.0, 100.0, 200), (10, 1))
    image[0, 0] = 1e6  # one hot pixel would grey out a min-max stretch
    shown = to_displayable(image, fmt="png", normalize="percentile")
    low, high = np.percentile(image, (1, 99))
    expected = np.rint((np.clip(image, low, high) - low) / (high - low) * 255)
    np.testing.assert_array_equal(shown, expected)
    assert shown[5, 100] > 100  # mid-grey stays mid-grey
    assert to_displayable(image, fmt="png", normalize="minmax")[5, 100] == 0
