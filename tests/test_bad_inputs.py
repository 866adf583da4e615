"""Every bad input of docs/errors.md, through the CLI: its exit code, its one line, and the store.

Each test is one row of that table (the rows that another module tests at its own level say
where, in the table).
"""

from __future__ import annotations

import errno
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr
from scipy import ndimage

from helpers import assert_error, assert_ok, read_store

EDGE = np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])
IGNORE_IMAGEIO_PLUGIN_WARNINGS = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def images(small_images) -> Path:
    return small_images()


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "out.zarr"


@pytest.fixture
def job(images, store, make_job, write_config):
    """Factory: a job file over ``paths`` (default: the small images) with extra top-level settings."""

    def write(paths=None, kernel="edge", input_extra=None, **convolve) -> Path:
        raw = make_job(images if paths is None else paths, store, kernel, **convolve)
        raw["input"].update(input_extra or {})
        raw["execution"] = {"scheduler": "sync"}
        return write_config(raw)

    return write


def _truncated_jpeg(images: Path) -> Path:
    from PIL import Image

    whole = images / "whole.jpg"
    with Image.open(images / "img1.png") as photo:
        photo.convert("RGB").save(whole, quality=90)
    cut = images / "img5.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return cut


def _corrupt(images: Path) -> Path:
    (images / "img5.png").write_bytes(b"not an image" * 20)
    return images / "img5.png"


def _zero_bytes(images: Path) -> Path:
    (images / "img5.png").write_bytes(b"")
    return images / "img5.png"


BROKEN_FILES = {"corrupt": _corrupt, "zero-byte": _zero_bytes, "truncated JPEG": _truncated_jpeg}


@IGNORE_IMAGEIO_PLUGIN_WARNINGS
@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_broken_file_fails_the_run_by_default(kind, images, job, store, run_cli):
    broken = BROKEN_FILES[kind](images)
    assert_error(run_cli("run", job(paths=images)), 3, "cannot read image", broken.name)
    assert read_store(store)[1]["status"] == "failed"


@IGNORE_IMAGEIO_PLUGIN_WARNINGS
@pytest.mark.parametrize("kind", BROKEN_FILES)
def test_broken_file_is_skipped_and_listed(kind, images, job, store, run_cli):
    broken = BROKEN_FILES[kind](images)
    result = run_cli("run", job(paths=images, input_extra={"on_error": "skip"}))
    assert_ok(result)
    assert "4 images processed" in result.stdout and "1 unreadable (left out)" in result.stdout
    stored, attrs, sources = read_store(store)
    assert attrs["status"] == "complete"
    unreadable = dict(zarr.open_group(str(store)).attrs)["unreadable"]
    assert [entry["source"] for entry in unreadable] == [str(broken)]
    assert "cannot read image" in unreadable[0]["reason"]
    index = sources.index(str(broken))
    assert np.isnan(stored[index]).all()  # never written: missing, not black
    good = [i for i in range(len(sources)) if i != index]
    assert np.isfinite(stored[good]).all()


def test_a_directory_with_no_images(tmp_path, job, run_cli):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    assert_error(run_cli("run", job(paths=tmp_path / "empty")), 3, "holds no images")


@IGNORE_IMAGEIO_PLUGIN_WARNINGS
def test_an_unsupported_format(tmp_path, job, run_cli):
    drawing = tmp_path / "drawing.svg"
    drawing.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"/>')
    assert_error(run_cli("run", job(paths=drawing)), 3, "cannot read image", "drawing.svg")


def test_a_decompression_bomb_is_refused_before_decoding(images, job, run_cli, monkeypatch):
    import cv2

    from pipeline.sources.image_libraries import imageio

    monkeypatch.setattr(cv2, "imread", lambda *a: pytest.fail("decoded a file above the limit"))
    monkeypatch.setattr(imageio(), "imread", lambda *a, **k: pytest.fail("decoded a file above the limit"))
    message = assert_error(run_cli("run", job(input_extra={"max_pixels": 1000})), 3, "declares 3,072 pixels")
    assert "input.max_pixels = 1,000" in message


