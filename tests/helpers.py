"""Assertions shared by the CLI-level tests: read a store back, check success and user errors."""

from __future__ import annotations

import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import zarr
from dask.callbacks import Callback


def read_store(path: Path) -> tuple[np.ndarray, dict, list[str]]:
    """The result array '0', the pipeline attributes and the sources, read back from disk."""
    group = zarr.open_group(str(path), mode="r")
    return group["0"][:], dict(group.attrs["pipeline"]), [str(s) for s in group["sources"][:]]


def write_slow_inputs(root: Path, images: int) -> None:
    """``images`` noise PNGs in root/images and a 97×31 kernel in root/kernel.npy: a job that takes a
    worker a fraction of a second per image (direct, float64), for runs that must last a few seconds."""
    (root / "images").mkdir()
    for index in range(1, images + 1):
        pixels = np.random.default_rng(index).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
        iio.imwrite(root / "images" / f"img{index}.png", pixels)
    np.save(root / "kernel.npy", np.random.default_rng(0).standard_normal((97, 31)))


def assert_ok(result) -> None:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"


# A log file's progress lines: "2026-12-01T21:10:45+0000 batch 3/20: …", "… resuming: …".
PROGRESS_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} (batch |resuming: )")


def assert_error(result, exit_code: int, *fragments: str) -> str:
    """A user error: the documented exit code, one line on stderr naming the problem, no traceback."""
    assert result.exit_code == exit_code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert "Traceback" not in result.output
    # Batches written before the error are logged a line each (stderr is not a terminal here).
    lines = [line for line in result.stderr.strip().splitlines() if not PROGRESS_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""
    return lines[0]


class PeakHeld(Callback):
    """Largest number of bytes of task results a local dask scheduler holds at once."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        held = sum(getattr(value, "nbytes", 0) for value in state["cache"].values())
        self.peak = max(self.peak, held)


CONFIG_FILES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
# Learn jobs (inputs and targets) apart from run jobs: each kind is checked by its own models.
LEARN_CONFIGS = [path for path in CONFIG_FILES if "targets:" in path.read_text(encoding="utf-8")]
RUN_CONFIGS = [path for path in CONFIG_FILES if path not in LEARN_CONFIGS]
