"""Multi-page TIFFs and animated GIFs as collections: each page or frame is one image, checked."""

from __future__ import annotations

import os
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image
from scipy import ndimage

from conftest import SAMPLES
from helpers import assert_error, assert_ok, read_store
from pipeline.sources.frames import frame_count, frame_sources, source_file, split_source

EDGE = np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])


def photo_pages(count: int, shape=(40, 56), seed: int = 0) -> np.ndarray:
    """``count`` different uint16 crops of a real photograph: (count, y, x)."""
    photo = iio.imread(SAMPLES / "02-camera.jpg").astype(np.uint16) * 257
    rng = np.random.default_rng(seed)
    tops = rng.integers(0, photo.shape[0] - shape[0], count)
    lefts = rng.integers(0, photo.shape[1] - shape[1], count)
    return np.stack([photo[t : t + shape[0], l : l + shape[1]] for t, l in zip(tops, lefts)])


def write_stack(path: Path, pages: np.ndarray, **options) -> None:
    """One gray page per image (tifffile would take 3 or 4 pages for planar colour)."""
    tifffile.imwrite(path, pages, photometric="minisblack", **options)


def edges(images: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.convolve(image.astype(np.float64), EDGE, mode="reflect") for image in images])


def job(make_job, write_config, paths, store, **input_extra):
    raw = make_job(paths, store, "edge")
    raw["input"].update(input_extra)
    raw["execution"] = {"scheduler": "sync"}
    return write_config(raw)


def test_frame_names_round_trip() -> None:
    assert split_source("a/stack.tif#3") == ("a/stack.tif", 3)
    assert split_source("a/anim.GIF#0") == ("a/anim.GIF", 0)
    assert split_source("photo#2.jpg") == ("photo#2.jpg", None)
    assert split_source("notes.jpg#2") == ("notes.jpg#2", None)  # JPEG holds one frame
    assert source_file("s.tiff#10") == "s.tiff"
    assert frame_sources(["a.tif", "b.tif"], 2) == ["a.tif#0", "a.tif#1", "b.tif#0", "b.tif#1"]
    assert frame_sources(["a.png"], 1) == ["a.png"]


def test_multi_page_tiffs_are_one_image_per_page(tmp_path: Path, run_cli, make_job, write_config) -> None:
    folder = tmp_path / "stacks"
    folder.mkdir()
    first, second = photo_pages(5, seed=1), photo_pages(5, seed=2)
    write_stack(folder / "s2.tif", first)
    write_stack(folder / "s10.tif", second)
    store = tmp_path / "out.zarr"
    assert_ok(run_cli("run", job(make_job, write_config, folder, store)))
    values, attrs, sources = read_store(store)
    assert sources == [f"{folder / 's2.tif'}#{k}" for k in range(5)] + [f"{folder / 's10.tif'}#{k}" for k in range(5)]
    np.testing.assert_allclose(values, edges(np.concatenate([first, second])), rtol=1e-5, atol=1e-2)
    assert attrs["status"] == "complete"


def test_gif_frames_are_images_in_their_own_colours(tmp_path: Path, run_cli, make_job, write_config) -> None:
    folder = tmp_path / "gifs"
    folder.mkdir()
    photo = iio.imread(SAMPLES / "03-chelsea.jpg")
    frames = [Image.fromarray(photo[k * 20 : k * 20 + 48, k * 30 : k * 30 + 64]) for k in range(3)]
    path = folder / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0, disposal=2)
    assert frame_count(str(path)) == 3
    store = tmp_path / "out.zarr"
    assert_ok(run_cli("run", job(make_job, write_config, folder, store)))
    values, _, sources = read_store(store)
    assert sources == [f"{path}#{k}" for k in range(3)]
    decoded = np.stack([iio.imread(path, index=k)[..., :3].astype(np.float64) @ [0.299, 0.587, 0.114] for k in range(3)])
    np.testing.assert_allclose(values, edges(decoded), rtol=1e-5, atol=1e-2)
    assert len(np.unique(values.reshape(3, -1), axis=0)) == 3  # three different frames, not one thrice


def test_a_file_with_another_frame_count_fails_naming_it(tmp_path: Path, run_cli, make_job, write_config) -> None:
    folder = tmp_path / "stacks"
    folder.mkdir()
    write_stack(folder / "a.tif", photo_pages(5))
    write_stack(folder / "b.tif", photo_pages(6))
    store = tmp_path / "out.zarr"
    result = run_cli("run", job(make_job, write_config, folder, store))
    assert_error(result, 3, "b.tif", "holds 6 frames", "holds 5")
    assert zarr.open_group(str(store), mode="r").attrs["pipeline"]["status"] == "failed"


