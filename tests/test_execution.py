"""Schedulers, streaming (bounded memory) and progress reporting."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import zarr

from pipeline.config import validate_config
from pipeline.execution import Executor, open_executor, resolve_workers
from pipeline.job_plan import build_plan

from helpers import PeakHeld

SIDE = 48


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(3)
    for index in range(80):
        iio.imwrite(folder / f"{index}.png", rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8))
    return folder


def _peak_images_held(folder: Path, count: int, tmp_path: Path) -> float:
    config = validate_config(
        {
            "input": {"paths": str(folder / "*.png")},
            "steps": [{"convolve": {"kernel": "gaussian"}}, {"convolve": {"kernel": "edge"}}],
            "output": {"path": str(tmp_path / "x.zarr")},
        }
    )
    result = build_plan(config).result(0, count)
    target = zarr.open_array(str(tmp_path / f"{count}.zarr"), mode="w", shape=result.shape, chunks=(1, SIDE, SIDE), dtype="float32")
    with PeakHeld() as peak:
        Executor("threads", 2).compute(da.store(result, target, lock=False, compute=False))
    np.testing.assert_array_equal(target[count - 1], result[count - 1].compute())
    return peak.peak / (SIDE * SIDE * 4)


def test_memory_is_bounded_by_a_few_images_not_the_collection(many: Path, tmp_path: Path) -> None:
    small = _peak_images_held(many, 8, tmp_path)
    large = _peak_images_held(many, 80, tmp_path)
    assert large <= 8, f"held {large:.1f} images at once"
    assert large <= small + 2


@pytest.mark.parametrize("scheduler", ["sync", "threads", "processes"])
def test_every_local_scheduler_computes(scheduler: str, tmp_path: Path) -> None:
    data = da.arange(12, chunks=4).reshape(3, 4).astype("float32")
    target = zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=(3, 4), chunks=(1, 4), dtype="float32")
    config = validate_config(
        {"input": {"paths": "x"}, "output": {"path": "o"}, "execution": {"scheduler": scheduler, "workers": 2}}
    )
    with open_executor(config.execution) as executor:
        assert executor.dashboard is None
        executor.compute(da.store(data * 2, target, lock=False, compute=False))
    np.testing.assert_array_equal(target[:], np.arange(12).reshape(3, 4) * 2)


def test_progress_reports_the_whole_graph() -> None:
    shares: list[float] = []
    Executor("sync", 1).compute(da.ones((6, 4), chunks=(1, 4)) + 1, on_progress=shares.append)
    assert len(shares) > 6 and sum(shares) == pytest.approx(1.0)


def test_workers_auto_is_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    assert resolve_workers("auto") == 6 and resolve_workers(3) == 3
