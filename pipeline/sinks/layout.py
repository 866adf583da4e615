"""How a result is laid out on disk: chunks, shards, resolution levels and OME-NGFF metadata.

Shards (``output.shards``) pack many chunks into one file, for file systems and object stores that
dislike millions of small files. A shard is rewritten whole by whoever writes into it, so two tasks
writing one shard at once would lose one's data (zarr-python#3682): every write is cut at shard
boundaries (:func:`aligned_chunks`) and a shard is only ever written by one task at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version as package_version
from typing import Any, Literal, Sequence

from pipeline.errors import ConfigError

OmeVersion = Literal["0.5", "0.4"]
IMAGE_AXIS = "image"  # the result's first axis, along which the sources and the ledger run too
# The length units OME-NGFF allows on space axes (UDUNITS-2 names).
SPACE_UNITS = (
    "angstrom", "attometer", "centimeter", "decimeter", "exameter", "femtometer", "foot", "gigameter",
    "hectometer", "inch", "kilometer", "megameter", "meter", "micrometer", "mile", "millimeter",
    "nanometer", "parsec", "petameter", "picometer", "terameter", "yard", "yoctometer", "yottameter",
    "zeptometer", "zettameter",
)


@dataclass(frozen=True)
class StoreLayout:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    dimension_names: tuple[str, ...]
    codec: str
    ome: bool = True  # OME-NGFF multiscales metadata for napari / ome-zarr-py
    levels: int = 1  # resolution levels: "0" full, then y and x halved at each level
    shards: tuple[int, ...] | None = None  # a shard of level 0; None: one file per chunk
    ome_version: OmeVersion = "0.5"  # 0.4 is written as a Zarr v2 store, for readers that need it
    pixel_size: tuple[float, ...] | None = None  # physical size of a pixel along each space axis
    unit: str | None = None  # of pixel_size, one of SPACE_UNITS
    # OME-NGFF ``omero`` channels (label, color, window, active), one per channel of the result's c axis
    channels: tuple[dict[str, Any], ...] | None = None

    @property
    def zarr_format(self) -> int:
        return 2 if self.ome and self.ome_version == "0.4" else 3


def named_dimensions(names: Sequence[str], zarr_format: int, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
    """``create_array`` keywords naming an array's dimensions, so xarray can open every array we write.

    Zarr v3 has ``dimension_names``; v2 has none, and its readers (xarray, ome-zarr) look for the
    ``_ARRAY_DIMENSIONS`` attribute instead.
    """
    if zarr_format == 2:
        return {"attributes": {**(attributes or {}), "_ARRAY_DIMENSIONS": list(names)}}
    return {"dimension_names": list(names), "attributes": attributes}


def level_shape(shape: Sequence[int], level: int) -> tuple[int, ...]:
    """The shape of resolution ``level``: y and x halved ``level`` times (rounded down, at least 1)."""
    return (*shape[:-2], *(max(1, n >> level) for n in shape[-2:]))


def level_shards(chunks: Sequence[int], shards: Sequence[int] | None, level: int) -> tuple[int, ...] | None:
    """A level's shard: as many of that level's chunks per shard as at full resolution."""
    if shards is None:
        return None
    return tuple(n * (s // c) for n, s, c in zip(level_shape(chunks, level), shards, chunks))


def shard_shape(setting: int | Sequence[int] | None, chunks: Sequence[int]) -> tuple[int, ...] | None:
    """``output.shards`` as a shard shape: N images per shard, or a shape of whole chunks."""
    if setting is None:
        return None
    if isinstance(setting, int):
        if setting % chunks[0]:
            raise ConfigError(
                f"output.shards: {setting} images per shard must be a multiple of the {chunks[0]} images of a "
                f"chunk (output.images_per_chunk), e.g. {chunks[0] * max(1, setting // chunks[0])}"
            )
        return (setting, *chunks[1:])
    shards = tuple(setting)
    if len(shards) != len(chunks) or any(s % c for s, c in zip(shards, chunks)):
        raise ConfigError(
            f"output.shards: {list(shards)} must have one size per axis ({len(chunks)}) and hold whole chunks "
            f"of {list(chunks)} along each (e.g. {[2 * c for c in chunks]}); or give a number of images per shard"
        )
    return shards


def aligned_chunks(length: int, start: int, step: int) -> tuple[int, ...]:
    """Split ``start:start+length`` at the multiples of ``step``: one piece per grid cell it touches.

    >>> aligned_chunks(10, 3, 4)
    (1, 4, 4, 1)
    """
    edges = [start, *range((start // step + 1) * step, start + length, step), start + length]
    return tuple(b - a for a, b in zip(edges, edges[1:]))


def physical_scale(dimension_names: Sequence[str], pixel_size: Sequence[float] | None) -> list[float]:
    """Level 0's scale per axis: ``output.pixel_size`` on the space axes (z, y, x), 1 elsewhere."""
    space = [name for name in dimension_names if name in ("z", "y", "x")]
    if pixel_size is None:
        return [1.0] * len(dimension_names)
    if len(pixel_size) != len(space):
        raise ConfigError(
            f"output.pixel_size: {list(pixel_size)} gives {len(pixel_size)} sizes but the result has "
            f"{len(space)} space axes ({', '.join(space)}); give one size per axis, in that order"
        )
    sizes = dict(zip(space, pixel_size))
    return [float(sizes.get(name, 1.0)) for name in dimension_names]


