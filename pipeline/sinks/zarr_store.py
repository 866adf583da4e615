"""The output store: a Zarr v3 group holding the result, its source list, and provenance.

Layout (OME-NGFF 0.5: the ``ome`` attributes describe levels "0", "1", … as one multiscale image)::

    result.zarr/
        zarr.json      group; attributes["pipeline"] = provenance and status
        0/             the result, axes (image, [c], y, x), one chunk per image (or tile)
        1/, 2/, …      resolution levels (output.levels): y and x halved at each
        sources/       1-D string array: the source file of each image index
        source_shapes/ each image's own shape, when smaller images were padded (input.shapes: pad)
        ledger/        which images are durably written (see ledger.py)

``status`` is ``running`` while chunks are written (and stays so if the run is killed),
``failed`` (with the error) if the run stops on an error, and ``complete`` only after every image
is recorded as written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.errors import InputError, OutputError
from pipeline.sinks.ledger import LEDGER, create_ledger, done_flags, resize_ledger

RESULT_ARRAY = "0"
MAX_LEVELS = 16
SOURCES_ARRAY = "sources"
SHAPES_ARRAY = "source_shapes"
ATTRS_KEY = "pipeline"
SOURCES_PER_CHUNK = 65536

CODECS = {
    "blosc-lz4": lambda: [BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")],
    "blosc-zstd": lambda: [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")],
    "zstd": lambda: [ZstdCodec(level=3)],
    "none": lambda: None,
}


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_output_path(path: str) -> bool:
    """Fail early, before any work, if no store can live at ``path``; say whether one exists."""
    target = Path(path)
    if target.is_file():
        raise OutputError(f"output.path {path!r} is a file; give a directory name for the Zarr store")
    exists = target.is_dir() and any(target.iterdir())
    if exists and not _written_by_us(target):
        raise OutputError(
            f"refusing to write into {path!r}: it is not a store written by this pipeline; "
            f"choose another output.path"
        )
    parent = target if target.exists() else target.parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output.path {path!r} is not writable (no write permission on {str(parent)!r})")
    return exists


def _written_by_us(target: Path) -> bool:
    return stored_status(str(target)) is not None


def stored_status(path: str) -> str | None:
    """The status a store of ours records ("creating" if a run died while making it), else None."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ours = meta.get("attributes", {}).get(ATTRS_KEY)
    return ours.get("status", "unknown") if isinstance(ours, dict) else None


@dataclass(frozen=True)
class StoreLayout:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    dimension_names: tuple[str, ...]
    codec: str
    ome: bool = True  # OME-NGFF 0.5 multiscales metadata for napari / ome-zarr-py
    levels: int = 1  # resolution levels: "0" full, then y and x halved at each level


def level_shape(shape: Sequence[int], level: int) -> tuple[int, ...]:
    """The shape of resolution ``level``: y and x halved ``level`` times (rounded down, at least 1)."""
    return (*shape[:-2], *(max(1, n >> level) for n in shape[-2:]))


def level_arrays(group: zarr.Group) -> list[zarr.Array]:
    """The result's resolution levels, full resolution first."""
    return [group[str(level)] for level in range(MAX_LEVELS) if str(level) in group]


def ome_metadata(dimension_names: Sequence[str], levels: int = 1) -> dict[str, Any]:
    """OME-NGFF 0.5 ``multiscales`` for the result at ``0``, ``1``, …: axes in NGFF's order.

    NGFF allows one non-space axis besides time: the image index is that custom axis
    ("index"), or the time axis when channels take the channel slot.
    """
    def axis(name: str) -> dict[str, str]:
        if name in ("z", "y", "x"):
            return {"name": name, "type": "space"}
        if name == "c":
            return {"name": name, "type": "channel"}
        return {"name": name, "type": "time" if "c" in dimension_names else "index"}

    return {
        "version": "0.5",
        "multiscales": [
            {
                "name": "result",
                "axes": [axis(name) for name in dimension_names],
                "datasets": [
                    {
                        "path": str(level),
                        "coordinateTransformations": [
                            {
                                "type": "scale",
                                "scale": [1.0] * (len(dimension_names) - 2) + [float(2**level)] * 2,
                            }
                        ],
                    }
                    for level in range(levels)
                ],
            }
        ],
    }


