"""The plan: padding mixed sizes, the job fingerprint, and the estimates `pipeline plan` prints."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr
from scipy import ndimage

from pipeline.config import validate_config
from pipeline.errors import InputError
from pipeline.job_plan import build_plan
from pipeline.job_run import run

RNG = np.random.default_rng(5)
BLUR = np.full((3, 3), 1 / 9)


def _config(paths, out="unused.zarr", steps=None, **input_options):
    return validate_config(
        {
            "input": {"paths": str(paths), **input_options},
            "steps": [{"convolve": {"kernel": "blur"}}] if steps is None else steps,
            "output": {"path": str(out), "dtype": "float64"},
            "execution": {"scheduler": "sync"},
        }
    )


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    iio.imwrite(folder / "a.png", RNG.integers(0, 256, (20, 30), dtype=np.uint8))
    iio.imwrite(folder / "b.png", RNG.integers(0, 256, (25, 18), dtype=np.uint8))
    return folder


def test_pad_brings_every_image_to_the_largest(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "padded.zarr"
    run(_config(mixed, out, shapes="pad", pad_value=7.0))
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].shape == (2, 25, 30)
    assert group["source_shapes"][:].tolist() == [[20, 30], [25, 18]]
    for index, name in enumerate(("a.png", "b.png")):
        pixels = iio.imread(mixed / name).astype(np.float64)
        padded = np.pad(pixels, [(0, 25 - pixels.shape[0]), (0, 30 - pixels.shape[1])], constant_values=7.0)
        np.testing.assert_allclose(group["0"][index], ndimage.convolve(padded, BLUR, mode="reflect"), rtol=1e-12)


def test_strict_names_the_file_and_the_way_out(mixed: Path) -> None:
    plan = build_plan(_config(mixed))
    with pytest.raises(InputError, match=r"b\.png.*\(25, 18\).*input\.shapes: pad"):
        plan.result().compute(scheduler="sync")


def test_pad_cannot_change_channels(mixed: Path) -> None:
    iio.imwrite(mixed / "c.png", RNG.integers(0, 256, (5, 5, 3), dtype=np.uint8))
    with pytest.raises(InputError, match=r"c\.png.*channels"):
        build_plan(_config(mixed, shapes="pad", color="keep"))


def test_fingerprint_follows_the_values_not_the_execution(mixed: Path) -> None:
    base = build_plan(_config(mixed, shapes="pad")).fingerprint
    other_kernel = build_plan(_config(mixed, steps=[{"convolve": {"kernel": "edge"}}], shapes="pad")).fingerprint
    same_values = validate_config(
        {**_config(mixed, shapes="pad").model_dump(mode="json"), "execution": {"scheduler": "threads", "workers": 3}}
    )
    assert other_kernel != base
    assert build_plan(same_values).fingerprint == base


def test_estimates(mixed: Path) -> None:
    estimates = build_plan(_config(mixed, shapes="pad")).estimates()
    assert estimates["images"] == 2 and estimates["tasks"] >= 2
    assert estimates["bytes_written_uncompressed"] == 2 * 25 * 30 * 8
    assert estimates["peak_memory_per_task"] >= 25 * 30 * 8


@pytest.mark.parametrize(
    "source_dtype, output, steps, warns",
    [
        ("uint8", "uint8", [{"convolve": {"kernel": "edge"}}], True),
        ("uint8", "uint8", [{"convolve": {"kernel": "edge"}}, {"normalize": "minmax"}], False),
        ("uint8", "uint16", [], False),
        ("uint16", "uint8", [], True),
        ("uint16", "float32", [{"convolve": {"kernel": "edge"}}], False),
        # a blur or gaussian keeps the input's range: no false alarm
        ("uint8", "uint8", [{"convolve": {"kernel": "blur"}}], False),
        ("uint8", "uint8", [{"convolve": {"kernel": "gaussian", "params": {"sigma": 2.0}}}], False),
        ("uint16", "uint16", [{"convolve": {"kernel": "box", "params": {"size": 3}, "mode": "valid"}}], False),
        # ... unless what lies beyond the edge is outside it
        ("uint8", "uint8", [{"convolve": {"kernel": "blur", "boundary": "constant", "cval": -1.0}}], True),
        ("uint8", "uint8", [{"convolve": {"kernel": "sharpen"}}], True),
        ("uint8", "int16", [{"convolve": {"kernel": "edge"}}], False),  # -2040..2040 fits
    ],
)
def test_integer_output_is_never_narrowed_silently(tmp_path, source_dtype, output, steps, warns) -> None:
    iio.imwrite(tmp_path / "a.png", np.zeros((4, 4), dtype=source_dtype))
    config = validate_config(
        {"input": {"paths": str(tmp_path / "a.png")}, "steps": steps, "output": {"path": "o.zarr", "dtype": output}}
    )
    message = build_plan(config).narrowing()
    assert (message is not None) == warns
    if warns:
        assert f"output.dtype {output}" in message and "normalize" in message


def test_the_range_is_carried_through_every_step(tmp_path) -> None:
    iio.imwrite(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    steps = [{"convolve": {"kernel": "edge"}}, {"convolve": {"kernel": "blur"}}, {"convolve": {"kernel": [1.0, -1.0]}}]
    config = validate_config({"input": {"paths": str(tmp_path / "a.png")}, "steps": steps, "output": {"path": "o.zarr"}})
    assert build_plan(config).value_range() == (-4080.0, 4080.0)
    unit = validate_config(
        {"input": {"paths": str(tmp_path / "a.png"), "scale": "unit"}, "steps": steps[:1], "output": {"path": "o.zarr"}}
    )
    assert build_plan(unit).value_range() == (-8.0, 8.0)


def test_provenance_records_how_well_a_kernel_separates(mixed: Path) -> None:
    """A Gaussian pasted as float32 values is run as one separable pass, and the store says how close."""
    from pipeline.steps.kernels import gaussian

    pasted = gaussian(sigma=2.0, truncate=3.5).astype(np.float32).tolist()
    steps = [{"convolve": {"kernel": pasted}}]
    config = validate_config({
        "input": {"paths": str(mixed / "a.png")}, "steps": steps,
        "output": {"path": "unused.zarr", "dtype": "float32"}, "execution": {"scheduler": "sync"},
    })
    (record,) = build_plan(config).step_provenance
    assert record["strategy"] == "separable (opencv)"
    assert record["separation"]["rank"] == 1 and not record["separation"]["constant"]
    assert 0 < record["separation"]["residual"] <= record["separation"]["tolerance"] < 1e-6


def _box_job(folder: Path, out: Path):
    steps = [{"convolve": {"kernel": "box", "params": {"size": 21}}}]
    return validate_config(
        {"input": {"paths": str(folder), "color": "gray"}, "steps": steps,
         "output": {"path": str(out), "dtype": "float32"}, "execution": {"scheduler": "sync"}}
    )


@pytest.mark.parametrize("suffix, strategy", [(".jpg", "box (opencv)"), (".png", "box (opencv)"), (".tif", "separable (opencv)")])
def test_a_large_box_runs_on_running_sums_only_for_files_always_read_whole(tmp_path: Path, suffix: str, strategy: str) -> None:
    """A TIFF may be read by tiles under another memory budget, so its box stays a separable pass."""
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(2):
        iio.imwrite(folder / f"{index}{suffix}", RNG.integers(0, 256, (40, 70), dtype=np.uint8))
    out = tmp_path / "box.zarr"
    plan = build_plan(_box_job(folder, out))
    assert plan.stages[0].strategies == (strategy,)
    run(_box_job(folder, out))
    stored = zarr.open_group(str(out), mode="r")["0"][:]
    for index in range(2):
        pixels = iio.imread(folder / f"{index}{suffix}").astype(np.float64)
        np.testing.assert_allclose(stored[index], ndimage.uniform_filter(pixels, 21, mode="reflect"), rtol=0, atol=1e-4)
