"""Write stored results back out as ordinary image files (previews, hand-off to other tools)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import imageio.v3 as iio
import numpy as np

from pipeline.errors import InputError, OutputError
from pipeline.events import counted
from pipeline.sinks.ledger import UNREADABLE, WRITTEN
from pipeline.sinks.zarr_store import open_result

ExportFormat = Literal["png", "jpeg", "tiff"]
ExportNormalize = Literal["auto", "minmax", "percentile", "none"]
# `percentile` stretches between these percentiles, so a few extreme pixels do not grey the rest.
PERCENTILES = (1.0, 99.0)
SUFFIXES = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif"}
LeftOutReason = Literal["unreadable", "unwritten", "nan"]
# How the export's line says why images were left out: for one image, for several.
REASONS: dict[LeftOutReason, tuple[str, str]] = {
    "unreadable": ("unreadable source", "unreadable sources"),  # input.on_error: skip (ledger flag 2)
    "unwritten": ("not yet written", "not yet written"),  # a run has not reached it (ledger flag 0)
    "nan": ("all NaN", "all NaN"),  # written, but not one pixel is a number
}
NAMES_LISTED = 3  # per reason


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


@dataclass(frozen=True)
class LeftOut:
    """An image not exported, since the store holds no pixels for it, and why (see REASONS)."""

    index: int
    source: str
    reason: LeftOutReason


@dataclass(frozen=True)
class Exported:
    written: list[Path]
    left_out: list[LeftOut]


def describe_left_out(left_out: Sequence[LeftOut]) -> str:
    """What was left out and why, in one phrase.

    >>> describe_left_out([LeftOut(1, "a/x.png", "unreadable"), LeftOut(4, "a/y.png", "unwritten")])
    "2 images left out: unreadable source 'x.png'; not yet written 'y.png'"
    """
    names: dict[LeftOutReason, list[str]] = {}
    for entry in left_out:
        names.setdefault(entry.reason, []).append(repr(Path(entry.source).name))
    parts = []
    for reason, listed in names.items():
        one, several = REASONS[reason]
        more = f" and {len(listed) - NAMES_LISTED} more" if len(listed) > NAMES_LISTED else ""
        parts.append(f"{one if len(listed) == 1 else several} {', '.join(listed[:NAMES_LISTED])}{more}")
    return f"{counted(len(left_out), 'image')} left out: {'; '.join(parts)}"


def export_images(
    store: str,
    outdir: str,
    *,
    fmt: ExportFormat = "png",
    normalize: ExportNormalize = "auto",
    indices: slice = slice(None),
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> Exported:
    """Write images ``indices`` of ``store`` (a folder or a URL) to ``outdir`` as ``<index>_<source name>.<ext>``.

    Images the store holds no pixels for are left out, not written black: those of unreadable
    files (``input.on_error: skip``), those a run has not written yet, and any that is NaN
    throughout. Existing files are replaced only with ``overwrite``; without it nothing is written.
    """
    result = open_result(store, storage_options=storage_options)
    sources = result.sources
    chosen = range(len(sources))[indices]
    if not chosen:
        raise InputError(f"no images selected: the store holds {counted(len(sources), 'image')}")
    flags = result.flags
    left_out = [
        LeftOut(index, sources[index], "unreadable" if flags[index] == UNREADABLE else "unwritten")
        for index in chosen
        if flags[index] != WRITTEN
    ]
    width = len(str(len(sources) - 1))
    targets = {
        index: Path(outdir) / f"{index:0{width}d}_{Path(sources[index]).stem}{SUFFIXES[fmt]}"
        for index in chosen
        if flags[index] == WRITTEN
    }
    _refuse_to_replace([path for path in targets.values() if path.exists()], overwrite=overwrite)
    try:
        Path(outdir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create export folder {outdir!r}: {exc.strerror or exc}") from None
    written = []
    for index, path in targets.items():
        image = result.array[index]
        if image.dtype.kind == "f" and np.isnan(image).all():
            left_out.append(LeftOut(index, sources[index], "nan"))
            continue
        try:
            iio.imwrite(path, to_displayable(image, fmt=fmt, normalize=normalize))
        except OSError as exc:
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
        written.append(path)
    return Exported(written, sorted(left_out, key=lambda entry: entry.index))


def _refuse_to_replace(existing: list[Path], *, overwrite: bool) -> None:
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(
            f"refusing to overwrite the existing file {str(existing[0])!r}{more}; "
            f"pass --overwrite to replace existing files, or choose another folder"
        )
