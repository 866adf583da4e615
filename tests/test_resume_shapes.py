"""Resume, --resume, kill -9 and --append of jobs whose steps change the image shape (valid, full).

A store's own shape must never decide how its inputs are read again: a ``valid`` result is smaller
than its images and a ``full`` one larger, so a rerun that read the inputs by the store's chunks
would read a PNG as a tile of a TIFF. The store records how it read its inputs, and reruns reuse it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import tifffile
import yaml
from scipy import ndimage, signal

from test_resume import (  # noqa: F401 (start is a fixture)
    assert_same_bytes, cli, done_count, events, kill, partial_files, result, sources, start, status, wait_until, write_rgb,
)

IMAGES = 12
BATCH = 2
LUMA = np.array([0.299, 0.587, 0.114])
RNG = np.random.default_rng(5)
# Slow enough per image (a forced direct float64 correlation) that a run can be killed between batches.
KERNEL = RNG.standard_normal((41, 31))


def _job(root: Path, mode: str, store: str, *, volume: bool = False) -> Path:
    kernel = root / "kernel.npy"
    np.save(kernel, KERNEL[None, :7, :7] * np.ones((5, 1, 1)) if volume else KERNEL)
    config = root / f"{mode}-{'volume' if volume else 'images'}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": str(root / "inputs"), **({"layout": "volume"} if volume else {})},
                "steps": [{"convolve": {"kernel": str(kernel), "mode": mode, "strategy": "direct"}}],
                "output": {"path": str(root / store)},
                "execution": {"scheduler": "sync", "batch_size": BATCH, "compute_dtype": "float64"},
            }
        ),
        encoding="utf-8",
    )
    return config


def _images(root: Path, count: int, *, volume: bool = False, first: int = 0) -> None:
    inputs = root / "inputs"
    inputs.mkdir(exist_ok=True)
    for index in range(first, first + count):
        if volume:
            tifffile.imwrite(inputs / f"v{index:02d}.tif", RNG.integers(0, 4096, (9, 40, 48), dtype=np.uint16))
        else:
            write_rgb(inputs / f"img{index:02d}.png", seed=index, shape=(96, 80))


def _expected(path: Path, mode: str) -> np.ndarray:
    if path.suffix == ".tif":
        pixels, kernel = tifffile.imread(path).astype(np.float64), KERNEL[None, :7, :7] * np.ones((5, 1, 1))
    else:
        from test_resume import gray

        pixels, kernel = gray(path), KERNEL
    return signal.convolve(pixels, kernel, mode=mode)


@pytest.mark.parametrize("volume", [False, True], ids=["images", "volumes"])
@pytest.mark.parametrize("mode", ["valid", "full"])
def test_rerun_resume_and_append_read_the_inputs_as_the_first_run(tmp_path: Path, mode: str, volume: bool) -> None:
    _images(tmp_path, 3, volume=volume)
    config = _job(tmp_path, mode, "out.zarr", volume=volume)
    store = tmp_path / "out.zarr"
    first = cli("run", config, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = result(store)
    for flags in ([], ["--resume"]):
        again = cli("run", config, *flags, "--log-format", "json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr  # was: "cannot read image …: not a TIFF file"
        assert events(again.stdout)[-1]["processed"] == 0
    _images(tmp_path, 2, volume=volume, first=3)
    appended = cli("run", config, "--append", "--log-format", "json", cwd=tmp_path)
    assert appended.returncode == 0, appended.stderr
    assert events(appended.stdout)[-1]["processed"] == 2
    stored = result(store)
    assert_same_bytes(stored[:3], before)
    for index, name in enumerate(sources(store)):
        np.testing.assert_allclose(stored[index], _expected(Path(name), mode), rtol=1e-4, atol=1e-3)
    assert status(store) == "complete"


@pytest.mark.parametrize("mode", ["valid", "full"])
def test_a_killed_run_is_finished_by_a_rerun(
    tmp_path: Path, mode: str, start: Callable[..., Any]
) -> None:
    _images(tmp_path, IMAGES)
    reference = cli("run", _job(tmp_path, mode, "reference.zarr"), cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    config = _job(tmp_path, mode, "killed.zarr")
    store = tmp_path / "killed.zarr"
    victim = start("run", config)
    wait_until(victim, lambda: done_count(store) >= BATCH, f"{BATCH} images in the ledger")
    kill(victim)
    done = done_count(store)
    assert BATCH <= done < IMAGES, f"the run finished ({done} images) before it could be killed"
    rerun = cli("run", config, "--log-format", "json", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert events(rerun.stdout)[-1]["processed"] == IMAGES - done
    assert status(store) == "complete" and partial_files(store) == []
    assert_same_bytes(result(store), result(tmp_path / "reference.zarr"))


def test_a_tiled_valid_run_resumes_with_its_tiles(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pixels = [RNG.integers(0, 65536, (300, 260), dtype=np.uint16) for _ in range(2)]
    for index, image in enumerate(pixels):
        tifffile.imwrite(inputs / f"t{index}.tif", image, tile=(64, 64))
    config = tmp_path / "job.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": str(inputs), "tile": 128},
                "steps": [{"convolve": {"kernel": "gaussian", "params": {"sigma": 2.0}, "mode": "valid"}}],
                "output": {"path": str(tmp_path / "out.zarr")},
                "execution": {"batch_size": 1},
            }
        ),
        encoding="utf-8",
    )
    assert cli("run", config, cwd=tmp_path).returncode == 0
    tifffile.imwrite(inputs / "t2.tif", pixels[0], tile=(64, 64))
    appended = cli("run", config, "--append", "--set", "input.tile=whole", cwd=tmp_path)
    # the job is the same (input.tile is how to read, not what to compute): it reads by the recorded tiles
    assert appended.returncode == 0, appended.stderr
    stored = result(tmp_path / "out.zarr")
    from pipeline.steps.kernels import build_kernel

    weights = build_kernel("gaussian", {"sigma": 2.0}).weights
    for image, source in zip(stored, [*pixels, pixels[0]]):
        expected = ndimage.correlate(source.astype(np.float64), weights)[8:-8, 8:-8]
        np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-2)


BANK = RNG.standard_normal((4, 1, 21, 21))


def _layer_job(root: Path, store: str) -> Path:
    np.save(root / "bank.npy", BANK)
    config = root / f"{store}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "input": {"paths": str(root / "inputs")},
                "steps": [
                    {"layer": {"weights": str(root / "bank.npy"), "mode": "valid", "stride": 2, "strategy": "direct"}},
                    {"activation": "relu"},
                    {"pool": {"function": "max", "size": 2}},
                ],
                "output": {"path": str(root / store)},
                "execution": {"scheduler": "sync", "batch_size": BATCH, "compute_dtype": "float64"},
            }
        ),
        encoding="utf-8",
    )
    return config


def test_a_layer_stack_resumes_appends_and_survives_kill(tmp_path: Path, start: Callable[..., Any]) -> None:
    _images(tmp_path, IMAGES)
    reference = cli("run", _layer_job(tmp_path, "reference.zarr"), cwd=tmp_path)
    assert reference.returncode == 0, reference.stderr
    config = _layer_job(tmp_path, "killed.zarr")
    store = tmp_path / "killed.zarr"
    victim = start("run", config)
    wait_until(victim, lambda: done_count(store) >= BATCH, f"{BATCH} images in the ledger")
    kill(victim)
    assert BATCH <= done_count(store) < IMAGES
    for flags in ([], ["--resume"]):
        rerun = cli("run", config, *flags, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
    assert status(store) == "complete"
    assert_same_bytes(result(store), result(tmp_path / "reference.zarr"))
    assert result(store).shape == (IMAGES, 4, 19, 15)  # (96 - 20) / 2 = 38 → pooled 19; (80 - 20) / 2 = 30 → 15
    _images(tmp_path, 2, first=IMAGES)
    appended = cli("run", config, "--append", "--log-format", "json", cwd=tmp_path)
    assert appended.returncode == 0, appended.stderr
    assert events(appended.stdout)[-1]["processed"] == 2
    assert_same_bytes(result(store)[:IMAGES], result(tmp_path / "reference.zarr"))


def _photo(path: Path, seed: int) -> None:
    """A colour JPEG with edges between colours, where the luma plane and remixed RGB differ."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    Image.fromarray(np.kron(blocks, np.ones((16, 16, 1), dtype=np.uint8))).save(path, quality=85)


