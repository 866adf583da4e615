"""Huge TIFFs read by tiles: the same values as reading them whole, and no whole-image decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from helpers import assert_ok, read_store
from pipeline.config import validate_config
from pipeline.budget import BlockBudget
from pipeline.errors import InputError
from pipeline.job_plan import build_plan
from pipeline.sources import tiled
from pipeline.sources.images import probe
from pipeline.steps.kernels import build_kernel

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


def _result(folder: Path, tile, steps=(GAUSS,), color="gray", budget="auto") -> tuple[np.ndarray, tuple]:
    config = validate_config(
        {
            "input": {"paths": str(folder), "tile": tile, "color": color},
            "steps": list(steps),
            "output": {"path": "unused.zarr", "dtype": "float64"},
            "execution": {"scheduler": "sync", "memory_budget": budget},
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
    regions: list[tuple[int, int]] = []
    real = tiled.read_region

    def recording(path, rows, columns, **options):
        regions.append((rows[1] - rows[0], columns[1] - columns[0]))
        return real(path, rows, columns, **options)

    monkeypatch.setattr(tiled, "read_region", recording)
    _result(tiffs, 64, steps=())
    assert regions and max(h * w for h, w in regions) <= 64 * 64
    regions.clear()
    _result(tiffs, 64)  # the gaussian reaches 8 pixels: each tile is read with that halo, clipped at the edges
    assert max(regions) == (64 + 16, 64 + 16) and min(regions) == (44 + 8, 4 + 8)


@pytest.mark.parametrize(
    "make",
    [
        lambda px: {"tile": (64, 64)},
        lambda px: {"rowsperstrip": 16},
        lambda px: {"tile": (64, 64), "compression": "zlib", "predictor": True},
        lambda px: {"tile": (32, 32), "byteorder": ">"},
    ],
    ids=["tiles", "strips", "compressed tiles", "big-endian"],
)
def test_regions_equal_tifffiles_own_reading(tmp_path: Path, make) -> None:
    pixels = RNG.integers(0, 65536, (300, 260), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "r.tif", pixels, **make(pixels))
    path = str(tmp_path / "r.tif")
    for rows, columns in [((0, 300), (0, 260)), ((50, 77), (30, 200)), ((63, 65), (0, 1)), ((290, 300), (250, 260))]:
        region = tiled.read_region(path, rows, columns)
        assert region.dtype == np.uint16
        np.testing.assert_array_equal(region, pixels[slice(*rows), slice(*columns)])
        converted = tiled.read_region(path, rows, columns, dtype="float32")
        assert converted.dtype == np.float32
        np.testing.assert_array_equal(converted, pixels[slice(*rows), slice(*columns)])


def test_auto_tiles_only_images_beyond_the_budget(tiffs: Path) -> None:
    path = str(next(tiffs.glob("*.tif")))
    assert probe(path, tile="auto").tile is None  # 300 x 260 fits the default budget whole
    # 4 float32 copies of 300 x 260 take 1.2 MB: a 200 kB budget reads whole 64-pixel file tiles
    assert probe(path, tile="auto", budget=BlockBudget(bytes=200_000)).tile == (64, 64)
    assert probe(path, tile="auto", budget=BlockBudget(bytes=1_000_000)).tile == (192, 192)
    assert probe(path, tile="whole", budget=BlockBudget(bytes=1000)).tile is None
    assert probe(path, tile=100, budget=BlockBudget(bytes=1000)).tile == (64, 64)  # a number wins


def test_small_budgets_give_many_tiles_and_the_same_values(tiffs: Path) -> None:
    tiled_values, chunks = _result(tiffs, "auto", budget="200kB")
    assert chunks[1] == (64,) * 4 + (44,) and chunks[2] == (64,) * 4 + (4,)
    whole, _ = _result(tiffs, "whole")
    np.testing.assert_allclose(tiled_values, whole, rtol=1e-12)


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
    import tracemalloc

    import dask
    import zarr

    pixels = RNG.integers(0, 65536, (2048, 2048), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", pixels, tile=(64, 64))
    config = validate_config(
        {
            "input": {"paths": str(tmp_path), "tile": 256},
            "steps": [GAUSS, {"convolve": {"kernel": "edge"}}],
            "output": {"path": "unused.zarr"},
        }
    )
    result = build_plan(config).result()
    target = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=result.shape, chunks=(1, 256, 256), dtype="float32")
    (write,) = dask.optimize(result.store(target, lock=False, compute=False))
    with dask.config.set(scheduler="threads", num_workers=2):
        dask.compute(write)  # once untraced: imports and caches are not the run's memory
        tracemalloc.start()  # numpy reports its buffers to tracemalloc; so do zarr's bytes
        try:
            dask.compute(write)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    # 64 tiles of 256 KiB: a tile per worker and its copies, plus the scheduler's bookkeeping
    # (holding the neighbours of tiles for a halo exchange took 10 MB here).
    image_bytes = 2048 * 2048 * 4
    assert peak < image_bytes / 3, f"held {peak / image_bytes:.2f} of the image in float32"
    expected = ndimage.convolve(ndimage.convolve(pixels.astype(np.float64), _gauss(), mode="reflect"), _edge(), mode="reflect")
    np.testing.assert_allclose(target[0], expected, rtol=0, atol=1e-4 * np.abs(expected).max())  # float32


def test_each_tile_is_read_with_its_halo_and_depends_on_nothing_else(tiffs: Path) -> None:
    import dask

    config = validate_config(
        {"input": {"paths": str(tiffs), "tile": 64}, "steps": [GAUSS], "output": {"path": "unused.zarr"}}
    )
    (result,) = dask.optimize(build_plan(config).result(0, 1))
    graph = dict(result.__dask_graph__())
    assert len(graph) == 5 * 5  # one fused read + convolve task per tile, nothing shared


def _edge() -> np.ndarray:
    from pipeline.steps.kernels import build_kernel

    return build_kernel("edge").weights


DENSE_5X5 = np.random.default_rng(11).normal(size=(5, 5)).round(4)


def test_any_tile_size_writes_the_same_bytes(tmp_path: Path, run_cli, write_config) -> None:
    """The same job on a laptop and on a node with more memory: tiles of 256, 512, 896 (1000 rounded
    down to file tiles) or the whole image must give the same float32 bytes. Separable (gaussian),
    dense (OpenCV filter2D) and wrap (periodic halos at the seams) steps; widths that are not whole
    SIMD vectors (the tiles with their halos) are where OpenCV rounded differently."""
    pixels = RNG.integers(0, 65536, (1024, 1024), dtype=np.uint16)
    (tmp_path / "huge").mkdir()
    tifffile.imwrite(tmp_path / "huge" / "h.tif", pixels, tile=(128, 128))
    gaussian = build_kernel("gaussian", {"sigma": 2.0, "truncate": 3.5}).weights  # 15 x 15
    steps = [
        {"convolve": {"kernel": "gaussian", "params": {"sigma": 2.0, "truncate": 3.5}}},
        {"convolve": {"kernel": DENSE_5X5.tolist()}},
        {"convolve": {"kernel": DENSE_5X5.tolist(), "boundary": "wrap"}},
    ]
    stores = {}
    for tile in (256, 512, 1000, "whole"):
        job = {
            "input": {"paths": str(tmp_path / "huge"), "tile": tile},
            "steps": steps,
            "output": {"path": str(tmp_path / f"out-{tile}.zarr"), "dtype": "float32"},
            "execution": {"scheduler": "threads"},
        }
        assert_ok(run_cli("run", write_config(job, f"job-{tile}.yaml")))
        stores[tile], _, _ = read_store(tmp_path / f"out-{tile}.zarr")
    expected = ndimage.convolve(ndimage.convolve(pixels.astype(np.float64), gaussian, mode="reflect"), DENSE_5X5, mode="reflect")
    expected = ndimage.convolve(expected, DENSE_5X5, mode="wrap")
    np.testing.assert_allclose(stores["whole"][0], expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    for tile in (256, 512, 1000):
        differing = np.argwhere(stores[tile] != stores["whole"])
        assert differing.size == 0, f"tile {tile}: {len(differing)} values differ, e.g. at {differing[:3].tolist()}"


def test_plan_says_a_tile_size_is_rounded_to_file_tiles(tmp_path, run_cli, write_config) -> None:
    import tifffile

    folder = tmp_path / "huge"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", np.zeros((600, 520), dtype=np.uint16), tile=(64, 64))
    config = write_config({"input": {"paths": str(folder), "tile": 300}, "steps": [{"convolve": {"kernel": "blur"}}],
                           "output": {"path": str(tmp_path / "o.zarr")}})
    result = run_cli("plan", config)
    assert result.exit_code == 0, result.output
    assert "by tiles of 256x256 (input.tile 300 rounded down to whole file tiles)" in result.stdout
