"""What a collection's headers say before any pixel is read: shapes, bit depths, unreadable files.

``pipeline validate`` reads them so that it refuses what ``run`` would refuse (images of other
sizes with ``input.shapes: strict``, other bit depths with ``input.scale: native``, headers that
cannot be read) — cheaply: a header is a few kilobytes, never the pixels. Up to ``limit`` files are
read; the rest are checked as they are read by the run, and the survey says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from pipeline.errors import InputError
from pipeline.pixels import depth_name
from pipeline.sources.arrays import expand_entry, resolve_array
from pipeline.sources.frames import is_array_entry
from pipeline.sources.images import declared_image
from pipeline.sources.listing import list_images
from pipeline.sources.volume import stack_dtype, stack_shape, volume_shape

if TYPE_CHECKING:
    from pipeline.config import InputConfig

DEFAULT_LIMIT = 10_000


@dataclass
class Survey:
    """What the headers of ``checked`` of the ``total`` files say; each kind keyed by its first file."""

    total: int
    checked: int = 0
    shapes: dict[tuple[int, ...], list[str]] = field(default_factory=dict)  # shape → its files, in order
    depths: dict[str, list[str]] = field(default_factory=dict)  # pixel type → its files
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def problems(self, settings: InputConfig) -> list[str]:
        """What ``pipeline run`` would refuse, one line each, with the way out."""
        found = []
        if settings.on_error != "skip":
            found += [reason for _, reason in self.unreadable[:3]]
            if len(self.unreadable) > 3:
                found.append(f"{len(self.unreadable) - 3} more files cannot be read (input.on_error: skip leaves them out)")
        if len(self.shapes) > 1 and settings.shapes == "strict":
            found.append(
                f"images of {len(self.shapes)} shapes: {_firsts(self.shapes)}; input.shapes: pad pads each to the "
                f"largest, group writes one result per shape"
            )
        channels = {shape[:-2] for shape in self.shapes}
        if len(channels) > 1 and settings.shapes == "pad":
            found.append(f"images with different channels cannot be padded to one shape: {_firsts(self.shapes)}")
        if len(self.depths) > 1 and settings.scale == "native":
            listed = ", ".join(f"{names[0]!r} {depth_name(np.dtype(depth))} ({len(names)})" for depth, names in self.depths.items())
            found.append(
                f"files of {len(self.depths)} bit depths: {listed}; input.scale: unit divides each image by its "
                f"type's maximum, so they can share a collection"
            )
        return found

    def summary(self) -> str:
        """``headers checked (all 8): shape (48, 64), 8-bit (uint8)``, or what was left unchecked."""
        scope = f"all {self.total}" if self.checked == self.total else f"the first {self.checked} of {self.total}"
        shapes = ", ".join(str(shape) for shape in self.shapes) or "none readable"
        depths = ", ".join(depth_name(np.dtype(depth)) for depth in self.depths)
        rest = "" if self.checked == self.total else "; the others are checked as they are read"
        return f"headers checked ({scope}): shape{'s' if len(self.shapes) > 1 else ''} {shapes}, {depths}{rest}"


def _firsts(groups: dict[Any, list[str]], most: int = 3) -> str:
    listed = [f"{names[0]!r} {key} ({len(names)} file{'s' if len(names) > 1 else ''})" for key, names in list(groups.items())[:most]]
    more = f", +{len(groups) - most} more" if len(groups) > most else ""
    return ", ".join(listed) + more


def survey(files: Sequence[str], settings: InputConfig, *, limit: int = DEFAULT_LIMIT) -> Survey:
    """Read the headers of the first ``limit`` files (the first page or frame of each)."""
    result = Survey(total=len(files))
    for path in files[:limit]:
        try:
            shape, dtype = _header(path, settings)
        except InputError as exc:
            result.unreadable.append((path, str(exc)))
        else:
            result.shapes.setdefault(shape, []).append(path)
            result.depths.setdefault(str(dtype), []).append(path)
        result.checked += 1
    return result


def survey_inputs(settings: InputConfig, *, limit: int = DEFAULT_LIMIT) -> Survey:
    """List the inputs (opening none) and survey their headers (of arrays: their metadata)."""
    entries = [settings.paths] if isinstance(settings.paths, str) else list(settings.paths)
    if any(is_array_entry(entry) for entry in entries):
        names = [name for entry in entries for name in expand_entry(entry, settings.storage_options)]
        return survey(names, settings, limit=limit)
    return survey(list_images(settings.paths, settings.storage_options), settings, limit=limit)


def _header(path: str, settings: InputConfig) -> tuple[tuple[int, ...], np.dtype]:
    if is_array_entry(path):
        array = resolve_array(
            path, volume=settings.layout == "volume", options=settings.storage_options,
            allow_incomplete=settings.allow_incomplete,
        )
        return array.image_shape(), np.dtype(array.dtype)
    if settings.layout == "volume":
        return volume_shape(path, stack_shape(path)), stack_dtype(path)
    return declared_image(path, settings.color_mode, settings.storage_options)
