"""Resolution levels: 2x2 means of the level above, any chunking, written and read back as OME-NGFF."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import zarr

from pipeline.config import validate_config
from pipeline.job_run import run
from pipeline.steps.pyramid import halve, pyramid

RNG = np.random.default_rng(12)


def _mean2x2(x: np.ndarray) -> np.ndarray:
    ny, nx = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :ny, :nx].astype(np.float64)
    return x.reshape(*x.shape[:-2], ny // 2, 2, nx // 2, 2).mean(axis=(-3, -1))


@pytest.mark.parametrize("shape, chunks", [((2, 9, 12), (1, 9, 12)), ((2, 33, 50), (1, 7, 5)), ((1, 3, 64, 65), (1, 3, 16, 13))])
def test_halve_is_the_2x2_mean_whatever_the_chunks(shape, chunks) -> None:
    x = RNG.normal(size=shape)
    np.testing.assert_allclose(halve(da.from_array(x, chunks=chunks), np.float64).compute(), _mean2x2(x), rtol=1e-12)


def test_integer_levels_are_rounded_and_clipped() -> None:
    x = np.array([[[0, 1], [1, 1]], [[255, 255], [254, 255]]], dtype=np.uint8)
    assert halve(da.from_array(x), np.uint8).compute().ravel().tolist() == [1, 255]


def test_pyramid_levels_chain(tmp_path: Path) -> None:
    x = RNG.normal(size=(1, 40, 36))
    levels = [level.compute() for level in pyramid(da.from_array(x, chunks=(1, 10, 9)), 3)]
    assert [level.shape for level in levels] == [(1, 40, 36), (1, 20, 18), (1, 10, 9)]
    np.testing.assert_allclose(levels[2], _mean2x2(_mean2x2(x)), rtol=1e-12)


def test_levels_are_written_with_the_result_and_grow_on_append(small_images, tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    images = small_images(("img1.png", "img2.png"))
    out = tmp_path / "levels.zarr"
    config = validate_config(
        {"input": {"paths": str(images)}, "steps": [{"convolve": {"kernel": "edge"}}], "output": {"path": str(out), "levels": 3}}
    )
    run(config)
    (node,) = list(Reader(parse_url(str(out)))())
    assert [level.shape for level in node.data] == [(2, 48, 64), (2, 24, 32), (2, 12, 16)]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0], [1.0, 4.0, 4.0]]
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_allclose(group["1"][:], _mean2x2(group["0"][:]), rtol=1e-6)

    small_images(("img3.png",))
    run(config, append=True)
    group = zarr.open_group(str(out), mode="r")
    assert [group[str(level)].shape[0] for level in range(3)] == [3, 3, 3]
    np.testing.assert_allclose(group["2"][2], _mean2x2(_mean2x2(group["0"][2:3]))[0], rtol=1e-5)


def test_an_axis_down_to_one_sample_stays() -> None:
    x = RNG.normal(size=(1, 1, 6))
    levels = [level.compute() for level in pyramid(da.from_array(x), 3)]
    assert [level.shape for level in levels] == [(1, 1, 6), (1, 1, 3), (1, 1, 1)]
    np.testing.assert_allclose(levels[1][0, 0], x[0, 0].reshape(3, 2).mean(axis=1), rtol=1e-12)