def test_a_single_page_collection_refuses_a_multi_page_file(tmp_path: Path, run_cli, make_job, write_config) -> None:
    """Reading only the first page of a later stack would drop its other pages silently."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    pages = photo_pages(5)
    write_stack(folder / "a.tif", pages[0])
    write_stack(folder / "b.tif", pages)
    result = run_cli("run", job(make_job, write_config, folder, tmp_path / "out.zarr"))
    assert_error(result, 3, "b.tif", "holds 5 frames", "holds 1")


def test_an_unreadable_stack_skips_all_its_frames(tmp_path: Path, run_cli, make_job, write_config) -> None:
    folder = tmp_path / "stacks"
    folder.mkdir()
    good = photo_pages(4)
    write_stack(folder / "a.tif", good)
    write_stack(folder / "b.tif", photo_pages(4, seed=3))
    data = (folder / "b.tif").read_bytes()
    (folder / "b.tif").write_bytes(data[: len(data) // 3])  # the header survives, the pages do not
    store = tmp_path / "out.zarr"
    os.chdir(tmp_path)  # relative paths: tasks report absolute ones, which must still be matched
    result = run_cli("run", job(make_job, write_config, "stacks", "out.zarr", on_error="skip"))
    assert_ok(result)
    group = zarr.open_group(str(store), mode="r")
    assert list(group["ledger/done"][:]) == [1] * 4 + [2] * 4
    np.testing.assert_allclose(group["0"][:4], edges(good), rtol=1e-5, atol=1e-2)
    assert "4 unreadable" in result.stderr + result.stdout


def test_pages_of_a_huge_tiff_are_read_by_tiles(tmp_path: Path, run_cli, make_job, write_config) -> None:
    """Each task reads its tile from its own page, not from the page axis of the whole series."""
    folder = tmp_path / "huge"
    folder.mkdir()
    pages = photo_pages(3, shape=(70, 90))
    write_stack(folder / "big.tif", pages, tile=(16, 16))
    store = tmp_path / "out.zarr"
    assert_ok(run_cli("run", job(make_job, write_config, folder, store, tile=32)))
    group = zarr.open_group(str(store), mode="r")
    assert group["0"].chunks == (1, 32, 32)
    np.testing.assert_allclose(group["0"][:], edges(pages), rtol=1e-5, atol=1e-2)


def test_the_pixel_limit_counts_one_frame_when_one_is_read(tmp_path: Path, run_cli, make_job, write_config) -> None:
    folder = tmp_path / "stacks"
    folder.mkdir()
    pages = photo_pages(8)  # 8 pages of 40 x 56 = 2240 pixels each, 17920 in all
    write_stack(folder / "a.tif", pages)
    store = tmp_path / "out.zarr"
    assert_ok(run_cli("run", job(make_job, write_config, folder, store, max_pixels=3000)))
    np.testing.assert_allclose(read_store(store)[0], edges(pages), rtol=1e-5, atol=1e-2)
    result = run_cli("run", job(make_job, write_config, folder, tmp_path / "o2.zarr", max_pixels=2000))
    assert_error(result, 3, "declares 2,240 pixels", "max_pixels")


def test_append_adds_every_frame_of_a_new_stack(tmp_path: Path, run_cli, make_job, write_config) -> None:
    folder = tmp_path / "stacks"
    folder.mkdir()
    first, second = photo_pages(3, seed=4), photo_pages(3, seed=5)
    write_stack(folder / "a.tif", first)
    store = tmp_path / "out.zarr"
    config = job(make_job, write_config, folder, store)
    assert_ok(run_cli("run", config))
    write_stack(folder / "b.tif", second)
    assert_ok(run_cli("run", config, "--append"))
    values, _, sources = read_store(store)
    assert [Path(s).name for s in sources] == ["a.tif#0", "a.tif#1", "a.tif#2", "b.tif#0", "b.tif#1", "b.tif#2"]
    np.testing.assert_allclose(values, edges(np.concatenate([first, second])), rtol=1e-5, atol=1e-2)


def test_a_file_with_too_few_frames_says_so_whichever_frame_fails(tmp_path: Path) -> None:
    """Frame 4 of a 3-page file fails with the frame-count message, not a bare read error."""
    from pipeline.errors import InputError
    from pipeline.sources.images import read_image

    write_stack(tmp_path / "short.tif", photo_pages(3))
    with pytest.raises(InputError, match=r"holds 3 frames \(pages\) but 'a.tif', the first file, holds 5"):
        read_image(f"{tmp_path / 'short.tif'}#4", frames=5, reference="a.tif")
    read_image(f"{tmp_path / 'short.tif'}#2", frames=5, reference="a.tif")  # frames that exist still read
