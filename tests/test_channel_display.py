"""An OME-Zarr input's channel names, colours and windows carried to the result (channel_display.py).

The inputs are written by ome-zarr-py; the results are validated by ome-zarr-models and read back
by ome-zarr-py's reader (what napari-ome-zarr shows), and the windows are checked against the
values the steps can produce, computed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

import pipeline
from pipeline.channel_display import result_channels

RNG = np.random.default_rng(5)
LABELS = ["DAPI", "GFP"]
COLOURS = ["0000FF", "00FF00"]
WINDOWS = [{"min": 0.0, "max": 65535.0, "start": 100.0, "end": 3000.0}, {"min": 0.0, "max": 65535.0, "start": 50.0, "end": 2000.0}]
EDGE_REACH = 8 * 65535.0  # the edge kernel's positive and negative weights sum to 8 and -8


def _ome_input(path: Path, images: np.ndarray, channels: list[dict[str, Any]] | None) -> Path:
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    root = zarr.open_group(parse_url(path, mode="w").store, mode="w")
    write_image(images, root, axes="tcyx", scale_factors=[2], **({"omero": {"channels": channels}} if channels else {}))
    return path


def _with_omero(path: Path, channels: list[dict[str, Any]]) -> Path:
    """Omero channels as other tools write them, which ome-zarr-py's writer would refuse."""
    metadata = json.loads((path / "zarr.json").read_text())
    metadata["attributes"]["ome"]["omero"] = {"channels": channels}
    (path / "zarr.json").write_text(json.dumps(metadata))
    return path


@pytest.fixture
def labelled(tmp_path: Path) -> Path:
    """Two images (t) of two uint16 channels, named, coloured and windowed as a microscope would."""
    channels = [
        {"label": label, "color": colour, "window": dict(window), "active": True}
        for label, colour, window in zip(LABELS, COLOURS, WINDOWS)
    ]
    return _ome_input(tmp_path / "in.zarr", RNG.integers(0, 4000, (2, 2, 40, 32), dtype=np.uint16), channels)


def _job(source: Path, out: Path, steps: list[dict[str, Any]], **output: Any) -> dict[str, Any]:
    return {
        "input": {"paths": str(source), "color": "keep"},
        "steps": steps,
        "output": {"path": str(out), **output},
        "execution": {"scheduler": "sync"},
    }


def _attributes(store: Path) -> dict[str, Any]:
    return json.loads((store / "zarr.json").read_text())["attributes"]


