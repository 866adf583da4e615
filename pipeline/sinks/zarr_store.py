"""The output store: a Zarr v3 group holding the result, its source list, and provenance.

Layout (OME-NGFF 0.5: the ``ome`` attributes describe levels "0", "1", … as one multiscale image)::

    result.zarr/
        zarr.json      group; attributes["pipeline"] = provenance and status
        0/             the result, axes (image, [c], y, x), one chunk per image (or tile)
        1/, 2/, …      resolution levels (output.levels): y and x halved at each
        sources/       1-D string array: the source file of each image index
        source_shapes/ each image's own shape, when smaller images were padded (input.shapes: pad)
        ledger/        which images are durably written (see ledger.py)

With ``input.shapes: group`` the store is a group of such stores, one per image shape::

    result.zarr/
        zarr.json      attributes["pipeline"] = provenance, status and "groups": {name: shape}
        48x64/         a result store as above, for the images of that shape
        512x512/       …

``status`` is ``running`` while chunks are written (and stays so if the run is killed),
``failed`` (with the error) if the run stops on an error, and ``complete`` only after every image
is recorded as written.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Sequence

import dask.array as da
import numcodecs
from numcodecs.abc import Codec as V2Codec
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.errors import InputError, OutputError
from pipeline.sinks.layout import StoreLayout, aligned_chunks, level_shape, level_shards, ome_metadata
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
# The same compression for Zarr v2 stores (output.format: ome-0.4), from numcodecs.
V2_CODECS = {
    "blosc-lz4": lambda: [numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)],
    "blosc-zstd": lambda: [numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)],
    "zstd": lambda: [numcodecs.Zstd(level=3)],
    "none": lambda: None,
}
# Where a group keeps its attributes: Zarr v3, then v2.
METADATA_FILES = (("zarr.json", lambda meta: meta.get("attributes", {})), (".zattrs", lambda meta: meta))


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


def check_not_inside_inputs(path: str, inputs: str | Sequence[str]) -> None:
    """A store inside an input folder would be listed as input by the next run of a glob."""
    store = Path(path).resolve()
    entries = [inputs] if isinstance(inputs, str) else inputs
    for entry in entries:
        if glob.has_magic(entry):  # the folder part before the first wildcard
            prefix = re.split(r"[*?\[]", entry, maxsplit=1)[0]
            folder = (Path(prefix) if prefix.endswith(os.sep) else Path(prefix).parent).resolve()
        elif Path(entry).is_dir():
            folder = Path(entry).resolve()
        else:
            continue  # single files: nothing of the store can be listed as input
        if store == folder or folder in store.parents:
            raise OutputError(
                f"output.path {path!r} is inside the input folder {str(folder)!r}; "
                f"write the store elsewhere so it is never read back as input"
            )


def _written_by_us(target: Path) -> bool:
    return stored_status(str(target)) is not None


def stored_status(path: str) -> str | None:
    """The status a store of ours records ("creating" if a run died while making it), else None."""
    for name, attributes in METADATA_FILES:
        try:
            meta = json.loads((Path(path) / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        ours = attributes(meta).get(ATTRS_KEY) if isinstance(meta, dict) else None
        return ours.get("status", "unknown") if isinstance(ours, dict) else None
    return None


def level_arrays(group: zarr.Group) -> list[zarr.Array]:
    """The result's resolution levels, full resolution first."""
    return [group[str(level)] for level in range(MAX_LEVELS) if str(level) in group]


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
            attributes.update(ome_metadata(layout.dimension_names, layout.levels, layout.ome_version))
        v2 = layout.zarr_format == 2
        group = zarr.open_group(str(target), mode="w", attributes=attributes, zarr_format=layout.zarr_format)
        for level in range(layout.levels):
            names = list(layout.dimension_names)
            group.create_array(
                str(level),
                shape=level_shape(layout.shape, level),
                chunks=level_shape(layout.chunks, level),
                shards=level_shards(layout.chunks, layout.shards, level),
                dtype=layout.dtype,
                compressors=(V2_CODECS if v2 else CODECS)[layout.codec](),
                # Zarr v2 has no dimension names; readers (xarray, ome-zarr) look for this attribute.
                dimension_names=None if v2 else names,
                attributes={"_ARRAY_DIMENSIONS": names} if v2 else None,
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


def write_lazily(result: da.Array, target: zarr.Array, *, start: int = 0) -> Any:
    """The delayed write of ``result`` into ``target[start:]``, one task per dask chunk, without locks.

    Writing without a lock is safe only when no two tasks touch one zarr chunk (or shard), so
    every dask chunk must cover whole zarr chunks; anything else is refused rather than risk lost
    writes. A sharded array's writes are cut at shard edges, so each shard it touches is written by
    one task; a shard begun by an earlier batch is completed by one task of this one. Writes
    computed together must not share a shard (see run._write_batch).
    """
    if target.shards is not None:  # one task per shard it touches: cut the result at shard edges
        result = result.rechunk(
            tuple(aligned_chunks(n, start if axis == 0 else 0, step) for axis, (n, step) in enumerate(zip(result.shape, target.shards)))
        )
    grid = target.shards or target.chunks
    for axis, (sizes, step) in enumerate(zip(result.chunks, grid)):
        edges = np.cumsum(sizes)[:-1] + (start if axis == 0 else 0)
        if np.any(edges % step) or (axis == 0 and start % step and target.shards is None):
            raise ValueError(f"dask chunks {sizes} along axis {axis} split zarr chunks of {step}")
    region = (slice(start, start + result.shape[0]),) + (slice(None),) * (result.ndim - 1)
    return da.store(result, target, regions=region, lock=False, compute=False)


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
            "axes": list(dimension_names(self.array)),
            "shards": list(self.array.shards) if self.array.shards else None,
            "zarr_format": self.array.metadata.zarr_format,
            "codec": describe_codec(self.array),
            **{key: prov.get(key) for key in ("version", "started", "finished", "error")},
            "steps": prov.get("steps", []),
            "source_count": len(names),
            "sources": names[:sources] if sources >= 0 else names,
        }