def create_store(
    path: str, layout: StoreLayout, *, sources: tuple[str, ...], provenance: dict[str, Any]
) -> zarr.Array:
    """Replace whatever is at ``path`` with a fresh store in status ``running``; return the result array."""
    target = Path(path)
    if target.exists():
        shutil.rmtree(target)  # check_output_path has established that it is one of ours
    try:
        # The attributes come first: a run killed while creating leaves a store that is ours.
        attributes: dict[str, Any] = {ATTRS_KEY: {**provenance, "status": "creating"}}
        if layout.ome:
            attributes["ome"] = ome_metadata(layout.dimension_names, layout.levels)
        group = zarr.open_group(str(target), mode="w", attributes=attributes)
        for level in range(layout.levels):
            group.create_array(
                str(level),
                shape=level_shape(layout.shape, level),
                chunks=level_shape(layout.chunks, level),
                dtype=layout.dtype,
                compressors=CODECS[layout.codec](),
                dimension_names=list(layout.dimension_names),
                # An image never written (skipped, or not reached yet) reads as NaN, not as black.
                fill_value=float("nan") if np.dtype(layout.dtype).kind == "f" else 0,
            )
        array = group[RESULT_ARRAY]
        names = group.create_array(
            SOURCES_ARRAY,
            shape=(len(sources),),
            chunks=(min(max(len(sources), 1), SOURCES_PER_CHUNK),),
            dtype=str,
        )
        names[:] = np.asarray(sources, dtype=str)
        create_ledger(group, len(sources))
        group.attrs[ATTRS_KEY] = {
            **provenance,
            "status": "running",
            "sources": {"array": SOURCES_ARRAY, "count": len(sources)},
        }
    except OSError as exc:
        raise OutputError(f"cannot create output store {path!r}: {exc.strerror or exc}") from None
    return array


def append_sources(path: str, new_sources: Sequence[str]) -> zarr.Array:
    """Grow the store along the image axis for ``new_sources``; return the (resized) result array."""
    group = zarr.open_group(path, mode="r+")
    old = group[SOURCES_ARRAY].shape[0]
    count = old + len(new_sources)
    names = group[SOURCES_ARRAY]
    names.resize((count,))
    names[old:] = np.asarray(list(new_sources), dtype=str)
    for level in level_arrays(group):
        level.resize((count, *level.shape[1:]))
    resize_ledger(group, count)
    group.attrs[ATTRS_KEY] = {**group.attrs[ATTRS_KEY], "sources": {"array": SOURCES_ARRAY, "count": count}}
    return group[RESULT_ARRAY]


def record_source_shapes(path: str, start: int, shapes: Sequence[tuple[int, ...]]) -> None:
    """Each image's own shape before padding (input.shapes: pad), from index ``start`` on."""
    group = zarr.open_group(path, mode="r+")
    rows = np.asarray(shapes, dtype=np.int64).reshape(len(shapes), -1)
    if SHAPES_ARRAY not in group:
        group.create_array(SHAPES_ARRAY, shape=(0, rows.shape[1]), chunks=(SOURCES_PER_CHUNK, rows.shape[1]), dtype="int64")
    array = group[SHAPES_ARRAY]
    array.resize((max(array.shape[0], start + len(rows)), rows.shape[1]))
    array[start : start + len(rows)] = rows