def test_a_convolution_carries_labels_colours_and_windows_that_validate_and_read(labelled: Path, tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.common.omero import Omero
    from ome_zarr_models.v05.image import Image

    out = tmp_path / "out.zarr"
    pipeline.run(_job(labelled, out, [{"convolve": {"kernel": "gaussian", "params": {"sigma": 1.5}}}]))
    attributes = _attributes(out)
    channels = attributes["ome"]["omero"]["channels"]
    assert [channel["label"] for channel in channels] == LABELS
    assert [channel["color"] for channel in channels] == COLOURS
    # A Gaussian keeps the values in the input's range: its windows are the input's.
    assert [channel["window"] for channel in channels] == WINDOWS
    assert all(channel["active"] is True for channel in channels)

    # ome-zarr-models 0.5 validates the image and leaves omero to the model 0.4 declares it by.
    Image.from_zarr(zarr.open_group(str(out), mode="r"))
    omero = Omero.model_validate(attributes["ome"]["omero"])
    assert [channel.model_extra["label"] for channel in omero.channels] == LABELS
    (node, *_) = Reader(parse_url(str(out)))()
    assert node.metadata["channel_names"] == LABELS
    assert node.metadata["contrast_limits"] == [[100.0, 3000.0], [50.0, 2000.0]]
    # The provenance keeps what it recorded of the input.
    assert attributes["pipeline"]["input_array"]["channel_names"] == LABELS


def test_ome_0_4_carries_them_beside_its_multiscales(labelled: Path, tmp_path: Path) -> None:
    from ome_zarr_models.v04.image import Image

    out = tmp_path / "out.zarr"
    pipeline.run(_job(labelled, out, [{"convolve": {"kernel": "edge"}}], format="ome-0.4"))
    group = zarr.open_group(str(out), mode="r")
    image = Image.from_zarr(group)
    assert [channel.label for channel in image.attributes.omero.channels] == LABELS
    assert group.attrs["omero"]["channels"][1]["window"] == {"min": -EDGE_REACH, "max": EDGE_REACH, "start": 50.0, "end": 2000.0}


def test_our_store_read_as_input_carries_them_on_again(labelled: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first.zarr", tmp_path / "second.zarr"
    pipeline.run(_job(labelled, first, [{"convolve": {"kernel": "gaussian"}}]))
    pipeline.run(_job(first, second, [{"pool": {"function": "max", "size": 2}}]))
    assert _attributes(second)["ome"]["omero"] == _attributes(first)["ome"]["omero"]


@pytest.mark.parametrize(
    ("steps", "dtype", "windows"),
    [
        # Edges reach ±8·65535; the input's contrast stays, inside that range.
        ([{"convolve": {"kernel": "edge"}}], "float32",
         [(-EDGE_REACH, EDGE_REACH, 100.0, 3000.0), (-EDGE_REACH, EDGE_REACH, 50.0, 2000.0)]),
        ([{"convolve": {"kernel": "edge"}}, {"activation": "relu"}, {"pool": {"function": "max", "size": 2}}], "float32",
         [(0.0, EDGE_REACH, 100.0, 3000.0), (0.0, EDGE_REACH, 50.0, 2000.0)]),
        # uint8 clips at 255: the input's window is clipped into the stored range.
        ([{"convolve": {"kernel": "edge"}}], "uint8", [(0.0, 255.0, 100.0, 255.0), (0.0, 255.0, 50.0, 255.0)]),
        # Normalised values are on no scale of the input's: the range is the contrast.
        ([{"convolve": {"kernel": "edge"}}, {"normalize": "minmax"}], "float32", [(0.0, 1.0, 0.0, 1.0)] * 2),
        ([{"normalize": "minmax"}], "uint16", [(0.0, 65535.0, 0.0, 65535.0)] * 2),
        # A window that falls outside the result's range gives way to the range.
        ([{"activation": {"function": "clip", "max": 40.0}}], "float32", [(0.0, 40.0, 0.0, 40.0)] * 2),
    ],
)
def test_windows_follow_the_values_the_steps_can_produce(
    labelled: Path, tmp_path: Path, steps: list[dict[str, Any]], dtype: str, windows: list[tuple[float, ...]]
) -> None:
    channels = result_channels(pipeline.plan(_job(labelled, tmp_path / "out.zarr", steps, dtype=dtype)))
    assert channels is not None and [channel["label"] for channel in channels] == LABELS
    for channel, window in zip(channels, windows):
        assert tuple(channel["window"].values()) == pytest.approx(window)
    assert [list(channel["window"]) for channel in channels] == [["min", "max", "start", "end"]] * 2


def test_unit_scale_carries_the_window_in_the_values_as_read(labelled: Path, tmp_path: Path) -> None:
    job = _job(labelled, tmp_path / "out.zarr", [{"pool": {"function": "mean", "size": 2}}])
    job["input"]["scale"] = "unit"
    (first, _) = result_channels(pipeline.plan(job))
    assert tuple(first["window"].values()) == pytest.approx((0.0, 1.0, 100 / 65535, 3000 / 65535))


def test_a_layer_makes_new_channels_and_carries_no_labels(labelled: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.zarr"
    # sobel gives two maps from two channels: as many channels, none of them the input's.
    pipeline.run(_job(labelled, out, [{"layer": {"weights": "sobel"}}, {"activation": "relu"}]))
    attributes = _attributes(out)
    assert zarr.open_group(str(out), mode="r")["0"].shape[1] == 2
    assert "omero" not in attributes["ome"]
    assert attributes["pipeline"]["input_array"]["channel_names"] == LABELS


def test_an_input_without_omero_gives_a_result_without(tmp_path: Path) -> None:
    source = _ome_input(tmp_path / "plain.zarr", RNG.integers(0, 4000, (2, 2, 40, 32), dtype=np.uint16), None)
    out = tmp_path / "out.zarr"
    pipeline.run(_job(source, out, [{"convolve": {"kernel": "edge"}}]))
    attributes = _attributes(out)
    assert "omero" not in attributes["ome"] and "channel_names" not in attributes["pipeline"]["input_array"]


def test_floats_take_their_bounds_from_the_window_and_without_one_carry_nothing(tmp_path: Path) -> None:
    images = RNG.uniform(0, 1, (2, 2, 40, 32)).astype(np.float32)
    windowed = [{"label": label, "color": "FF00FF", "window": {"min": 0.0, "max": 1.0, "start": 0.1, "end": 0.9}}
                for label in LABELS]
    source = _ome_input(tmp_path / "float.zarr", images, windowed)
    channels = result_channels(pipeline.plan(_job(source, tmp_path / "out.zarr", [{"convolve": {"kernel": "edge"}}])))
    assert [tuple(channel["window"].values()) for channel in channels] == [(-8.0, 8.0, 0.1, 0.9)] * 2
    assert [channel["color"] for channel in channels] == ["FF00FF"] * 2

    unwindowed = _with_omero(_ome_input(tmp_path / "bare.zarr", images, None), [{"label": label} for label in LABELS])
    assert result_channels(pipeline.plan(_job(unwindowed, tmp_path / "out.zarr", [{"convolve": {"kernel": "edge"}}]))) is None


def test_colours_and_windows_that_are_not_ome_ngff_are_replaced(tmp_path: Path) -> None:
    source = _with_omero(_ome_input(tmp_path / "odd.zarr", RNG.integers(0, 255, (2, 2, 40, 32), dtype=np.uint8), None), [
        {"label": "a", "color": "red", "window": {"start": 1, "end": 2}},
        {"label": "b", "color": "#00ff00", "window": {"min": 0, "max": "255", "start": 0, "end": 255}, "active": "yes"},
    ])
    channels = result_channels(pipeline.plan(_job(source, tmp_path / "out.zarr", [{"pool": {"function": "max", "size": 2}}])))
    assert [(channel["label"], channel["color"], channel["active"]) for channel in channels] == [("a", "FFFFFF", True), ("b", "FFFFFF", True)]
    assert [tuple(channel["window"].values()) for channel in channels] == [(0.0, 255.0, 0.0, 255.0)] * 2
