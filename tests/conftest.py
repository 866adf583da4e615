"""Shared fixtures: the bundled samples, small real images for fast runs, config files, the CLI."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"

# Natural order is img1, img2, img3, img10; plain string sorting would put img10 second.
SMALL_NAMES = ("img10.png", "img2.png", "img1.png", "img3.png")
# Alternating RGB and single-channel photographs, so a run mixes both kinds of file.
MIXED_SOURCES = ("01-astronaut.jpg", "02-camera.jpg", "03-chelsea.jpg", "08-coins.jpg")
GRAY_SOURCES = ("02-camera.jpg", "08-coins.jpg")
SMALL_SIZE = (64, 48)  # (width, height) as Pillow counts: arrays are 48 x 64


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    return SAMPLES


def write_small_image(source: Path, target: Path, size: tuple[int, int] = SMALL_SIZE) -> Path:
    """A real photograph, cropped to the aspect ratio of ``size`` and downscaled to it."""
    with Image.open(source) as photo:
        width, height = photo.size
        crop_height = round(width * size[1] / size[0])
        top = (height - crop_height) // 2
        small = photo.crop((0, top, width, top + crop_height)).resize(size, Image.Resampling.LANCZOS)
        small.save(target)
    return target


@pytest.fixture
def small_images(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write small PNG versions of the samples into a folder and return the folder.

    ``small_images()`` gives four 48x64 images named img10, img2, img1, img3 (RGB and gray
    alternating); ``gray=True`` uses only the single-channel photographs.
    """

    def make(
        names: tuple[str, ...] = SMALL_NAMES,
        *,
        gray: bool = False,
        size: tuple[int, int] = SMALL_SIZE,
        folder: str = "images",
    ) -> Path:
        target = tmp_path / folder
        target.mkdir(parents=True, exist_ok=True)
        sources = itertools.cycle(GRAY_SOURCES if gray else MIXED_SOURCES)
        for name, source in zip(names, sources):
            write_small_image(SAMPLES / source, target / name, size)
        return target

    return make


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Factory: dump a mapping (or any YAML value, or raw text) to ``tmp_path/<name>``; return the path."""

    def write(data: Any, name: str = "job.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        return path

    return write


def job_config(paths: Any = "images/*.png", output: Any = "out.zarr", kernel: Any = "edge", **convolve: Any) -> dict:
    """A minimal valid job (one convolve step) as the raw mapping a YAML file holds."""
    return {
        "input": {"paths": str(paths)},
        "steps": [{"convolve": {"kernel": kernel, **convolve}}],
        "output": {"path": str(output)},
    }


@pytest.fixture
def make_job() -> Callable[..., dict]:
    return job_config


@pytest.fixture(scope="session")
def run_cli() -> Callable[..., Any]:
    """Invoke the ``pipeline`` Typer app in-process; returns click's Result (stdout, stderr, exit_code).

    A wide COLUMNS keeps rich tables (inspect, kernels) from wrapping long temporary paths.
    """
    runner = CliRunner()

    def invoke(*args: Any) -> Any:
        return runner.invoke(app, [str(arg) for arg in args], env={"COLUMNS": "300"})

    return invoke
