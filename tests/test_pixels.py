"""Pixels → arrays: colour modes, bit depths and scales, against numpy; mixed collections through the CLI."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from helpers import assert_error, assert_ok, read_store
from pipeline.errors import InputError
from pipeline.pixels import check_depth, color_mode, convert_pixels, value_range

RNG = np.random.default_rng(3)
LUMA = np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize(
    "color, alpha, mode", [("gray", None, "gray"), ("keep", None, "keep"), ("keep", "keep", "keep"),
                           ("keep", "drop", "opaque"), ("rgb", None, "rgb"), ("rgb", "drop", "rgb"), ("rgb", "keep", "rgba")]
)
def test_colour_modes(color: str, alpha: str | None, mode: str) -> None:
    assert color_mode(color, alpha) == mode


@pytest.mark.parametrize("channels", [0, 2, 3, 4], ids=["gray", "gray+alpha", "rgb", "rgba"])
@pytest.mark.parametrize("mode", ["gray", "keep", "opaque", "rgb", "rgba"])
def test_conversion_matches_numpy(mode: str, channels: int) -> None:
    pixels = RNG.integers(0, 256, (5, 6, channels) if channels else (5, 6), dtype=np.uint8)
    planes = pixels.astype(np.float64)
    planes = planes[np.newaxis] if channels == 0 else np.moveaxis(planes, -1, 0)
    colour, alpha = (planes[:-1], planes[-1:]) if channels in (2, 4) else (planes, None)
    if mode == "gray":
        expected = colour[0] if len(colour) == 1 else np.tensordot(LUMA, colour, axes=1)
    elif mode == "keep":
        expected = planes
    elif mode == "opaque":
        expected = colour
    else:
        rgb = np.repeat(colour, 3, axis=0) if len(colour) == 1 else colour
        opaque = np.full((1, 5, 6), 255.0)
        expected = rgb if mode == "rgb" else np.concatenate([rgb, alpha if alpha is not None else opaque])
    got = convert_pixels(pixels, color=mode, dtype="float64")
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_bgr_pixels_come_out_in_rgb_order() -> None:
    rgb = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    for mode in ("keep", "rgb"):
        np.testing.assert_array_equal(
            convert_pixels(rgb[..., ::-1].copy(), color=mode, dtype="float32", bgr=True),
            convert_pixels(rgb, color=mode, dtype="float32"),
        )


@pytest.mark.parametrize("dtype, divisor", [(np.uint8, 255.0), (np.uint16, 65535.0), (np.bool_, 1.0), (np.float32, 1.0)])
def test_unit_scale_divides_by_the_types_maximum(dtype, divisor: float) -> None:
    pixels = (RNG.random((4, 4)) * (255 if dtype == np.uint8 else 60000)).astype(dtype)
    np.testing.assert_allclose(convert_pixels(pixels, color="gray", dtype="float64", scale="unit"), pixels / divisor)


def test_value_ranges() -> None:
    assert value_range(np.dtype("uint8")) == (0.0, 255.0)
    assert value_range(np.dtype("uint16"), "unit") == (0.0, 1.0)
    assert value_range(np.dtype("int16"), "unit") == (-32768 / 32767, 1.0)
    assert value_range(np.dtype("float32")) == (-np.inf, np.inf)


def test_a_file_of_another_depth_is_named() -> None:
    check_depth("a.png", np.dtype("uint8"), "uint8", "a.png")
    check_depth("b.tif", np.dtype("uint16"), None, "a.png")  # scale unit: any depth
    with pytest.raises(InputError, match=r"'b.tif' is 16-bit \(uint16\) but 'a.png', the first image, is 8-bit"):
        check_depth("b.tif", np.dtype("uint16"), "uint8", "a.png")


@pytest.fixture
def mixed_depths(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    folder = tmp_path / "mixed"
    folder.mkdir()
    low = RNG.integers(0, 256, (12, 10), dtype=np.uint8)
    high = RNG.integers(0, 65536, (12, 10), dtype=np.uint16)
    iio.imwrite(folder / "a.png", low)
    tifffile.imwrite(folder / "b.tif", high)
    iio.imwrite(folder / "c.png", high)  # a 16-bit PNG
    return folder, [low, high, high]


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_mixed_bit_depths_are_refused_naming_the_file(mixed_depths, run_cli, write_config, tmp_path: Path, dtype: str) -> None:
    folder, _ = mixed_depths
    config = write_config({"input": {"paths": str(folder)}, "steps": [], "output": {"path": str(tmp_path / "o.zarr"), "dtype": dtype}})
    line = assert_error(run_cli("run", config), 3, "b.tif", "16-bit (uint16)", "8-bit (uint8)", "input.scale: unit")
    assert "a.png" in line


def test_unit_scale_lets_bit_depths_share_a_collection(mixed_depths, run_cli, write_config, tmp_path: Path) -> None:
    folder, pixels = mixed_depths
    out = tmp_path / "unit.zarr"
    config = write_config(
        {"input": {"paths": str(folder), "scale": "unit"}, "steps": [{"convolve": {"kernel": "blur"}}],
         "output": {"path": str(out), "dtype": "uint16"}}
    )
    result = run_cli("run", config)
    assert_ok(result)
    assert "warning" not in result.stderr  # a blur of [0, 1] fits; then it is the cast's business
    stored, prov, _ = read_store(out)
    from scipy import ndimage

    for image, source in zip(stored, pixels):
        scaled = source / float(np.iinfo(source.dtype).max)
        expected = np.clip(np.rint(ndimage.uniform_filter(scaled, 3, mode="reflect")), 0, 65535)
        np.testing.assert_array_equal(image, expected)
    assert prov["config"]["input"]["scale"] == "unit"


def test_rgb_mixes_gray_and_colour_photographs(tmp_path: Path, run_cli, write_config) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    gray = RNG.integers(0, 256, (8, 9), dtype=np.uint8)
    rgba = RNG.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    iio.imwrite(folder / "a.png", gray)
    iio.imwrite(folder / "b.png", rgba)
    for alpha, channels in ((None, 3), ("keep", 4)):
        out = tmp_path / f"rgb-{alpha}.zarr"
        config = write_config({"input": {"paths": str(folder), "color": "rgb", **({"alpha": alpha} if alpha else {})},
                               "steps": [], "output": {"path": str(out)}})
        assert_ok(run_cli("run", config))
        stored, _, _ = read_store(out)
        assert stored.shape == (2, channels, 8, 9)
        np.testing.assert_array_equal(stored[0, :3], np.stack([gray] * 3))
        np.testing.assert_array_equal(stored[1, :3], np.moveaxis(rgba[..., :3], -1, 0))
        if channels == 4:
            np.testing.assert_array_equal(stored[0, 3], np.full((8, 9), 255.0))  # opaque
            np.testing.assert_array_equal(stored[1, 3], rgba[..., 3])
