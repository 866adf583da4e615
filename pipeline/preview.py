"""A contact sheet of a store's first images: each source above its result, for a quick look."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import cv2
import imageio.v3 as iio
import numpy as np

from pipeline.errors import InputError, OutputError
from pipeline.sinks.export import to_displayable
from pipeline.pixels import color_mode
from pipeline.sinks.zarr_store import dimension_names, open_result
from pipeline.sources.images import read_image
from pipeline.storage import recorded_options

MAX_CHANNEL_ROWS = 4
BACKGROUND = 32  # dark grey around letterboxed cells and for sources that can no longer be read


def contact_sheet(
    store: str, output: str, *, count: int = 4, cell: int = 256, storage_options: Mapping[str, Any] | None = None
) -> Path:
    """Write a PNG grid: row 1 the sources (as the run read them), then the results, ``count`` columns.

    Results whose channels are feature maps (a layer's outputs, or any count but an image's 1, 3
    or 4) get a row per channel, the first ``MAX_CHANNEL_ROWS`` of them; colour results one row.

    ``storage_options`` reach a store at a URL; remote sources are read with the input options the
    run recorded (its secrets were never recorded: they come from the environment again).
    """
    result = open_result(store, storage_options=storage_options)
    config = result.provenance.get("config", {})
    settings = config.get("input", {})
    color = color_mode(settings.get("color", "gray"), settings.get("alpha"))
    source_options = recorded_options(config.get("input", {}).get("storage_options", {}))
    axes = dimension_names(result.array)
    volume = "z" in axes
    sources = result.sources[:count]
    if not sources:
        raise InputError(f"store {store!r} holds no images")
    maps = _feature_maps(result, axes)
    rows = 1 + (min(maps, MAX_CHANNEL_ROWS) if maps else 1)
    sheet = np.full((rows * cell, len(sources) * cell, 3), BACKGROUND, dtype=np.uint8)
    for column, source in enumerate(sources):
        try:
            original = read_image(source, color=color, dtype="float32", storage_options=source_options)
        except InputError:
            original = None  # moved or deleted since the run: its cell stays empty
        # Sources as they are (min to max); results between their 1st and 99th percentiles, so that
        # a few strong responses do not leave the rest of an edge or difference image flat grey.
        stored = result.array[column]
        results = [stored[channel] for channel in range(rows - 1)] if maps else [stored]
        for row, (image, stretch) in enumerate(((original, "minmax"), *((r, "percentile") for r in results))):
            if image is not None:
                _place(sheet, _displayable(image, volume, stretch), row, column, cell)
    target = Path(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        iio.imwrite(target, sheet)
    except OSError as exc:
        raise OutputError(f"cannot write {output!r}: {exc.strerror or exc}") from None
    return target


def _feature_maps(result: Any, axes: tuple[str, ...]) -> int:
    """How many channels to show as separate maps: 0 for gray or colour images."""
    if "c" not in axes:
        return 0
    channels = result.array.shape[axes.index("c")]
    layered = any(step.get("step") == "layer" for step in result.provenance.get("steps", []))
    return channels if layered or channels not in (1, 3, 4) else 0


def _displayable(image: np.ndarray, volume: bool, stretch: str) -> np.ndarray:
    if volume:  # the middle slice of a stack
        image = image[image.shape[0] // 2]
    pixels = to_displayable(np.nan_to_num(np.asarray(image, dtype=np.float64)), fmt="png", normalize=stretch)
    return pixels if pixels.ndim == 3 else np.repeat(pixels[..., np.newaxis], 3, axis=-1)


def _place(sheet: np.ndarray, pixels: np.ndarray, row: int, column: int, cell: int) -> None:
    """Scale ``pixels`` to fit a cell (keeping its aspect ratio) and centre it there."""
    height, width = pixels.shape[:2]
    scale = cell / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    fitted = cv2.resize(pixels[..., :3], size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST)
    top = row * cell + (cell - size[1]) // 2
    left = column * cell + (cell - size[0]) // 2
    sheet[top : top + size[1], left : left + size[0]] = fitted
