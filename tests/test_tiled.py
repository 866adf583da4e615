"""Huge TIFFs read by tiles: the same values as reading them whole, and no whole-image decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from pipeline.config import validate_config
from pipeline.errors import InputError
from pipeline.plan import build_plan
from pipeline.sources import tiled
from pipeline.sources.images import probe

RNG = np.random.default_rng(4)
GAUSS = {"convolve": {"kernel": "gaussian", "params": {"sigma": 2.0}}}


@pytest.fixture
def tiffs(tmp_path: Path) -> Path:
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for index in range(2):
        pixels = RNG.integers(0, 65536, (300, 260), dtype=np.uint16)
        tifffile.imwrite(folder / f"t{index}.tif", pixels, tile=(64, 64))
    return folder


def _result(folder: Path, tile, steps=(GAUSS,), color="gray") -> tuple[np.ndarray, tuple]:
    config = validate_config(
        {
            "input": {"paths": str(folder), "tile": tile, "color": color},
            "steps": list(steps),
            "output": {"path": "unused.zarr", "dtype": "float64"},
            "execution": {"scheduler": "sync"},
        }
    )
    plan = build_plan(config)
    result = plan.result()
    return result.compute(scheduler="sync"), result.chunks


def test_tiles_give_the_whole_image_result(tiffs: Path) -> None:
    tiled_values, chunks = _result(tiffs, 100)
    assert chunks[1] == (64,) * 4 + (44,)  # file tiles of 64: 100 rounds down to whole file tiles
    whole, whole_chunks = _result(tiffs, "whole")
    assert whole_chunks[1] == (300,)
    for index, name in enumerate(sorted(tiffs.glob("*.tif"))):
        oracle = ndimage.convolve(tifffile.imread(name).astype(np.float64), _gauss(), mode="reflect")
        np.testing.assert_allclose(tiled_values[index], oracle, rtol=1e-10)
    np.testing.assert_allclose(tiled_values, whole, rtol=1e-12)


def _gauss() -> np.ndarray:
    from pipeline.steps.kernels import build_kernel

    return build_kernel("gaussian", {"sigma": 2.0}).weights


def test_rgb_tiles_are_converted_to_gray(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (130, 150, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", rgb, tile=(32, 32), photometric="rgb")
    values, _ = _result(tmp_path, 64, steps=())
    np.testing.assert_allclose(values[0], rgb.astype(np.float64) @ [0.299, 0.587, 0.114], rtol=1e-12)
    kept, _ = _result(tmp_path, 64, steps=(), color="keep")
    np.testing.assert_array_equal(kept[0], np.moveaxis(rgb, -1, 0))


def test_a_tile_reads_only_its_region(tiffs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr

    regions: list[tuple[int, int]] = []
    real_open = zarr.open_array

    class Recording:
        def __init__(self, array):
            self.array = array

        def __getitem__(self, key):
            regions.append((key[0].stop - key[0].start, key[1].stop - key[1].start))
            return self.array[key]

    monkeypatch.setattr(tiled.zarr, "open_array", lambda *a, **k: Recording(real_open(*a, **k)))
    _result(tiffs, 64, steps=())
    assert regions and max(h * w for h, w in regions) <= 64 * 64


def test_auto_tiles_only_huge_tiffs(tiffs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(next(tiffs.glob("*.tif")))
    assert probe(path, tile="auto").tile is None  # 300 x 260 is small
    monkeypatch.setattr(tiled, "AUTO_TILE_ABOVE", 1000)
    monkeypatch.setattr(tiled, "AUTO_TILE", 128)
    assert probe(path, tile="auto").tile == (128, 128)


def test_tiles_need_a_tiff(tmp_path: Path) -> None:
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(InputError, match="only TIFF files can be read by tiles"):
        probe(str(tmp_path / "a.png"), tile=4)
    assert probe(str(tmp_path / "a.png"), tile="auto").tile is None


def test_a_tiff_of_another_size_is_named(tiffs: Path) -> None:
    tifffile.imwrite(tiffs / "t9.tif", np.zeros((100, 100), np.uint16), tile=(64, 64))
    with pytest.raises(InputError, match=r"t9\.tif.*\(100, 100\)"):
        _result(tiffs, 64)


def test_memory_is_a_few_tiles_not_the_image(tmp_path: Path) -> None:
    import dask
    import zarr

    from helpers import PeakHeld

    pixels = RNG.integers(0, 65536, (1024, 1024), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", pixels, tile=(64, 64))
    config = validate_config(
        {
            "input": {"paths": str(tmp_path), "tile": 128},
            "steps": [GAUSS, {"convolve": {"kernel": "edge"}}],
            "output": {"path": "unused.zarr"},
        }
    )
    result = build_plan(config).result()
    target = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=result.shape, chunks=(1, 128, 128), dtype="float32")
    with PeakHeld() as peak, dask.config.set(scheduler="threads", num_workers=2):
        dask.compute(result.store(target, lock=False, compute=False))
    tile_bytes = 128 * 128 * 4
    assert 0 < peak.peak <= 24 * tile_bytes, f"held {peak.peak / tile_bytes:.1f} tiles of 64 in the image"
    assert np.isfinite(target[0]).all()
