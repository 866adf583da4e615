"""Export: what each format receives, read back from the written files."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr

from pipeline.errors import InputError, OutputError
from pipeline.sinks.export import LeftOut, describe_left_out, export_images, to_displayable
from pipeline.sinks.ledger import mark_done, mark_unreadable
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


def _store(path: str, values: np.ndarray, *, written: int) -> zarr.Group:
    """A store of ``values`` whose first ``written`` images the ledger records as written."""
    layout = StoreLayout(values.shape, (1, *values.shape[1:]), str(values.dtype), ("image", "y", "x"), "blosc-lz4")
    sources = tuple(f"a/x{index + 1}.tif" for index in range(len(values)))
    array = create_store(path, layout, sources=sources, provenance={})
    array[:written] = values[:written]
    group = zarr.open_group(path, mode="r+")
    mark_done(group, 0, written, np.zeros((written, 2), np.int64))
    return group


@pytest.fixture
def store(tmp_path: Path) -> str:
    path = str(tmp_path / "s.zarr")
    _store(path, np.arange(60, dtype=np.uint16).reshape(3, 4, 5) * 1000, written=3)
    return path


def test_files_are_named_by_index_and_source(store: str, tmp_path: Path) -> None:
    exported = export_images(store, str(tmp_path / "png"), fmt="png", indices=slice(1, None))
    assert [p.name for p in exported.written] == ["1_x2.png", "2_x3.png"] and exported.left_out == []
    np.testing.assert_array_equal(iio.imread(exported.written[0]), np.arange(20, 40).reshape(4, 5) * 1000)


@pytest.mark.parametrize("dtype", ["float32", "uint8"])
def test_images_without_pixels_are_left_out_not_written_black(tmp_path: Path, dtype: str) -> None:
    """Unreadable (ledger flag 2) and not yet written (flag 0) images hold only the fill value."""
    values = np.random.default_rng(1).integers(1, 200, (5, 4, 5)).astype(dtype)
    group = _store(str(tmp_path / "s.zarr"), values, written=3)
    mark_unreadable(group, 1, "a/x2.tif", "cannot identify image file")
    outdir = tmp_path / "png"
    exported = export_images(str(tmp_path / "s.zarr"), str(outdir), fmt="tiff")
    assert sorted(p.name for p in outdir.iterdir()) == ["0_x1.tif", "2_x3.tif"]
    assert [p.name for p in exported.written] == ["0_x1.tif", "2_x3.tif"]
    np.testing.assert_array_equal(iio.imread(outdir / "2_x3.tif"), values[2])
    assert exported.left_out == [
        LeftOut(1, "a/x2.tif", "unreadable"), LeftOut(3, "a/x4.tif", "unwritten"), LeftOut(4, "a/x5.tif", "unwritten")
    ]


def test_a_written_image_that_is_nan_throughout_is_left_out(tmp_path: Path) -> None:
    values = np.ones((2, 4, 5), np.float32)
    values[1] = np.nan
    _store(str(tmp_path / "s.zarr"), values, written=2)
    exported = export_images(str(tmp_path / "s.zarr"), str(tmp_path / "png"))
    assert [p.name for p in exported.written] == ["0_x1.png"]
    assert exported.left_out == [LeftOut(1, "a/x2.tif", "nan")]


def test_existing_files_are_replaced_only_when_asked(store: str, tmp_path: Path) -> None:
    outdir = tmp_path / "png"
    outdir.mkdir()
    (outdir / "1_x2.png").write_bytes(b"precious")
    with pytest.raises(OutputError) as caught:
        export_images(store, str(outdir))
    message = str(caught.value)
    assert caught.value.exit_code == 4
    assert str(outdir / "1_x2.png") in message and "--overwrite" in message
    assert sorted(p.name for p in outdir.iterdir()) == ["1_x2.png"]  # nothing written, nothing replaced
    assert (outdir / "1_x2.png").read_bytes() == b"precious"
    exported = export_images(store, str(outdir), overwrite=True)
    assert len(exported.written) == 3
    np.testing.assert_array_equal(iio.imread(outdir / "1_x2.png"), np.arange(20, 40).reshape(4, 5) * 1000)


def test_what_was_left_out_is_said_in_one_phrase() -> None:
    one = [LeftOut(1, "a/x.png", "unreadable")]
    assert describe_left_out(one) == "1 image left out: unreadable source 'x.png'"
    several = [LeftOut(i, f"s3://b/u{i}.png", "unreadable") for i in range(5)] + [LeftOut(9, "c/w.tif#2", "unwritten")]
    assert describe_left_out(several) == (
        "6 images left out: unreadable sources 'u0.png', 'u1.png', 'u2.png' and 2 more; not yet written 'w.tif#2'"
    )


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