def remove_partial_writes(path: str) -> int:
    """Delete the temporary files of chunk writes cut short by a killed run; return how many."""
    removed = 0
    for leftover in Path(path).rglob("*.partial"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def write_lazily(result: da.Array, target: zarr.Array, *, start: int = 0) -> da.Array:
    """The delayed write of ``result`` into ``target[start:]``, one task per dask chunk, without locks.

    Writing without a lock is safe only when no two tasks touch one zarr chunk, so every dask
    chunk must cover whole zarr chunks; anything else is refused rather than risk lost writes.
    Computing the returned (tiny) array writes the chunks.
    """
    for axis, (sizes, step) in enumerate(zip(result.chunks, target.chunks)):
        edges = np.cumsum(sizes)[:-1] + (start if axis == 0 else 0)
        if np.any(edges % step) or (axis == 0 and start % step):
            raise ValueError(f"dask chunks {sizes} along axis {axis} split zarr chunks of {step}")
    return result.map_blocks(
        _write_chunks,
        chunks=tuple((1,) * len(sizes) for sizes in result.chunks),
        dtype=bool,
        meta=np.empty((0,) * result.ndim, dtype=bool),
        target=target,
        start=start,
    )


def _write_chunks(block: np.ndarray, *, target: zarr.Array, start: int, block_info: dict) -> np.ndarray:
    """Write a block zarr chunk by zarr chunk, each from a contiguous array of exactly its shape.

    zarr hands a value of another shape (a slab of several chunks) or a strided one (a tile cut
    from its halo) to its codecs through extra copies made on its single event-loop thread, which
    then serialises every worker's writes; this makes them here, in the worker, once.
    """
    origin = [begin for begin, _ in block_info[0]["array-location"]]
    origin[0] += start
    steps = target.chunks
    for corner in np.ndindex(*(-(-n // step) for n, step in zip(block.shape, steps))):
        local = tuple(slice(i * step, min(n, (i + 1) * step)) for i, step, n in zip(corner, steps, block.shape))
        region = tuple(slice(o + part.start, o + part.stop) for o, part in zip(origin, local))
        target[region] = np.ascontiguousarray(block[local])
    return np.ones((1,) * block.ndim, dtype=bool)


def set_status(path: str, status: str, **fields: Any) -> None:
    """Update the status (and e.g. the finish time or the error) in the group's attributes."""
    group = zarr.open_group(path, mode="r+")
    group.attrs[ATTRS_KEY] = {**group.attrs[ATTRS_KEY], **fields, "status": status}


@dataclass(frozen=True)
class StoredResult:
    path: str
    group: zarr.Group
    array: zarr.Array
    provenance: dict[str, Any]

    @property
    def sources(self) -> list[str]:
        return [str(name) for name in self.group[SOURCES_ARRAY][:]]

    @property
    def status(self) -> str:
        return self.provenance.get("status", "unknown")

    @property
    def flags(self) -> np.ndarray:
        """Per image: 0 to do, 1 written, 2 unreadable and skipped (no ledger: all written)."""
        if LEDGER not in self.group:
            return np.ones(self.array.shape[0], dtype=np.uint8)
        return done_flags(self.group)

    @property
    def done(self) -> np.ndarray:
        """Per image: nothing left to do (written, or skipped as unreadable)."""
        return self.flags != 0

    @property
    def unreadable(self) -> list[dict[str, Any]]:
        return list(self.group.attrs.get("unreadable", []))

    def summary(self, *, sources: int = 5) -> dict[str, Any]:
        """What `pipeline inspect` shows: layout, status and progress, provenance, first sources."""
        names = self.sources
        unreadable = self.unreadable
        written = int((self.flags == 1).sum())
        prov = self.provenance
        skipped = f", {len(unreadable)} unreadable (skipped)" if unreadable else ""
        return {
            "store": self.path,
            "status": self.status,
            "progress": f"{written}/{len(names)} images written{skipped}",
            "unreadable": unreadable,
            "shape": list(self.array.shape),
            "dtype": str(self.array.dtype),
            "chunks": list(self.array.chunks),
            "axes": list(self.array.metadata.dimension_names or ()),
            "codec": describe_codec(self.array),
            **{key: prov.get(key) for key in ("version", "started", "finished", "error")},
            "steps": prov.get("steps", []),
            "source_count": len(names),
            "sources": names[:sources] if sources >= 0 else names,
        }


def open_result(path: str, *, mode: Literal["r", "r+"] = "r") -> StoredResult:
    """Open a store written by this pipeline: for reading (inspect, export) or ``r+`` to resume it."""
    if not Path(path).is_dir():
        raise InputError(f"store {path!r} does not exist")
    try:
        group = zarr.open_group(path, mode=mode)
        array = group[RESULT_ARRAY]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
        raise InputError(f"{path!r} is not a store written by this pipeline (no group with array '0')") from None
    return StoredResult(path=path, group=group, array=array, provenance=dict(group.attrs.get(ATTRS_KEY, {})))


def describe_codec(array: zarr.Array) -> str:
    codecs = array.compressors
    if not codecs:
        return "none"
    parts = []
    for codec in codecs:
        config = codec.to_dict().get("configuration", {})
        detail = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in config.items() if k != "typesize")
        parts.append(f"{codec.to_dict()['name']}({detail})")
    return " + ".join(parts)
