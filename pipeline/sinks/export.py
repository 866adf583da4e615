"""Write stored results back out as ordinary image files (previews, hand-off to other tools)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Mapping

import imageio.v3 as iio
import numpy as np

from pipeline.errors import InputError, OutputError
from pipeline.sinks.zarr_store import open_result

ExportFormat = Literal["png", "jpeg", "tiff"]
ExportNormalize = Literal["auto", "minmax", "percentile", "none"]
# `percentile` stretches between these percentiles, so a few extreme pixels do not grey the rest.
PERCENTILES = (1.0, 99.0)
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif"}


def to_displayable(image: np.ndarray, *, fmt: ExportFormat, normalize: ExportNormalize) -> np.ndarray:
    """Turn one stored image into pixels the format can hold.

    ``auto`` keeps what the format stores faithfully (uint8 everywhere, uint16 in PNG, anything in
    TIFF) and stretches everything else to 0-255 per image; ``percentile`` stretches between the
    1st and 99th percentiles (clipping beyond); ``none`` clips to 0-255 instead.
    """
    if image.ndim == 3:  # (c, y, x) → (y, x, c); a single channel becomes plain gray
        image = image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)
    fits = fmt == "tiff" or image.dtype == np.uint8 or (fmt == "png" and image.dtype == np.uint16)
    if normalize in ("minmax", "percentile") or (normalize == "auto" and not fits):
        values = image.astype(np.float64)
        if normalize == "percentile":
            low, high = (float(v) for v in np.percentile(values, PERCENTILES))
            values = np.clip(values, low, high)
        else:
            low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return np.rint(scaled * 255.0).astype(np.uint8)
    if fits:
        return image
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def export_images(
    store: str,
    outdir: str,
    *,
    fmt: ExportFormat = "png",
    normalize: ExportNormalize = "auto",
    indices: slice = slice(None),
    storage_options: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write images ``indices`` of ``store`` (a folder or a URL) to ``outdir`` as ``<index>_<source name>.<ext>``."""
    result = open_result(store, storage_options=storage_options)
    sources = result.sources
    chosen = range(len(sources))[indices]
    if not chosen:
        raise InputError(f"no images selected: the store holds {len(sources)} images")
    target = Path(outdir)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create export folder {outdir!r}: {exc.strerror or exc}") from None
    width = len(str(len(sources) - 1))
    written = []
    for index in chosen:
        pixels = to_displayable(result.array[index], fmt=fmt, normalize=normalize)
        path = target / f"{index:0{width}d}_{Path(sources[index]).stem}{SUFFIXES[fmt]}"
        try:
            iio.imwrite(path, pixels)
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        written.append(path)
    return written
