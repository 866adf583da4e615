"""The jobs API (pipeline/jobs.py): the CLI's functions from Python, silent, with the CLI's errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from scipy import ndimage

import pipeline
from pipeline.errors import ConfigError, InputError, OutputError, PipelineError

EDGE = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=float)


def _job(tmp_path: Path, **output) -> dict:
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (5, 40, 36))
    np.save(tmp_path / "stack.npy", images)
    return {
        "input": {"paths": str(tmp_path / "stack.npy")},
        "steps": [{"convolve": {"kernel": "edge"}}],
        "output": {"path": str(tmp_path / "out.zarr"), **output},
        "execution": {"scheduler": "threads", "batch_size": 2, "compute_dtype": "float64"},
    }


def test_run_writes_the_store_prints_nothing_and_reports_through_the_callback(tmp_path: Path, capsys) -> None:
    job = _job(tmp_path)
    events: list[dict] = []
    summary = pipeline.run(job, progress=events.append)
    assert capsys.readouterr() == ("", "")
    assert (summary.processed, summary.shape) == (5, (5, 40, 36))
    assert [event["event"] for event in events] == ["start", "batch", "batch", "batch", "end"]
    assert events[0]["pending"] == 5 and events[-1]["status"] == "complete"
    assert sum(event["images"] for event in events if event["event"] == "batch") == 5
    stored = zarr.open_group(tmp_path / "out.zarr")["0"][:]
    images = np.load(tmp_path / "stack.npy")
    np.testing.assert_allclose(stored, [ndimage.correlate(image, EDGE, mode="reflect") for image in images], rtol=1e-5, atol=1e-3)
    again = pipeline.run(job)  # a rerun of a complete store writes nothing
    assert again.processed == 0 and again.skipped == 5


def test_errors_are_the_clis_with_their_exit_codes(tmp_path: Path, capsys) -> None:
    job = _job(tmp_path)
    with pytest.raises(ConfigError) as bad_key:
        pipeline.run({**job, "stpes": []})
    assert bad_key.value.exit_code == 2 and "stpes: unknown key" in str(bad_key.value)
    with pytest.raises(InputError) as missing:
        pipeline.run({**job, "input": {"paths": str(tmp_path / "none" / "*.png")}})
    assert missing.value.exit_code == 3
    pipeline.run(job)
    with pytest.raises(OutputError) as other_job:
        pipeline.run(job, overrides=["steps=[{convolve: {kernel: box}}]"])
    assert other_job.value.exit_code == 4 and "--overwrite" in str(other_job.value)
    assert isinstance(other_job.value, PipelineError)
    assert capsys.readouterr() == ("", "")


def test_warnings_go_to_the_callback_and_the_logger(tmp_path: Path, caplog) -> None:
    job = _job(tmp_path, dtype="uint8")  # edge values are negative: clipped, so the run warns
    events: list[dict] = []
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        pipeline.run(job, progress=events.append)
    warnings = [event["message"] for event in events if event["event"] == "warning"]
    assert any("cannot hold what the steps can produce" in message for message in warnings)
    assert any("cannot hold" in record.getMessage() for record in caplog.records)


def test_load_job_takes_files_dicts_and_overrides(tmp_path: Path) -> None:
    job = _job(tmp_path)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    from_file = pipeline.load_job(path, overrides=["execution.workers=3"])
    from_dict = pipeline.load_job(job, overrides=["execution.workers=3"])
    assert from_file == from_dict and from_file.execution.workers == 3
    assert pipeline.load_job(from_dict) is from_dict
    assert job["execution"].get("workers") is None  # the caller's dict is left as it was


def test_plan_is_what_the_run_writes(tmp_path: Path) -> None:
    job = _job(tmp_path)
    plan = pipeline.plan(job)
    assert plan.axes == ("image", "y", "x") and plan.shape == (5, 40, 36)
    lazy = plan.result()
    summary = pipeline.run(job)
    np.testing.assert_array_equal(lazy.compute(), zarr.open_group(summary.store)["0"][:])


def test_learn_from_a_dict_recovers_the_kernel(tmp_path: Path, capsys) -> None:
    import tifffile

    rng = np.random.default_rng(8)
    inputs, targets = tmp_path / "x", tmp_path / "y"
    inputs.mkdir(), targets.mkdir()
    for index in range(2):
        image = rng.uniform(0, 1, (48, 40)).astype(np.float32)
        tifffile.imwrite(inputs / f"{index}.tif", image)
        tifffile.imwrite(targets / f"{index}.tif", ndimage.correlate(image.astype(np.float64), EDGE)[1:-1, 1:-1])
    events: list[dict] = []
    fit = pipeline.learn(
        {"inputs": {"paths": str(inputs / "*.tif")}, "targets": {"paths": str(targets / "*.tif")},
         "kernel": {"shape": [3, 3]}, "output": {"path": str(tmp_path / "fit")}},
        progress=events.append,
    )
    np.testing.assert_allclose(np.squeeze(fit.weights), EDGE, rtol=1e-5, atol=1e-5)
    assert (tmp_path / "fit" / "kernel.npy").exists() and fit.pairs == 2
    assert capsys.readouterr() == ("", "")
