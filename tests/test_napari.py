"""The store opens with napari's reader plugin (napari-ome-zarr through npe2), headless: no viewer, no Qt."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from conftest import job_config
from helpers import assert_ok

npe2 = pytest.importorskip("npe2")
pytest.importorskip("napari_ome_zarr")


def napari_layers(store: Path) -> list[tuple]:
    """What `napari --plugin napari-ome-zarr STORE` would add to the viewer: (data, metadata, kind)."""
    npe2.PluginManager.instance().discover()
    return npe2.read([str(store)], plugin_name="napari-ome-zarr", stack=False)


@pytest.mark.parametrize("format", ["ome", "ome-0.4"])
def test_napari_opens_every_level_of_the_result(small_images, tmp_path: Path, write_config, run_cli, format: str) -> None:
    store = tmp_path / "out.zarr"
    raw = job_config(small_images(), store)
    raw["output"].update(levels=2, format=format)
    assert_ok(run_cli("run", write_config(raw)))
    ((data, metadata, kind),) = napari_layers(store)
    assert kind == "image"
    assert [level.shape for level in data] == [(4, 48, 64), (4, 24, 32)]
    assert tuple(metadata["axis_labels"]) == ("image", "y", "x")
    group = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(np.asarray(data[0]), group["0"][:])
    np.testing.assert_array_equal(np.asarray(data[1]), group["1"][:])
