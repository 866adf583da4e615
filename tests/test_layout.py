"""Chunks, shards and OME-NGFF versions on disk: shard-aligned writes never lose a neighbour's data."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from scipy import ndimage

from conftest import job_config
from helpers import assert_error, assert_ok, read_store
from pipeline.errors import ConfigError
from pipeline.sinks.layout import (
    aligned_chunks, level_scale, level_shards, named_dimensions, ome_metadata, physical_scale, shard_shape,
)
from pipeline.sinks.writes import write_lazily

EDGE = np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])


def test_aligned_chunks_cut_at_every_grid_edge() -> None:
    assert aligned_chunks(10, 3, 4) == (1, 4, 4, 1)
    assert aligned_chunks(8, 0, 4) == (4, 4)
    assert aligned_chunks(2, 5, 4) == (2,)
    assert aligned_chunks(7, 0, 10) == (7,)


def test_shard_shapes_from_the_config() -> None:
    assert shard_shape(None, (1, 64, 64)) is None
    assert shard_shape(16, (1, 64, 64)) == (16, 64, 64)
    assert shard_shape([1, 256, 128], (1, 64, 64)) == (1, 256, 128)
    with pytest.raises(ConfigError, match=r"output.shards: \[1, 100, 64\].*whole chunks"):
        shard_shape([1, 100, 64], (1, 64, 64))
    with pytest.raises(ConfigError, match="one size per axis"):
        shard_shape([4, 64], (1, 64, 64))
    assert level_shards((1, 64, 64), (4, 128, 64), 1) == (4, 64, 32)


def test_ome_versions_put_the_metadata_where_their_readers_look() -> None:
    assert ome_metadata(("image", "y", "x"))["ome"]["version"] == "0.5"
    old = ome_metadata(("image", "y", "x"), 2, "0.4")
    assert "ome" not in old and old["multiscales"][0]["version"] == "0.4"
    assert [d["path"] for d in old["multiscales"][0]["datasets"]] == ["0", "1"]
    # omero channels sit beside the multiscales: under ome in 0.5, at the top in 0.4; none unless given.
    channel = {"label": "DAPI", "color": "0000FF", "window": {"min": 0, "max": 255, "start": 0, "end": 255}, "active": True}
    assert ome_metadata(("image", "c", "y", "x"), channels=[channel])["ome"]["omero"] == {"channels": [channel]}
    assert ome_metadata(("image", "c", "y", "x"), 1, "0.4", channels=[channel])["omero"] == {"channels": [channel]}
    assert "omero" not in ome_metadata(("image", "c", "y", "x"))["ome"] and "omero" not in old


def test_threads_writing_one_image_each_into_shards_lose_nothing(tmp_path: Path) -> None:
    """Per-image tasks would race on a shard of 4 images; the write is cut at shard edges instead."""
    target = zarr.create_array(
        str(tmp_path / "s.zarr"), shape=(10, 8, 8), chunks=(1, 8, 8), shards=(4, 8, 8), dtype="float32"
    )
    values = np.arange(10 * 64, dtype=np.float32).reshape(10, 8, 8)
    write_lazily(da.from_array(values[:7], chunks=(1, 8, 8)), target).compute(scheduler="threads", num_workers=4)
    # A later batch completes the shard the first one left half-written (images 4-6 of 4-7).
    write_lazily(da.from_array(values[7:], chunks=(1, 8, 8)), target, start=7).compute(scheduler="threads")
    np.testing.assert_array_equal(target[:], values)


def test_a_sharded_run_writes_one_file_per_shard(small_images, tmp_path: Path, write_config, run_cli) -> None:
    folder = small_images(("a1.png", "a2.png", "a3.png", "a4.png", "a5.png", "a6.png", "a7.png"))
    plain, sharded = tmp_path / "plain.zarr", tmp_path / "sharded.zarr"
    assert_ok(run_cli("run", write_config(job_config(folder, plain), "plain.yaml")))
    raw = job_config(folder, sharded)
    raw["output"].update(shards=3, levels=2)
    raw["execution"] = {"scheduler": "threads", "workers": 4, "batch_size": 2}
    assert_ok(run_cli("run", write_config(raw, "sharded.yaml")))
    group = zarr.open_group(str(sharded), mode="r")
    assert group["0"].shards == (3, 48, 64) and group["1"].shards == (3, 24, 32)
    assert sorted(p.name for p in (sharded / "0" / "c").iterdir()) == ["0", "1", "2"]  # 7 images, 3 per shard
    np.testing.assert_array_equal(read_store(sharded)[0], read_store(plain)[0])
    assert not np.isnan(group["1"][:]).any()


def test_skipping_an_image_inside_a_shard_keeps_its_neighbours(small_images, tmp_path: Path, write_config, run_cli) -> None:
    folder = small_images(("a1.png", "a2.png", "a3.png", "a4.png"))
    (folder / "a2b.png").write_bytes(b"broken")  # sorts between a2 and a3: inside the first shard
    raw = job_config(folder, tmp_path / "out.zarr")
    raw["input"]["on_error"] = "skip"
    raw["output"]["shards"] = 4
    raw["execution"] = {"scheduler": "threads", "workers": 2}
    assert_ok(run_cli("run", write_config(raw)))
    values, _, sources = read_store(tmp_path / "out.zarr")
    assert np.isnan(values[2]).all()
    for index in (0, 1, 3, 4):
        photo = iio.imread(sources[index]).astype(np.float64)
        gray = photo[..., :3] @ [0.299, 0.587, 0.114] if photo.ndim == 3 else photo
        np.testing.assert_allclose(values[index], ndimage.convolve(gray, EDGE, mode="reflect"), rtol=1e-5, atol=1e-3)


def test_shards_that_split_chunks_are_a_config_error(small_images, tmp_path: Path, write_config, run_cli) -> None:
    raw = job_config(small_images(), tmp_path / "out.zarr")
    raw["output"]["shards"] = [2, 40, 64]
    assert_error(run_cli("run", write_config(raw)), 2, "output.shards", "whole chunks of [1, 48, 64]")
    assert not (tmp_path / "out.zarr").exists()
    raw["output"].update(shards=2, format="ome-0.4")
    assert_error(run_cli("run", write_config(raw)), 2, "output.shards needs Zarr v3")


def test_ome_0_4_is_a_zarr_v2_store_that_ome_zarr_reads(small_images, tmp_path: Path, write_config, run_cli) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    folder = small_images()
    out, reference = tmp_path / "v04.zarr", tmp_path / "v05.zarr"
    raw = job_config(folder, out)
    raw["output"].update(format="ome-0.4", levels=2)
    assert_ok(run_cli("run", write_config(raw)))
    assert (out / ".zattrs").is_file() and not (out / "zarr.json").exists()
    assert_ok(run_cli("run", write_config(job_config(folder, reference), "ref.yaml")))
    (node,) = list(Reader(parse_url(str(out)))())
    assert node.zarr.version == "0.4"
    assert [axis["name"] for axis in node.metadata["axes"]] == ["image", "y", "x"]
    np.testing.assert_array_equal(np.asarray(node.data[0]), read_store(reference)[0])
    assert np.asarray(node.data[1]).shape == (4, 24, 32)
    # Resuming, inspecting and exporting read the v2 store like any other.
    assert "0 images processed, 4 already written" in run_cli("run", write_config(raw)).stdout
    shown = run_cli("inspect", out, "--json")
    assert_ok(shown)
    assert '"zarr_format": 2' in shown.stdout and "blosc(cname=lz4" in shown.stdout
    assert_ok(run_cli("export", out, tmp_path / "png"))


def test_pixel_size_and_unit_reach_the_axes_and_every_level(small_images, tmp_path: Path, write_config, run_cli) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = tmp_path / "scaled.zarr"
    raw = job_config(small_images(), out)
    raw["output"].update(levels=2, pixel_size=[0.5, 0.25], unit="micrometer")
    assert_ok(run_cli("run", write_config(raw)))
    (node,) = list(Reader(parse_url(str(out)))())
    assert [axis.get("unit") for axis in node.metadata["axes"]] == [None, "micrometer", "micrometer"]
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[1.0, 0.5, 0.25], [1.0, 1.0, 0.5]]
    raw["output"]["pixel_size"] = [0.5]
    assert_error(run_cli("run", write_config(raw), "--overwrite"), 2, "output.pixel_size: [0.5]", "2 space axes (y, x)")


def test_physical_scale_places_sizes_on_the_space_axes() -> None:
    assert physical_scale(("image", "z", "y", "x"), (2.0, 0.5, 0.5)) == [1.0, 2.0, 0.5, 0.5]
    assert physical_scale(("image", "c", "y", "x"), None) == [1.0] * 4
    with pytest.raises(ConfigError, match="3 space axes"):
        physical_scale(("image", "z", "y", "x"), (0.5, 0.5))


def _stacks(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(3)
    for index in range(2):
        stack = rng.integers(0, 4096, (5, 14, 17), dtype=np.uint16)
        tifffile.imwrite(folder / f"s{index}.tif", stack, photometric="minisblack")
    return folder


@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("kind", ["gray", "channels", "volume"])
@pytest.mark.parametrize("ome_format, version", [("ome", "0.5"), ("ome-0.4", "0.4")])
def test_ome_metadata_passes_the_strict_ngff_schema(
    small_images, tmp_path: Path, write_config, run_cli, levels: int, kind: str, ome_format: str, version: str
) -> None:
    import ngff_zarr  # the dev extra's ngff-zarr[validate]

    out = tmp_path / "out.zarr"
    if kind == "volume":
        raw = job_config(_stacks(tmp_path / "stacks"), out)
        raw["input"]["layout"] = "volume"
    elif kind == "channels":
        raw = job_config(small_images(("rgb.png",)), out)  # the first sample photograph is in colour
        raw["input"]["color"] = "keep"
    else:
        raw = job_config(small_images(), out)
    raw["output"].update(format=ome_format, levels=levels)
    assert_ok(run_cli("run", write_config(raw)))
    attrs = zarr.open_group(str(out), mode="r").attrs.asdict()
    ngff_zarr.validate(attrs, version=version, model="image", strict=True)
    (multiscale,) = attrs["ome"]["multiscales"] if version == "0.5" else attrs["multiscales"]
    axes = [axis["name"] for axis in multiscale["axes"]]
    assert axes == ["image", *{"gray": [], "channels": ["c"], "volume": ["z"]}[kind], "y", "x"]
    # The levels are 2x2 means over y and x (pipeline.steps.pyramid), which the metadata names.
    assert multiscale["type"] == "mean" and multiscale["metadata"]["method"] == "dask.array.coarsen"
    assert [axes[int(axis)] for axis in multiscale["metadata"]["kwargs"]["axes"]] == ["y", "x"]
    assert [dataset["path"] for dataset in multiscale["datasets"]] == [str(level) for level in range(levels)]


def test_named_dimensions_use_each_zarr_format_s_own_field() -> None:
    """Zarr v3 names dimensions in the array metadata; v2 readers look for ``_ARRAY_DIMENSIONS``."""
    assert named_dimensions(("image", "y", "x"), 3) == {"dimension_names": ["image", "y", "x"], "attributes": None}
    assert named_dimensions(("image",), 3, {"coordinates": "sources"}) == {
        "dimension_names": ["image"], "attributes": {"coordinates": "sources"},
    }
    assert named_dimensions(("image", "stat"), 2, {"columns": ["size"]}) == {
        "attributes": {"columns": ["size"], "_ARRAY_DIMENSIONS": ["image", "stat"]},
    }
    assert level_scale(("image", "y", "x"), (0.5, 0.25), 2) == [1.0, 2.0, 1.0]
    assert level_scale(("image", "z", "y", "x"), (3.0, 1.0, 1.0), 1) == [1.0, 3.0, 2.0, 2.0]