def level_scale(dimension_names: Sequence[str], pixel_size: Sequence[float] | None, level: int) -> list[float]:
    """Resolution ``level``'s scale per axis: level 0's, doubled in y and x at each level."""
    base = physical_scale(dimension_names, pixel_size)
    return base[:-2] + [size * 2**level for size in base[-2:]]


def ome_metadata(
    dimension_names: Sequence[str],
    levels: int = 1,
    version: OmeVersion = "0.5",
    *,
    pixel_size: Sequence[float] | None = None,
    unit: str | None = None,
    channels: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """OME-NGFF ``multiscales`` for the result at ``0``, ``1``, …: axes in NGFF's order.

    NGFF allows one non-space axis besides time: the image index is that custom axis
    ("index"), or the time axis when channels take the channel slot. 0.5 nests it under
    ``ome`` (Zarr v3); 0.4 puts ``multiscales`` at the top of the attributes (Zarr v2).
    Space axes carry ``unit`` and their scale is ``pixel_size``, doubled in y and x per level.
    ``type`` and ``metadata`` say how the levels were made (NGFF's strict schemas require them).
    ``channels`` become the ``omero`` metadata beside the multiscales, where viewers find each
    channel's name, colour and contrast window.
    """
    def axis(name: str) -> dict[str, str]:
        if name in ("z", "y", "x"):
            return {"name": name, "type": "space", **({"unit": unit} if unit else {})}
        if name == "c":
            return {"name": name, "type": "channel"}
        return {"name": name, "type": "time" if "c" in dimension_names else "index"}

    multiscale = {
        "name": "result",
        **_downscaling(len(dimension_names)),
        "axes": [axis(name) for name in dimension_names],
        "datasets": [
            {
                "path": str(level),
                "coordinateTransformations": [{"type": "scale", "scale": level_scale(dimension_names, pixel_size, level)}],
            }
            for level in range(levels)
        ],
    }
    omero = {"omero": {"channels": [dict(channel) for channel in channels]}} if channels else {}
    if version == "0.4":
        return {"multiscales": [{"version": "0.4", **multiscale}], **omero}
    return {"ome": {"version": "0.5", "multiscales": [multiscale], **omero}}


def _downscaling(ndim: int) -> dict[str, Any]:
    """How each level is made from the one above (pipeline.steps.pyramid.halve), in NGFF's terms."""
    return {
        "type": "mean",
        "metadata": {
            "description": "y and x halved by the mean of each 2x2 block of the level above, computed in "
            "float64 and cast to the stored dtype; an odd last row or column is dropped",
            "method": "dask.array.coarsen",
            "version": package_version("dask"),
            "args": ["numpy.mean"],
            "kwargs": {"axes": {str(ndim - 2): 2, str(ndim - 1): 2}},
        },
    }
