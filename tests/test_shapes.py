"""input.shapes: group — one result per distinct image shape, each with its own source list."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr
from scipy import ndimage

from conftest import SAMPLES, write_small_image
from helpers import assert_error, assert_ok, read_store
from pipeline.config import InputConfig
from pipeline.sources.shapes import group_by_shape, group_name

EDGE = np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])


def expected_edges(paths: list[Path]) -> np.ndarray:
    gray = []
    for path in paths:
        pixels = iio.imread(path).astype(np.float64)
        gray.append(pixels[..., :3] @ [0.299, 0.587, 0.114] if pixels.ndim == 3 else pixels)
    return np.stack([ndimage.convolve(image, EDGE, mode="reflect") for image in gray])


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """Five real photographs in three sizes, interleaved: a1 (48x64), b2 (30x40), c3 (48x64), d4 (30x40), e5 (20x20)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    sizes = {"a1": (64, 48), "b2": (40, 30), "c3": (64, 48), "d4": (40, 30), "e5": (20, 20)}
    photos = ["01-astronaut.jpg", "02-camera.jpg", "03-chelsea.jpg", "08-coins.jpg", "01-astronaut.jpg"]
    for (name, size), photo in zip(sizes.items(), photos):
        write_small_image(SAMPLES / photo, folder / f"{name}.png", size)
    return folder


@pytest.fixture
def job(mixed: Path, tmp_path: Path, make_job, write_config):
    def write(**input_extra) -> Path:
        raw = make_job(mixed, tmp_path / "out.zarr", "edge")
        raw["input"].update({"shapes": "group", **input_extra})
        raw["execution"] = {"scheduler": "sync"}
        return write_config(raw)

    return write


def test_groups_are_named_by_shape_in_order_of_appearance(mixed: Path) -> None:
    files = sorted(str(path) for path in mixed.iterdir())
    split = group_by_shape(files, InputConfig(paths=files))
    assert list(split.groups) == ["48x64", "30x40", "20x20"]
    assert [Path(s).name for s in split.groups["48x64"]] == ["a1.png", "c3.png"]
    assert split.shapes["30x40"] == (30, 40)
    assert group_name((3, 48, 64)) == "3x48x64"


def test_each_shape_gets_its_own_result(mixed: Path, tmp_path: Path, job, run_cli) -> None:
    result = run_cli("run", job())
    assert_ok(result)
    assert "48x64 (2 images), 30x40 (2 images), 20x20 (1 image)" in result.stdout
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    attrs = root.attrs["pipeline"]
    assert attrs["status"] == "complete"
    assert attrs["groups"] == {"48x64": [48, 64], "30x40": [30, 40], "20x20": [20, 20]}
    for name, members in {"48x64": ["a1", "c3"], "30x40": ["b2", "d4"], "20x20": ["e5"]}.items():
        values, member_attrs, sources = read_store(tmp_path / "out.zarr" / name)
        assert [Path(s).stem for s in sources] == members
        assert member_attrs["status"] == "complete"
        np.testing.assert_allclose(values, expected_edges([mixed / f"{m}.png" for m in members]), rtol=1e-5, atol=1e-3)
        assert zarr.open_group(str(tmp_path / "out.zarr" / name), mode="r").attrs["ome"]["multiscales"]


def test_rerun_resumes_and_append_adds_to_old_and_new_groups(mixed: Path, tmp_path: Path, job, run_cli) -> None:
    config = job()
    assert_ok(run_cli("run", config))
    assert "0 images processed, 5 already written" in run_cli("run", config).stdout
    write_small_image(SAMPLES / "03-chelsea.jpg", mixed / "f6.png", (40, 30))  # an old shape
    write_small_image(SAMPLES / "02-camera.jpg", mixed / "g7.png", (50, 50))  # a new one
    assert_error(run_cli("run", config), 4, "not in store", "--append")
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["pipeline"]["status"] == "complete"
    result = run_cli("run", config, "--append")
    assert_ok(result)
    assert "2 images processed, 5 already written" in result.stdout
    values, _, sources = read_store(tmp_path / "out.zarr" / "30x40")
    assert [Path(s).stem for s in sources] == ["b2", "d4", "f6"]
    np.testing.assert_allclose(values, expected_edges([mixed / f"{m}.png" for m in ("b2", "d4", "f6")]), rtol=1e-5, atol=1e-3)
    assert [Path(s).stem for s in read_store(tmp_path / "out.zarr" / "50x50")[2]] == ["g7"]
    assert set(zarr.open_group(str(tmp_path / "out.zarr")).attrs["pipeline"]["groups"]) == {"48x64", "30x40", "20x20", "50x50"}


def test_unreadable_files_are_listed_in_the_root_with_skip(mixed: Path, tmp_path: Path, job, run_cli) -> None:
    (mixed / "z9.png").write_bytes(b"not an image")
    assert_error(run_cli("run", job()), 3, "z9.png")
    result = run_cli("run", job(on_error="skip"), "--overwrite")
    assert_ok(result)
    assert "1 unreadable (left out)" in result.stdout
    root = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["pipeline"]
    assert [Path(entry["source"]).name for entry in root["unreadable"]] == ["z9.png"]


def test_inspect_lists_the_groups_and_export_asks_for_one(tmp_path: Path, job, run_cli) -> None:
    assert_ok(run_cli("run", job()))
    store = tmp_path / "out.zarr"
    shown = run_cli("inspect", store, "--json")
    assert_ok(shown)
    info = json.loads(shown.stdout)
    assert [(g["group"], g["images"], g["written"], g["status"]) for g in info["groups"]] == [
        ("48x64", 2, 2, "complete"), ("30x40", 2, 2, "complete"), ("20x20", 1, 1, "complete")
    ]
    assert "pipeline inspect" in run_cli("inspect", store).stdout
    assert_error(run_cli("export", store, tmp_path / "png"), 3, "one result per image shape", "48x64")
    assert_ok(run_cli("export", store / "30x40", tmp_path / "png"))
    assert len(list((tmp_path / "png").glob("*.png"))) == 2


def test_plan_shows_one_plan_per_group(job, run_cli) -> None:
    shown = run_cli("plan", job(), "--json")
    assert_ok(shown)
    groups = json.loads(shown.stdout)["groups"]
    assert {name: plan["images"] for name, plan in groups.items()} == {"48x64": 2, "30x40": 2, "20x20": 1}
    assert groups["30x40"]["stages"][0]["shape"] == [2, 30, 40]


def test_a_grouped_store_is_not_resumed_by_another_layout(tmp_path: Path, job, run_cli, make_job, write_config, mixed) -> None:
    assert_ok(run_cli("run", job()))
    raw = make_job(mixed, tmp_path / "out.zarr", "edge")
    raw["input"]["shapes"] = "pad"
    assert_error(run_cli("run", write_config(raw, "pad.yaml")), 4, "input.shapes: group")


def test_strict_lists_the_first_images_of_other_shapes(mixed: Path, tmp_path: Path, job, run_cli, make_job, write_config) -> None:
    raw = make_job(mixed, tmp_path / "strict.zarr", "edge")
    raw["execution"] = {"scheduler": "sync"}
    line = assert_error(run_cli("run", write_config(raw, "strict.yaml")), 3, "(30, 40)", "(48, 64)", "(20, 20)")
    # Whichever of them a task met first, the line names every image of another size, none other.
    assert [name for name in ("a1", "b2", "c3", "d4", "e5") if f"{name}.png" in line] == ["a1", "b2", "d4", "e5"]
    assert "group writes one result per shape" in line