def create_grouped_root(path: str, provenance: dict[str, Any]) -> None:
    """Replace whatever is at ``path`` with an empty store of shape groups, in status ``running``."""
    target = Path(path)
    if target.exists():
        shutil.rmtree(target)  # check_output_path has established that it is one of ours
    try:
        zarr.open_group(str(target), mode="w", attributes={ATTRS_KEY: {**provenance, "status": "running", "groups": {}}})
    except OSError as exc:
        raise OutputError(f"cannot create output store {path!r}: {exc.strerror or exc}") from None


def stored_groups(path: str) -> dict[str, list[int]] | None:
    """A grouped store's groups (name → image shape), or None for a store of one result."""
    try:
        attrs = zarr.open_group(path, mode="r").attrs.get(ATTRS_KEY, {})
    except (FileNotFoundError, ValueError, zarr.errors.BaseZarrError):
        return None
    groups = attrs.get("groups")
    return dict(groups) if isinstance(groups, dict) else None


def record_groups(path: str, groups: dict[str, Sequence[int]], unreadable: Sequence[tuple[str, str]]) -> None:
    """Add groups to a grouped store's list, and note files whose headers could not be read."""
    group = zarr.open_group(path, mode="r+")
    attrs = group.attrs[ATTRS_KEY]
    known = {**attrs.get("groups", {}), **{name: list(shape) for name, shape in groups.items()}}
    skipped = [{"source": source, "reason": reason} for source, reason in unreadable]
    group.attrs[ATTRS_KEY] = {**attrs, "groups": known, "unreadable": skipped}


def grouped_summary(path: str) -> dict[str, Any]:
    """What `pipeline inspect` shows for a grouped store: its status and each group's progress."""
    attrs = dict(zarr.open_group(path, mode="r").attrs.get(ATTRS_KEY, {}))
    groups = []
    for name, shape in attrs.get("groups", {}).items():
        member = os.path.join(path, name)
        try:
            stored = open_result(member)
            images, written, status = stored.array.shape[0], int((stored.flags == 1).sum()), stored.status
        except InputError:  # a run killed before this group's store was created
            images, written, status = 0, 0, "not started"
        groups.append({"group": name, "store": member, "shape": shape, "images": images, "written": written, "status": status})
    return {
        "store": path,
        "status": attrs.get("status", "unknown"),
        **{key: attrs.get(key) for key in ("version", "started", "finished", "error")},
        "groups": groups,
        "unreadable": attrs.get("unreadable", []),
    }


def open_result(path: str, *, mode: Literal["r", "r+"] = "r") -> StoredResult:
    """Open a store written by this pipeline: for reading (inspect, export) or ``r+`` to resume it."""
    if not Path(path).is_dir():
        raise InputError(f"store {path!r} does not exist")
    groups = stored_groups(path)
    if groups:
        raise InputError(
            f"store {path!r} holds one result per image shape (input.shapes: group): "
            f"{', '.join(groups)}; name one, e.g. {os.path.join(path, next(iter(groups)))!r}"
        )
    try:
        group = zarr.open_group(path, mode=mode)
        array = group[RESULT_ARRAY]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
        raise InputError(f"{path!r} is not a store written by this pipeline (no group with array '0')") from None
    return StoredResult(path=path, group=group, array=array, provenance=dict(group.attrs.get(ATTRS_KEY, {})))


def dimension_names(array: zarr.Array) -> tuple[str, ...]:
    """The array's axis names: Zarr v3 metadata, or the ``_ARRAY_DIMENSIONS`` attribute of v2."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names or ())


def describe_codec(array: zarr.Array) -> str:
    codecs = array.compressors
    if not codecs:
        return "none"
    parts = []
    for codec in codecs:
        if isinstance(codec, V2Codec):  # Zarr v2
            config = codec.get_config()
            name = config.pop("id")
        else:
            name, config = codec.to_dict()["name"], codec.to_dict().get("configuration", {})
        detail = ", ".join(f"{k}={getattr(v, 'value', v)}" for k, v in config.items() if k not in ("typesize", "blocksize"))
        parts.append(f"{name}({detail})")
    return " + ".join(parts)