def _gray_job(root: Path, **gray: str) -> dict[str, Any]:
    return {
        "input": {"paths": str(root / "photos"), **gray},
        "steps": [],
        "output": {"path": str(root / "gray.zarr"), "dtype": "float32"},
        "execution": {"scheduler": "sync"},
    }


@pytest.mark.parametrize("recorded", ["rgb", "unrecorded"])
def test_append_to_a_store_read_from_rgb_keeps_reading_rgb(tmp_path: Path, recorded: str) -> None:
    """A store whose gray came from RGB (by the option, or written before it: no record) goes on so,
    whatever the job now says; a new store reads the JPEGs' luma plane."""
    import zarr

    from pipeline.config import validate_config
    from pipeline.run import run
    from pipeline.sinks.zarr_store import ATTRS_KEY
    from pipeline.sources.images import read_image

    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(2):
        _photo(photos / f"p{index}.jpg", index)
    run(validate_config(_gray_job(tmp_path, gray_from="rgb")))
    group = zarr.open_group(tmp_path / "gray.zarr", mode="r+")
    attributes = dict(group.attrs[ATTRS_KEY])
    assert attributes["read"]["gray_from"] == "rgb"
    if recorded == "unrecorded":
        attributes["read"] = {k: v for k, v in attributes["read"].items() if k != "gray_from"}
        group.attrs[ATTRS_KEY] = attributes
    _photo(photos / "p2.jpg", 2)
    run(validate_config(_gray_job(tmp_path)), append=True)  # the job's default: luma
    stored = np.asarray(zarr.open_group(tmp_path / "gray.zarr", mode="r")["0"])
    files = sorted(photos.glob("*.jpg"))
    remixed = np.stack([read_image(str(path), gray_from="rgb") for path in files])
    planes = np.stack([read_image(str(path)) for path in files])
    np.testing.assert_array_equal(stored, remixed)
    assert not np.array_equal(stored[2], planes[2])

    fresh = _gray_job(tmp_path)
    fresh["output"]["path"] = str(tmp_path / "fresh.zarr")
    run(validate_config(fresh))
    np.testing.assert_array_equal(np.asarray(zarr.open_group(tmp_path / "fresh.zarr", mode="r")["0"]), planes)
    assert zarr.open_group(tmp_path / "fresh.zarr", mode="r").attrs[ATTRS_KEY]["read"]["gray_from"] == "luma"
