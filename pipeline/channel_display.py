"""The result's channel names, colours and contrast windows, carried on from an OME-Zarr input.

An OME-Zarr's ``omero`` metadata names its channels and says how viewers show them: napari (through
napari-ome-zarr) and ome-zarr-py take each channel's name from ``label``, its colour map from
``color`` and its contrast limits from ``window.start``/``end``. The result carries them on while
its channel axis still holds the input's channels: convolutions, activations, pools and normalize
work per channel (or on all of them together) and keep them; a layer makes new channels, its
feature maps (``Step.keeps_channels``), and then nothing is carried.

OME-NGFF requires a colour and a window for every channel: a channel without a colour is white, and
the window follows the values, as the steps change them (``Step.value_range``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.pixels import full_scale, value_range
from pipeline.sources.arrays import ChannelDisplay
from pipeline.steps.cast import cast_block
from pipeline.steps.chain import output_range
from pipeline.steps.normalize import unit_range_to

if TYPE_CHECKING:
    from pipeline.job_plan import JobPlan

Window = tuple[float, float, float, float]  # min, max, start, end
WHITE = "FFFFFF"
SAME_RANGE = 1e-9  # of the input's span: ranges closer than this are the same range


def result_channels(plan: JobPlan) -> tuple[dict[str, Any], ...] | None:
    """The OME-NGFF ``omero`` channels of the plan's result; None when its channels are not the input's.

    Also None when a window cannot be known (a float input whose channels declare none: its values
    could be anything), since OME-NGFF has no channel without one.
    """
    array = plan.spec.array
    shown = array.channel_display if array is not None else None
    if not shown or "c" not in plan.image.axes or len(shown) != plan.image.channels:
        return None
    if not all(step.keeps_channels for step in plan.steps):
        return None
    windows = [result_window(plan, channel) for channel in shown]
    if any(window is None for window in windows):
        return None
    return tuple(
        {
            "label": channel.label,
            "color": channel.color or WHITE,
            "window": dict(zip(("min", "max", "start", "end"), window)),
            "active": True if channel.active is None else channel.active,
        }
        for channel, window in zip(shown, windows)
    )


def result_window(plan: JobPlan, channel: ChannelDisplay) -> Window | None:
    """One channel's window on the stored result.

    The input's window as it is when the result's values span what the input's did (a blur, a max
    pool: steps that keep values in range, stored in the input's type). Otherwise min and max are
    the range the steps can produce from the input's (its type's, or for floats its window's),
    as stored; start and end are the input's, clipped into it. That is what a napari user
    expects: the range is a bound (a Laplacian of 8-bit pixels can reach ±2040, yet real edges
    rarely pass a few hundred), so contrast limits spanning all of it would paint nearly every
    pixel the same grey, while the input's contrast is the one chosen for these intensities and
    shows what the steps made of them on the same scale, values beyond it saturating as they did
    in the input. Where the values are no longer on the input's scale (normalize rescales each
    image), or the input's window lies outside the range, the range itself is the contrast.
    """
    dtype = np.dtype(plan.spec.dtype or "float64")
    # The input's window in the values as read: input.scale: unit divides an integer type's values.
    read = full_scale(dtype) if plan.spec.scale == "unit" else 1.0
    given = None if channel.window is None else tuple(value / read for value in channel.window)
    low, high = value_range(dtype, plan.spec.scale)
    if not (math.isfinite(low) and math.isfinite(high)):
        if given is None:
            return None
        low, high = given[0], given[1]  # a float type bounds nothing; the window says what the values span
    stored = _stored_range(plan, output_range(plan.steps, (low, high)))
    if stored is None:
        return None
    rescaled = any(step.unit_range for step in plan.steps)  # normalize: values on a scale of their own
    # A Gaussian's weights sum to 1 up to rounding: its range is the input's, within a rounding.
    same = not rescaled and all(abs(a - b) <= SAME_RANGE * (high - low) for a, b in zip(stored, (low, high)))
    bottom, top = (low, high) if same else stored
    if given is None or rescaled:
        return bottom, top, bottom, top
    if same:
        return given  # type: ignore[return-value]
    start, end = min(max(given[2], bottom), top), min(max(given[3], bottom), top)
    return (bottom, top, start, end) if start < end else (bottom, top, bottom, top)


def _stored_range(plan: JobPlan, values: tuple[float, float]) -> tuple[float, float] | None:
    """The range ``values`` take once cast to the stored type as the run casts them; None if unbounded.

    Integer types scale a normalised result to their range, round and clip; floats keep the values
    (their rounding to float32 is no matter for a display window, and would hide an unchanged range).
    """
    out = np.dtype(plan.dtype)
    if out.kind in "ui":
        scale = unit_range_to(out) if plan.steps and plan.steps[-1].unit_range else 1.0
        values = tuple(float(v) for v in cast_block(np.array(values, dtype=np.float64), out_dtype=out, scale=scale))
    low, high = values
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None