@pytest.mark.parametrize(
    "kernel, extra, fragments",
    [
        ([[1.0, float("nan")], [1.0, 1.0]], {}, ("NaN or infinite",)),
        ([[1.0, float("inf")]], {}, ("NaN or infinite",)),
        ([], {}, ("empty",)),
        ([[[1.0, 1.0]], [[1.0, 1.0]]], {}, ("3 dimensions", "2 spatial")),
        ([[1, "a"], [2, 3]], {}, ("non-number",)),
        ([[1.0] * 50] * 50, {"mode": "valid"}, ("larger than the image", "'valid'")),
    ],
    ids=["nan", "inf", "empty", "3-D on 2-D images", "non-numeric", "larger than the image for valid"],
)
def test_bad_kernels(kernel, extra, fragments, job, run_cli):
    assert_error(run_cli("run", job(kernel=kernel, **extra)), 2, *fragments)


def test_a_npy_kernel_that_needs_pickle(tmp_path, job, run_cli):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([[1, None]], dtype=object), allow_pickle=True)
    assert_error(run_cli("run", job(kernel=str(path))), 2, "pickle", "objects.npy")


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("- just\n- a list\n", ("must be a mapping",)),
        ("input: {paths: x}\noutput: {path: o}\nouptut: {}\n", ("ouptut: unknown key", "did you mean 'output'")),
        ("input: {paths: x}\noutput: {path: o, overwrite: maybe}\n", ("output.overwrite",)),
    ],
    ids=["not a mapping", "unknown key", "wrong type"],
)
def test_bad_yaml(text, fragments, write_config, run_cli):
    assert_error(run_cli("run", write_config(text)), 2, *fragments)


def test_output_path_is_a_file(job, store, run_cli):
    store.write_text("precious")
    assert_error(run_cli("run", job()), 4, "is a file")
    assert store.read_text() == "precious"


def test_output_inside_the_input_folder(images, make_job, write_config, run_cli):
    config = write_config(make_job(f"{images}/*.png", images / "result.zarr", "edge"))
    assert_error(run_cli("run", config), 4, "inside the input folder")


def test_output_not_writable(job, run_cli, monkeypatch):
    # Tests may run as root, who may write anywhere: ask the permission check itself.
    import os

    readable = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: not mode & os.W_OK and readable(path, mode))
    assert_error(run_cli("run", job()), 4, "not writable")


def test_an_existing_store_of_another_job_needs_overwrite(job, run_cli):
    assert_ok(run_cli("run", job()))
    assert_error(run_cli("run", job(kernel="blur")), 4, "different job", "--overwrite")


def test_a_full_disk_leaves_a_resumable_store(images, job, store, run_cli, monkeypatch):
    from zarr.storage import _local

    from pipeline.sinks import chunk_files

    # Chunks are written by zarr's LocalStore and, whole ones, by the workers (chunk_files.py):
    # the disk fills for both.
    real_put, real_chunk_put = _local._put, chunk_files._put
    calls = {"n": 0}

    def filling(put):
        def put_until_full(path, *args, **kwargs):
            if "/0/c/" in str(path):
                calls["n"] += 1
                if calls["n"] > 2:
                    raise OSError(errno.ENOSPC, "No space left on device")
            return put(path, *args, **kwargs)

        return put_until_full

    config = job()
    monkeypatch.setattr(_local, "_put", filling(real_put))
    monkeypatch.setattr(chunk_files, "_put", filling(real_chunk_put))
    assert_error(run_cli("run", config, "--batch-size", "1"), 4, "No space left on device", "rerun to resume")
    attrs = read_store(store)[1]
    assert attrs["status"] == "failed"
    assert zarr.open_group(str(store))["ledger/done"][:].tolist() == [1, 1, 0, 0]

    monkeypatch.setattr(_local, "_put", real_put)
    monkeypatch.setattr(chunk_files, "_put", real_chunk_put)
    result = run_cli("run", config, "--batch-size", "1")
    assert_ok(result)
    assert result.stdout.startswith("complete: 2 images processed, 2 already written")
    stored, attrs, sources = read_store(store)
    assert attrs["status"] == "complete"
    for index, source in enumerate(sources):
        pixels = iio.imread(source).astype(np.float64)
        gray = pixels if pixels.ndim == 2 else pixels[..., :3] @ [0.299, 0.587, 0.114]
        np.testing.assert_allclose(stored[index], ndimage.convolve(gray, EDGE, mode="reflect"), rtol=1e-5, atol=2e-3)


