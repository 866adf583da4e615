"""Stores written by the CLI open in the readers users have: xarray, tensorstore and pipeline.open_result.

Every store is written by ``python -m pipeline run`` in a subprocess, as a user runs it (the old
store's rewrite and append run in process), and every value read is compared with what zarr-python
reads from the same array.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import yaml
import zarr

import pipeline
from conftest import GRAY_SOURCES, MIXED_SOURCES, SAMPLES, write_small_image
from pipeline.errors import InputError
from tests.test_remote import Bucket, _subprocess, bucket, s3_endpoint  # noqa: F401 (the S3 fixtures)

xr = pytest.importorskip("xarray", reason="reading stores with xarray needs the xarray extra (in dev)")
ts = pytest.importorskip("tensorstore", reason="the tensorstore reader is in the dev extra")

REPO = Path(__file__).resolve().parents[1]
RNG = np.random.default_rng(16)
LEVELS = {"output": {"levels": 3, "pixel_size": [0.5, 0.25], "unit": "micrometer"}}


def _job(paths: Any, store: Any, steps: list | None = None, **sections: dict[str, Any]) -> dict[str, Any]:
    job = {
        "input": {"paths": str(paths)},
        "steps": steps or [{"convolve": {"kernel": "edge"}}],
        "output": {"path": str(store)},
        "execution": {"scheduler": "threads", "workers": 2},
    }
    for section, settings in sections.items():
        job[section].update(settings)
    return job


def _folders(root: Path) -> dict[str, Path]:
    """Small photographs (48x64, and 24x32 ones beside them), random RGB images and z-stacks."""
    folders = {name: root / name for name in ("photos", "sizes", "rgb", "stacks")}
    for folder in folders.values():
        folder.mkdir()
    for index, source in enumerate(MIXED_SOURCES):
        write_small_image(SAMPLES / source, folders["photos"] / f"img{index + 1}.png")
    for index, (source, size) in enumerate(zip(GRAY_SOURCES * 2, [(64, 48), (64, 48), (32, 24)])):
        write_small_image(SAMPLES / source, folders["sizes"] / f"s{index}.png", size)
    for index in range(3):
        iio.imwrite(folders["rgb"] / f"c{index}.png", RNG.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    for index in range(2):
        stack = RNG.integers(0, 4096, (5, 12, 16), dtype=np.uint16)
        tifffile.imwrite(folders["stacks"] / f"s{index}.tif", stack, photometric="minisblack")
    return folders


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every local store these tests read, each written by its own ``python -m pipeline run``, all at once."""
    root = tmp_path_factory.mktemp("results")
    folders = _folders(root)
    jobs = {
        "levels-ome": _job(folders["photos"], root / "levels-ome.zarr", **LEVELS),
        "levels-ome-0.4": _job(folders["photos"], root / "levels-ome-0.4.zarr", output={**LEVELS["output"], "format": "ome-0.4"}),
        "color-keep": _job(folders["rgb"], root / "keep.zarr", input={"color": "keep"}),
        "layer": _job(folders["rgb"], root / "layer.zarr", [{"layer": {"weights": "sobel"}}]),
        "volume": _job(folders["stacks"], root / "volume.zarr", input={"layout": "volume"},
                       output={"pixel_size": [2.0, 0.5, 0.5], "unit": "micrometer"}),
        "groups": _job(folders["sizes"], root / "groups.zarr", input={"shapes": "group"}),
    }
    commands = {"example": ["configs/example.yaml", "--set", f"output.path={root / 'example.zarr'}"]}
    for name, job in jobs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(job), encoding="utf-8")
        commands[name] = [str(root / f"{name}.yaml")]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    running = {
        name: subprocess.Popen([sys.executable, "-m", "pipeline", "run", *args], cwd=REPO, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for name, args in commands.items()
    }
    for name, process in running.items():
        _, errors = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {errors}"
    return {"example": root / "example.zarr", **{name: Path(job["output"]["path"]) for name, job in jobs.items()}}


def _arrays(group: zarr.Group) -> dict[str, zarr.Array]:
    return {path: node for path, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def _names(array: zarr.Array) -> tuple[str, ...] | None:
    if array.metadata.zarr_format == 2:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
        return tuple(names) if names else None
    return array.metadata.dimension_names


def _tensorstore(store: Path, array: str) -> np.ndarray:
    meta = zarr.open_array(str(store / array), mode="r").metadata
    spec = {"driver": "zarr3" if meta.zarr_format == 3 else "zarr", "kvstore": {"driver": "file", "path": str(store / array)}}
    return ts.open(spec, read=True).result().read().result()


def _same(a: Any, b: Any) -> None:
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.fixture(scope="module")
def example_store(stores: dict[str, Path]) -> Path:
    """The store of `make run`'s job (configs/example.yaml: eight photographs, 512x512)."""
    return stores["example"]


def test_the_example_job_opens_in_xarray_as_a_dataset_with_its_sources(example_store: Path) -> None:
    """`xarray.open_zarr(store)` and `open_datatree` open it: every array names its dimensions."""
    group = zarr.open_group(str(example_store), mode="r")
    arrays = _arrays(group)
    assert {"0", "sources", "ledger/done", "ledger/stats"} <= set(arrays)
    for path, array in arrays.items():
        names = _names(array)
        assert names is not None and len(names) == array.ndim, path
        assert names[0] == "image", path

    ds = xr.open_zarr(example_store, consolidated=False)
    assert ds["0"].dims == ("image", "y", "x")
    assert "sources" in ds.coords and ds["sources"].dims == ("image",)
    assert [str(name) for name in ds["sources"].values] == [str(name) for name in group["sources"][:]]
    assert isinstance(ds["0"].data, da.Array)
    _same(ds["0"], group["0"][:])
    assert ds.attrs["pipeline"]["status"] == "complete"

    tree = xr.open_datatree(example_store, engine="zarr", consolidated=False)
    assert set(tree.children) == {"ledger"}
    _same(tree["ledger"]["done"], group["ledger/done"][:])
    assert tree["ledger"]["stats"].dims == ("image", "stat")
    _same(_tensorstore(example_store, "0"), group["0"][:])


def test_open_result_labels_the_result_lazily(example_store: Path) -> None:
    result = pipeline.open_result(example_store)
    group = zarr.open_group(str(example_store), mode="r")
    assert result.axes == ("image", "y", "x") and result.status == "complete"
    assert result.sources == tuple(str(name) for name in group["sources"][:])
    assert result.provenance == dict(group.attrs["pipeline"])
    assert (result.level, result.levels, result.scale, result.unit) == (0, 1, (1.0, 1.0, 1.0), None)
    assert isinstance(result.data, da.Array)
    _same(result.data, group["0"][:])
    assert "level 0 of 1, 8x512x512 float32" in repr(result)

    array = result.to_xarray()
    assert isinstance(array.data, da.Array)
    assert array.dims == ("image", "y", "x")
    assert list(array["sources"].values) == list(result.sources)
    _same(array["x"], np.arange(512))
    assert array.attrs == result.provenance
    _same(array, group["0"][:])
    # The sources label the same images as xarray's own reading of the store.
    opened = xr.open_zarr(example_store, consolidated=False)
    xr.testing.assert_equal(array.drop_vars(["y", "x"]).rename(None), opened["0"].rename(None))


def test_to_xarray_without_xarray_says_how_to_install_it(example_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = pipeline.open_result(example_store)
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match=r"pip install 'imageconv-pipeline\[xarray\]'"):
        result.to_xarray()
    assert result.data.shape == (8, 512, 512)  # the rest needs no xarray


@pytest.mark.parametrize("output_format", ["ome", "ome-0.4"])
def test_every_level_opens_in_xarray_and_tensorstore(stores: dict[str, Path], output_format: str) -> None:
    store = stores[f"levels-{output_format}"]
    group = zarr.open_group(str(store), mode="r")
    assert set(_arrays(group)) >= {"0", "1", "2", "sources", "ledger/done", "ledger/stats"}
    assert all(_names(array) for array in _arrays(group).values())
    # One Dataset per level: the levels share their axis names (OME-NGFF requires it) but not their sizes.
    with pytest.raises(ValueError, match="conflicting sizes for dimension"):
        xr.open_zarr(store, consolidated=False)
    for level in range(3):
        others = [str(other) for other in range(3) if other != level]
        # Zarr v2 has no fill-value field of xarray's own: it would read zeros as missing.
        ds = xr.open_zarr(store, consolidated=False, drop_variables=others, mask_and_scale=False)
        assert ds[str(level)].sizes == {"image": 4, "y": 48 >> level, "x": 64 >> level}
        assert "sources" in ds.coords
        _same(ds[str(level)], group[str(level)][:])
        _same(_tensorstore(store, str(level)), group[str(level)][:])

        labelled = pipeline.open_result(store, level=level).to_xarray()
        _same(labelled, group[str(level)][:])
        np.testing.assert_allclose(labelled["y"], np.arange(48 >> level) * 0.5 * 2**level)
        np.testing.assert_allclose(labelled["x"], np.arange(64 >> level) * 0.25 * 2**level)
        assert labelled["y"].attrs["units"] == "micrometer"
        # The coordinates are where the OME-NGFF metadata places each pixel.
        multiscales = group.attrs["ome"]["multiscales"] if output_format == "ome" else group.attrs["multiscales"]
        (transform,) = multiscales[0]["datasets"][level]["coordinateTransformations"]
        assert transform["scale"][1:] == [float(labelled["y"][1]), float(labelled["x"][1])]
    with pytest.raises(InputError, match="has no level 3: it has levels 0 to 2"):
        pipeline.open_result(store, level=3)
    if output_format == "ome":  # OME-NGFF 0.5: each level's dimension_names are the multiscale's axis names
        models = pytest.importorskip("ome_zarr_models.v05.image", reason="ome-zarr-models comes with the dev extras")
        image = models.Image.from_zarr(group)
        assert [axis.name for axis in image.attributes.ome.multiscales[0].axes] == ["image", "y", "x"]


@pytest.mark.parametrize(("name", "channels"), [("color-keep", 3), ("layer", 2)])
def test_channels_have_their_own_axis(stores: dict[str, Path], name: str, channels: int) -> None:
    store = stores[name]
    stored = zarr.open_group(str(store), mode="r")["0"][:]
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["0"].dims == ("image", "c", "y", "x") and ds.sizes["c"] == channels
    _same(ds["0"], stored)
    labelled = pipeline.open_result(store).to_xarray()
    assert labelled.dims == ("image", "c", "y", "x") and "c" not in labelled.coords
    _same(labelled, stored)
    _same(_tensorstore(store, "0"), stored)


def test_volumes_carry_their_z_spacing(stores: dict[str, Path]) -> None:
    store = stores["volume"]
    stored = zarr.open_group(str(store), mode="r")["0"][:]
    ds = xr.open_zarr(store, consolidated=False)
    assert ds["0"].dims == ("image", "z", "y", "x")
    _same(ds["0"], stored)
    labelled = pipeline.open_result(store).to_xarray()
    _same(labelled["z"], [0.0, 2.0, 4.0, 6.0, 8.0])
    assert labelled["z"].attrs["units"] == "micrometer"
    _same(labelled, stored)
    _same(_tensorstore(store, "0"), stored)


def test_shape_groups_open_group_by_group(stores: dict[str, Path]) -> None:
    store = stores["groups"]
    groups = {"48x64": 2, "24x32": 1}
    for name, count in groups.items():
        group = zarr.open_group(str(store / name), mode="r")
        ds = xr.open_zarr(store / name, consolidated=False)
        assert ds["0"].sizes["image"] == count
        assert [str(source) for source in ds["sources"].values] == [str(source) for source in group["sources"][:]]
        _same(ds["0"], group["0"][:])
        result = pipeline.open_result(store, group=name)
        assert result.path.endswith(f"groups.zarr/{name}") and len(result.sources) == count
        _same(result.to_xarray(), group["0"][:])
        _same(_tensorstore(store / name, "0"), group["0"][:])
    with pytest.raises(InputError, match="holds one result per image shape"):
        pipeline.open_result(store)
    with pytest.raises(InputError, match=r"no shape group '9x9'; it has 48x64, 24x32"):
        pipeline.open_result(store, group="9x9")
    with pytest.raises(InputError, match="holds one result, not shape groups"):
        pipeline.open_result(store / "48x64", group="48x64")


def test_a_store_on_s3_opens_in_xarray(bucket: Bucket, tmp_path: Path, write_config, small_images) -> None:
    store = bucket.url("results/edge.zarr")
    job = _job(small_images(), store, output={"storage_options": bucket.options})
    done = _subprocess("run", write_config(job), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    group = zarr.open_group(store, mode="r", storage_options=bucket.options)
    ds = xr.open_zarr(store, consolidated=False, storage_options=bucket.options)
    assert ds["0"].dims == ("image", "y", "x")
    assert [str(name) for name in ds["sources"].values] == [str(name) for name in group["sources"][:]]
    _same(ds["0"], group["0"][:])
    labelled = pipeline.open_result(store, storage_options=bucket.options).to_xarray()
    _same(labelled, group["0"][:])
    assert labelled.attrs["status"] == "complete"


def test_a_store_written_before_dimension_names_still_opens(tmp_path: Path, write_config, small_images, run_cli) -> None:
    """Older stores named only the result's dimensions: open_result, resume and append still read them."""
    folder = small_images(("img1.png", "img2.png"))
    store = tmp_path / "old.zarr"
    job = _job(folder, store)
    assert run_cli("run", write_config(job)).exit_code == 0
    group = zarr.open_group(str(store), mode="r+")
    for path in ("sources", "ledger/done", "ledger/stats"):  # rewritten as the store used to write them
        old = group[path]
        values, chunks, fill = old[:], old.chunks, old.fill_value
        del group[path]
        group.create_array(path, shape=values.shape, chunks=chunks, dtype=values.dtype if path != "sources" else str, fill_value=fill)[:] = values
    del group["0"].attrs["coordinates"]
    assert _names(group["sources"]) is None
    with pytest.raises(KeyError, match="dimension_names"):  # what xarray said of every store before
        xr.open_zarr(store, consolidated=False)
    result = pipeline.open_result(store)
    assert len(result.sources) == 2 and result.status == "complete"
    _same(result.to_xarray(), group["0"][:])

    small_images(("img3.png",))  # a new image: the rerun appends it to the old store
    done = run_cli("run", write_config(job, "again.yaml"), "--append")
    assert done.exit_code == 0, done.output
    again = pipeline.open_result(store)
    assert [Path(source).name for source in again.sources] == ["img1.png", "img2.png", "img3.png"]
    assert again.status == "complete"
    assert not np.isnan(again.data.compute()).any()
