"""The image source: listing without opening, lazy reading, gray conversion, shape checks."""

from __future__ import annotations

from pathlib import Path

import dask
import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.sources import images
from pipeline.sources.images import list_images, open_collection, read_image

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "samples"


def _write(path: Path, pixels: np.ndarray) -> Path:
    iio.imwrite(path, pixels)
    return path


@pytest.fixture
def rgb(tmp_path: Path) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)


def test_natural_order_and_dedup(tmp_path: Path, rgb: np.ndarray) -> None:
    for name in ("img10.png", "img2.png", "img1.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    listed = list_images([str(tmp_path), str(tmp_path / "img2.png")])
    assert [Path(p).name for p in listed] == ["img1.png", "img2.png", "img10.png"]


def test_glob_and_list_keep_entry_order(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    for name in ("a1.png", "a3.png", "b/b2.png"):
        (tmp_path / name).write_bytes(b"x")
    listed = list_images([str(tmp_path / "b" / "*.png"), str(tmp_path / "a*.png")])
    assert [Path(p).name for p in listed] == ["b2.png", "a1.png", "a3.png"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ("nothing-*.png", "matches no files"),
        ("missing-file.png", "does not exist"),
    ],
)
def test_missing_inputs_name_the_entry(tmp_path: Path, entry: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as info:
        list_images(str(tmp_path / entry))
    assert entry in str(info.value)


def test_directory_without_images(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="holds no images"):
        list_images(str(tmp_path))


def test_listing_does_not_open_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(50):
        (tmp_path / f"{index}.png").write_bytes(b"")
    monkeypatch.setattr(iio, "imread", lambda *a, **k: pytest.fail("listing decoded a file"))
    assert len(list_images(str(tmp_path))) == 50


def test_building_the_graph_opens_only_the_first_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _write(tmp_path / "0000.png", np.zeros((5, 4), np.uint8))
    for index in range(1, 2000):  # empty files: opening any of them would fail
        (tmp_path / f"{index:04d}.png").write_bytes(b"")
    probed: list[str] = []
    real_improps = iio.improps
    monkeypatch.setattr(iio, "improps", lambda p, **k: probed.append(p) or real_improps(p, **k))
    monkeypatch.setattr(iio, "imread", lambda *a, **k: pytest.fail("graph building decoded a file"))
    collection = open_collection(str(tmp_path))
    assert probed == [str(first)]
    assert collection.array.shape == (2000, 5, 4)
    assert collection.array.chunks[0] == (1,) * 2000


def test_gray_is_bt601_luma_on_the_original_scale(tmp_path: Path, rgb: np.ndarray) -> None:
    path = _write(tmp_path / "c.png", rgb)
    expected = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    np.testing.assert_allclose(read_image(str(path), dtype="float64"), expected, rtol=1e-12)


def test_alpha_is_dropped_for_gray(tmp_path: Path, rgb: np.ndarray) -> None:
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    gray_with_alpha = _write(tmp_path / "ga.png", np.dstack([rgb[..., 0], rgb[..., 1]]))
    np.testing.assert_allclose(
        read_image(str(_write(tmp_path / "a.png", rgba))), read_image(str(_write(tmp_path / "b.png", rgb)))
    )
    np.testing.assert_array_equal(read_image(str(gray_with_alpha)), rgb[..., 0])


def test_sixteen_bit_keeps_its_range(tmp_path: Path) -> None:
    pixels = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    path = _write(tmp_path / "w.png", pixels)
    np.testing.assert_array_equal(read_image(str(path)), pixels.astype(np.float32))


def test_keep_puts_channels_first(tmp_path: Path, rgb: np.ndarray) -> None:
    _write(tmp_path / "a.png", rgb)
    collection = open_collection(str(tmp_path), color="keep")
    assert collection.axes == ("image", "c", "y", "x")
    np.testing.assert_array_equal(collection.array.compute()[0], np.moveaxis(rgb, -1, 0))


def test_samples_load_as_one_gray_stack() -> None:
    collection = open_collection(str(SAMPLES / "*.jpg"))
    assert collection.array.shape == (8, 512, 512)
    stack = collection.array.compute()
    assert stack.dtype == np.float32 and 0 <= stack.min() and stack.max() <= 255
    assert collection.spatial_ndim == 2


def test_a_mismatched_file_fails_with_its_name(tmp_path: Path) -> None:
    _write(tmp_path / "a1.png", np.zeros((5, 4), np.uint8))
    _write(tmp_path / "a2.png", np.zeros((6, 4), np.uint8))
    collection = open_collection(str(tmp_path))
    with pytest.raises(InputError, match=r"a2\.png.*\(6, 4\).*a1\.png"):
        dask.compute(collection.array, scheduler="sync")


def test_a_corrupt_file_fails_with_its_name(tmp_path: Path) -> None:
    _write(tmp_path / "a1.png", np.zeros((5, 4), np.uint8))
    (tmp_path / "a2.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=r"cannot read image .*a2\.png"):
        open_collection(str(tmp_path)).array.compute(scheduler="sync")


def test_a_file_vanishing_after_listing(tmp_path: Path) -> None:
    _write(tmp_path / "a1.png", np.zeros((5, 4), np.uint8))
    gone = _write(tmp_path / "a2.png", np.zeros((5, 4), np.uint8))
    collection = open_collection(str(tmp_path))
    gone.unlink()
    with pytest.raises(InputError, match="disappeared"):
        collection.array.compute(scheduler="sync")


def test_unreadable_first_file(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"cannot read image .*a\.png"):
        open_collection(str(tmp_path))