def _png_declaring(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit gray PNG header declaring ``width`` x ``height``, with only four rows of (zero) data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress((b"\x00" + bytes(width)) * 4, 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def _capped_cli(*args, cwd: Path, address_space: int):
    """``python -m pipeline …`` in a process that may map at most ``address_space`` bytes, as click's Result."""
    import os
    import resource
    import subprocess
    import sys
    from types import SimpleNamespace

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    import pipeline

    env = {**os.environ, "PYTHONPATH": str(Path(pipeline.__file__).resolve().parents[1])}  # the code under test
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)], cwd=cwd, env=env, preexec_fn=cap,
        capture_output=True, text=True, timeout=300,
    )
    return SimpleNamespace(
        exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr, output=done.stdout + done.stderr,
        exception=None,
    )


def test_an_image_too_large_for_memory_is_refused_from_its_header(tmp_path, job):
    """A 200-byte PNG declaring 30000² pixels (below input.max_pixels): refused before the decoder allocates it."""
    bomb = _png_declaring(tmp_path / "huge.png", 30000, 30000)
    assert bomb.stat().st_size < 1000
    result = _capped_cli("run", job(paths=bomb), cwd=tmp_path, address_space=2 << 30)
    message = assert_error(result, 3, repr(str(bomb)), "declares 30000x30000 pixels", "more than a worker can hold")
    needed = 30000 * 30000 * 4 * 4  # four float32 copies: the working set of a block (budget.working_set)
    assert f"≈ {needed / 2**30:.1f} GiB to decode and convert" in message
    assert "raise execution.memory_budget, use fewer workers, or read it by tiles (TIFF only)" in message


def test_a_later_image_beyond_the_budget_is_refused_by_its_own_task(images, job, store, run_cli):
    """The first image fits; the header of each later one is checked too, before its task decodes it."""
    iio.imwrite(images / "img20.png", np.zeros((1000, 1000), np.uint8))  # 16 MB to decode and work on
    config = job(paths=images)
    extra = ("--set", "execution.memory_budget=8MiB")
    message = assert_error(run_cli("run", config, *extra), 3, "img20.png", "declares 1000x1000 pixels")
    assert "≈ 15 MiB to decode and convert" in message and "(≈ 8 MiB: execution.memory_budget / workers)" in message
    assert read_store(store)[1]["status"] == "failed"


def test_a_tiff_read_by_tiles_is_not_refused_but_read_whole_it_is(tmp_path, job, store, run_cli):
    import tifffile

    pixels = np.random.default_rng(3).integers(0, 4096, size=(1000, 1000), dtype=np.uint16)
    path = tmp_path / "large.tif"
    tifffile.imwrite(path, pixels, tile=(256, 256))
    budget = ("--set", "execution.memory_budget=8MiB")  # a whole image needs 16 MB, a 256² tile far less
    assert_ok(run_cli("run", job(paths=path), *budget))
    np.testing.assert_allclose(
        read_store(store)[0][0], ndimage.convolve(pixels.astype(np.float64), EDGE, mode="reflect"), rtol=1e-5, atol=1e-2
    )
    whole = job(paths=path, input_extra={"tile": "whole"})
    assert_error(run_cli("run", whole, *budget, "--overwrite"), 3, "declares 1000x1000 pixels", "read it by tiles")
    # A budget just large enough for the image: tile: auto reads it whole, and the check agrees.
    exactly = ("--set", f"execution.memory_budget={1000 * 1000 * 4 * 4}")
    assert_ok(run_cli("run", job(paths=path), *exactly, "--overwrite"))
    assert zarr.open_group(str(store), mode="r")["0"].chunks == (1, 1000, 1000)


def test_a_decode_task_never_opens_a_named_pipe(tmp_path, monkeypatch):
    import builtins
    import os

    from pipeline.errors import InputError
    from pipeline.sources.decode import decode

    pipe = tmp_path / "img.png"
    os.mkfifo(pipe)
    monkeypatch.setattr(builtins, "open", lambda *a, **k: pytest.fail("opened a named pipe"))
    for limit in (None, 1000):
        with pytest.raises(InputError, match=r"image '.*img.png' is not a regular file \(a named pipe\)"):
            decode(str(pipe), max_pixels=limit)
