"""`pipeline validate` reads the inputs' headers and refuses what `run` would refuse, in the run's words."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from helpers import assert_ok
from pipeline.config import validate_config
from pipeline.sources.headers import survey_inputs

RNG = np.random.default_rng(11)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for index in range(3):
        iio.imwrite(images / f"img{index}.png", RNG.integers(0, 256, (20, 24), dtype=np.uint8))
    return images


def _job(write_config, folder: Path, **extra) -> Path:
    return write_config({"input": {"paths": str(folder), **extra}, "steps": [], "output": {"path": str(folder.parent / "o.zarr")}})


def _problems(result) -> list[str]:
    assert result.exit_code == 3, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    return result.stderr.strip().splitlines()


def test_a_good_collection_is_summarised(folder: Path, write_config, run_cli) -> None:
    result = run_cli("validate", _job(write_config, folder))
    assert_ok(result)
    assert "valid: 3 input files (headers checked (all 3): shape (20, 24), 8-bit (uint8))" in result.stdout


def test_images_of_other_sizes_are_refused_as_run_would(folder: Path, write_config, run_cli) -> None:
    iio.imwrite(folder / "img3.png", RNG.integers(0, 256, (30, 24), dtype=np.uint8))
    (line,) = _problems(run_cli("validate", _job(write_config, folder)))
    assert "images of 2 shapes:" in line and "img0.png' (20, 24) (3 files)" in line and "img3.png' (30, 24) (1 file)" in line
    assert "input.shapes: pad" in line
    assert_ok(run_cli("validate", _job(write_config, folder, shapes="group")))


def test_other_bit_depths_are_refused_unless_scaled(folder: Path, write_config, run_cli) -> None:
    iio.imwrite(folder / "img3.png", RNG.integers(0, 65536, (20, 24), dtype=np.uint16))
    (line,) = _problems(run_cli("validate", _job(write_config, folder)))
    assert "files of 2 bit depths:" in line and "img3.png' 16-bit (uint16) (1)" in line and "input.scale: unit" in line
    assert_ok(run_cli("validate", _job(write_config, folder, scale="unit")))


def test_unreadable_headers_are_named(folder: Path, write_config, run_cli) -> None:
    (folder / "img9.png").write_bytes(b"not a png")
    (line,) = _problems(run_cli("validate", _job(write_config, folder)))
    assert "cannot read image" in line and "img9.png" in line
    assert_ok(run_cli("validate", _job(write_config, folder, on_error="skip")))


def test_validate_says_what_it_did_not_check(folder: Path, write_config, run_cli) -> None:
    result = run_cli("validate", _job(write_config, folder), "--headers", "2")
    assert_ok(result)
    assert "headers checked (the first 2 of 3)" in result.stdout and "checked as they are read" in result.stdout


def test_channels_count_in_the_shape_when_kept(folder: Path) -> None:
    iio.imwrite(folder / "img3.png", RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    settings = validate_config({"input": {"paths": str(folder), "color": "keep", "shapes": "pad"}, "output": {"path": "o.zarr"}}).input
    survey = survey_inputs(settings)
    assert set(survey.shapes) == {(1, 20, 24), (3, 20, 24)}
    assert any("different channels cannot be padded" in problem for problem in survey.problems(settings))
