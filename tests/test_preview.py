"""The contact sheet: sources (min-max stretched) above results (stretched between percentiles 1 and 99)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from pipeline.config import validate_config
from pipeline.errors import InputError
from pipeline.preview import contact_sheet
from pipeline.job_run import run


@pytest.fixture
def store(small_images, tmp_path: Path) -> Path:
    out = tmp_path / "edges.zarr"
    config = validate_config(
        {"input": {"paths": str(small_images())}, "steps": [{"convolve": {"kernel": "edge"}}], "output": {"path": str(out)}}
    )
    run(config)
    return out


def test_sources_above_results(store: Path, tmp_path: Path) -> None:
    import zarr

    sheet = iio.imread(contact_sheet(str(store), str(tmp_path / "sheet.png"), count=3, cell=64))
    assert sheet.shape == (128, 192, 3)
    result = zarr.open_group(str(store), mode="r")["0"][0]
    # A 48x64 image fills a 64-pixel cell at scale 1: the result cell is its 1-99 percentile stretch.
    low, high = np.percentile(result.astype(np.float64), (1, 99))
    stretched = np.rint((np.clip(result, low, high) - low) / (high - low) * 255)
    cell = sheet[64 + 8 : 64 + 56, 0:64, 0].astype(float)
    assert np.abs(cell - stretched).max() <= 1
    source = sheet[8:56, 0:64, 0]
    assert source.min() == 0 and source.max() == 255  # the source row: its own min to max
    assert sheet[:64, :64].std() > 10 and sheet[64:, :64].std() > 10  # both rows hold pictures


def test_a_missing_source_leaves_its_cell_empty(store: Path, tmp_path: Path) -> None:
    import zarr

    first = str(zarr.open_group(str(store), mode="r")["sources"][0])
    Path(first).unlink()
    sheet = iio.imread(contact_sheet(str(store), str(tmp_path / "sheet.png"), count=2, cell=64))
    assert (sheet[:64, :64] == 32).all() and sheet[64:, :64].std() > 10


def test_not_a_store(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        contact_sheet(str(tmp_path / "nothing.zarr"), str(tmp_path / "sheet.png"))


@pytest.mark.parametrize("bank, rows", [("sobel", 3), ("gabor", 5)])  # 2 maps; 8 maps of which the first 4
def test_feature_maps_get_a_row_per_channel(small_images, tmp_path: Path, bank: str, rows: int) -> None:
    import zarr

    out = tmp_path / f"{bank}.zarr"
    run(validate_config({"input": {"paths": str(small_images())}, "steps": [{"layer": {"weights": bank}}], "output": {"path": str(out)}}))
    sheet = iio.imread(contact_sheet(str(out), str(tmp_path / "maps.png"), count=2, cell=64))
    assert sheet.shape == (rows * 64, 128, 3)
    maps = zarr.open_group(str(out), mode="r")["0"][0]
    for channel in range(rows - 1):  # each row is that channel's own 1-99 percentile stretch
        low, high = np.percentile(maps[channel].astype(np.float64), (1, 99))
        stretched = np.rint((np.clip(maps[channel], low, high) - low) / (high - low) * 255)
        cell = sheet[(channel + 1) * 64 + 8 : (channel + 1) * 64 + 56, 0:64, 0].astype(float)
        assert np.abs(cell - stretched).max() <= 1
