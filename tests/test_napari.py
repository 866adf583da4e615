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


def test_napari_names_and_colours_the_channels_an_ome_zarr_input_named(tmp_path: Path) -> None:
    import pipeline
    from test_channel_display import COLOURS, LABELS, WINDOWS, _ome_input

    channels = [{"label": label, "color": colour, "window": window} for label, colour, window in zip(LABELS, COLOURS, WINDOWS)]
    source = _ome_input(tmp_path / "in.zarr", np.zeros((2, 2, 16, 16), dtype=np.uint16), channels)
    store = tmp_path / "out.zarr"
    pipeline.run({
        "input": {"paths": str(source), "color": "keep"}, "steps": [{"convolve": {"kernel": "edge"}}],
        "output": {"path": str(store)}, "execution": {"scheduler": "sync"},
    })
    ((_, metadata, kind),) = napari_layers(store)
    assert kind == "image" and metadata["channel_axis"] == 1
    assert metadata["name"] == [f"result: {label}" for label in LABELS]
    assert metadata["contrast_limits"] == [[w["start"], w["end"]] for w in WINDOWS]
    assert [list(colormap.colors[-1][:3]) for colormap in metadata["colormap"]] == [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]
