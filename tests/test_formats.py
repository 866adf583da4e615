"""Each supported file format and pixel layout decodes to the values written, on their own scale."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.sources.images import read_image

RNG = np.random.default_rng(11)
GRAY8 = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
RGB8 = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)
RGBA8 = np.dstack([RGB8, RNG.integers(0, 256, (6, 7), dtype=np.uint8)])
GRAY16 = RNG.integers(0, 65536, (6, 7), dtype=np.uint16)
FLOAT32 = RNG.normal(size=(6, 7)).astype(np.float32)


def luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114]


def _pillow(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize(
    "name, pixels, write, gray",
    [
        ("gray.png", GRAY8, iio.imwrite, GRAY8),
        ("rgb.png", RGB8, iio.imwrite, luma(RGB8)),
        ("rgba.png", RGBA8, iio.imwrite, luma(RGB8)),
        ("gray16.png", GRAY16, iio.imwrite, GRAY16),
        ("gray.tif", GRAY8, tifffile.imwrite, GRAY8),
        ("gray16.tif", GRAY16, tifffile.imwrite, GRAY16),
        ("float.tif", FLOAT32, tifffile.imwrite, FLOAT32),
        ("rgb.tif", RGB8, tifffile.imwrite, luma(RGB8)),
        ("rgb.bmp", RGB8, _pillow, luma(RGB8)),
        ("gray.bmp", GRAY8, _pillow, GRAY8),
        ("rgb.webp", RGB8, lambda path, p: Image.fromarray(p).save(path, lossless=True), luma(RGB8)),
    ],
)
def test_lossless_formats_keep_their_values(tmp_path: Path, name, pixels, write, gray) -> None:
    path = tmp_path / name
    write(path, pixels)
    np.testing.assert_allclose(read_image(str(path), dtype="float64"), gray, rtol=1e-6, atol=1e-9)
    kept = read_image(str(path), color="keep", dtype="float64")
    expected = pixels[np.newaxis] if pixels.ndim == 2 else np.moveaxis(pixels, -1, 0)
    np.testing.assert_array_equal(kept, expected.astype(np.float64))


def test_palette_images_use_their_colours(tmp_path: Path) -> None:
    path = tmp_path / "palette.png"
    Image.fromarray(RGB8).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    colours = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_allclose(read_image(str(path), dtype="float64"), luma(colours), rtol=1e-9)


def test_a_single_frame_gif(tmp_path: Path) -> None:
    path = tmp_path / "one.gif"
    Image.fromarray(GRAY8).save(path)
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    np.testing.assert_allclose(read_image(str(path), dtype="float64"), expected, atol=1e-9)


@pytest.mark.parametrize("quality", [75, 95])
def test_jpeg_decodes_as_pillow_does(tmp_path: Path, quality: int) -> None:
    path = tmp_path / "photo.jpg"
    Image.fromarray(RGB8).save(path, quality=quality)
    decoded = iio.imread(path)
    np.testing.assert_allclose(read_image(str(path), dtype="float64", gray_from="rgb"), luma(decoded), rtol=1e-9)
    kept = read_image(str(path), color="keep", dtype="float64")
    np.testing.assert_array_equal(kept, np.moveaxis(decoded, -1, 0))


@pytest.mark.parametrize("quality", [75, 95])
def test_jpeg_gray_is_its_luma_plane(tmp_path: Path, quality: int) -> None:
    """The Y plane as libjpeg gives it to Pillow in draft mode (no chroma decoded), close to the remixed RGB."""
    path = tmp_path / "photo.jpg"
    Image.fromarray(RGB8).save(path, quality=quality)
    with Image.open(path) as image:
        image.draft("L", image.size)
        plane = np.asarray(image, dtype=np.float64)
    gray = read_image(str(path), dtype="float64")
    np.testing.assert_array_equal(gray, plane)
    remixed = read_image(str(path), dtype="float64", gray_from="rgb")
    assert not np.array_equal(gray, remixed) and np.abs(gray - remixed).mean() < 1.0


def test_jpeg_luma_ignores_exif_rotation_as_rgb_does(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display: the stored pixels are what every reader here returns
    Image.fromarray(RGB8[:, :40]).save(path, quality=95, exif=exif)
    assert read_image(str(path)).shape == read_image(str(path), gray_from="rgb").shape == RGB8[:, :40].shape[:2]


def test_cmyk_jpeg_comes_out_as_colour(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(RGB8).convert("CMYK").save(path, quality=95)
    assert read_image(str(path), color="keep").shape[0] == 3
    gray, remixed = read_image(str(path), dtype="float64"), read_image(str(path), dtype="float64", gray_from="rgb")
    assert gray.shape == remixed.shape == RGB8.shape[:2] and np.abs(gray - remixed).mean() < 2.0


@pytest.mark.parametrize(
    "pixels, kept_channels",
    [(RGBA8, RGBA8[..., :3]), (np.dstack([GRAY8, GRAY8 // 2]), GRAY8[..., np.newaxis]), (RGB8, RGB8), (GRAY8, GRAY8[..., np.newaxis])],
    ids=["RGBA", "gray+alpha", "RGB", "gray"],
)
def test_opaque_keeps_colour_and_drops_alpha(tmp_path: Path, pixels, kept_channels) -> None:
    path = tmp_path / "image.png"
    iio.imwrite(path, pixels)
    opaque = read_image(str(path), color="opaque", dtype="float64")
    np.testing.assert_array_equal(opaque, np.moveaxis(kept_channels, -1, 0).astype(np.float64))


def test_alpha_drop_lets_rgba_and_rgb_share_a_collection(tmp_path: Path, run_cli, write_config) -> None:
    """keep + alpha: drop → (image, 3, y, x) for RGB and RGBA files alike; keep alone refuses the mix."""
    from helpers import assert_error, assert_ok, read_store

    folder = tmp_path / "mixed"
    folder.mkdir()
    iio.imwrite(folder / "a.png", RGBA8)
    iio.imwrite(folder / "b.png", RGB8)
    job = {"input": {"paths": str(folder), "color": "keep", "alpha": "drop"}, "steps": [], "output": {"path": str(tmp_path / "o.zarr")}}
    assert_ok(run_cli("run", write_config(job)))
    values, _, _ = read_store(tmp_path / "o.zarr")
    np.testing.assert_array_equal(values, np.stack([np.moveaxis(RGB8, -1, 0)] * 2).astype(np.float32))
    del job["input"]["alpha"]
    job["output"]["path"] = str(tmp_path / "k.zarr")
    assert_error(run_cli("run", write_config(job)), 3, "b.png", "(3, 6, 7)", "(4, 6, 7)")


@pytest.mark.parametrize(
    "pixels",
    [GRAY8, RGB8, RGBA8, GRAY16, np.dstack([GRAY8, GRAY8[::-1]]), GRAY8 > 128],
    ids=["L", "RGB", "RGBA", "I;16", "LA", "1"],
)
def test_png_pixels_are_imageios_whether_pillow_or_imageio_reads_them(tmp_path: Path, pixels: np.ndarray) -> None:
    """Plain PNG modes are read by Pillow directly, the others by imageio: the same arrays either way."""
    from pipeline.sources.decode import PLAIN_PNG_MODES, _plain_png, decode

    path = tmp_path / "x.png"
    Image.fromarray(pixels).save(path)
    read, bgr = decode(str(path))
    expected = iio.imread(path)
    assert not bgr and read.dtype == expected.dtype and np.array_equal(read, expected)
    assert (_plain_png(str(path)) is not None) == (Image.open(path).mode in PLAIN_PNG_MODES)
