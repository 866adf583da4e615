"""The output store: a Zarr v3 group holding the result, its source list, and provenance.

Layout (OME-NGFF friendly: multiscale levels "1", "2", ... and the ``ome`` attributes can be added
beside level "0" later without moving anything)::

    result.zarr/
        zarr.json      group; attributes["pipeline"] = provenance and status
        0/             the result, axes (image, [c], y, x), one chunk per image
        sources/       1-D string array: the source file of each image index

``status`` is ``running`` while chunks are written, ``failed`` (with the error) if the run stops on
an error, and ``complete`` only after every chunk has been written.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from pipeline.errors import InputError, OutputError

RESULT_ARRAY = "0"
SOURCES_ARRAY = "sources"
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


def check_output_path(path: str, *, overwrite: bool) -> None:
    """Fail early, before any work, if the store cannot be (re)created at ``path``."""
    target = Path(path)
    if target.is_file():
        raise OutputError(f"output.path {path!r} is a file; give a directory name for the Zarr store")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise OutputError(
                f"output store {path!r} already exists; set output.overwrite: true "
                f"(or pass --overwrite) to replace it"
            )
        if not _written_by_us(target):
            raise OutputError(
                f"refusing to replace {path!r}: it is not a store written by this pipeline; "
                f"choose another output.path"
            )
    parent = target.parent if not target.exists() else target
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output.path {path!r} is not writable (no write permission on {str(parent)!r})")


def _written_by_us(target: Path) -> bool:
    try:
        meta = json.loads((target / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return ATTRS_KEY in meta.get("attributes", {})


@dataclass(frozen=True)
class StoreLayout:
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    dimension_names: tuple[str, ...]
    codec: str


def create_store(
    path: str, layout: StoreLayout, *, sources: tuple[str, ...], provenance: dict[str, Any]
) -> zarr.Array:
    """Replace whatever is at ``path`` with a fresh store in status ``running``; return the result array."""
    target = Path(path)
    if target.exists():
        shutil.rmtree(target)  # check_output_path has established it is ours and overwrite is on
    try:
        group = zarr.open_group(str(target), mode="w")
        array = group.create_array(
            RESULT_ARRAY,
            shape=layout.shape,
            chunks=layout.chunks,
            dtype=layout.dtype,
            compressors=CODECS[layout.codec](),
            dimension_names=list(layout.dimension_names),
            fill_value=0,
        )
        names = group.create_array(
            SOURCES_ARRAY,
            shape=(len(sources),),
            chunks=(min(max(len(sources), 1), SOURCES_PER_CHUNK),),
            dtype=str,
        )
        names[:] = np.asarray(sources, dtype=str)
        group.attrs[ATTRS_KEY] = {
            **provenance,
            "status": "running",
            "sources": {"array": SOURCES_ARRAY, "count": len(sources)},
        }
    except OSError as exc:
        raise OutputError(f"cannot create output store {path!r}: {exc.strerror or exc}") from None
    return array


def write_lazily(result: da.Array, target: zarr.Array) -> Any:
    """The delayed write of ``result`` into ``target``, one task per dask chunk, without locks.

    Writing without a lock is safe only when no two tasks touch one zarr chunk, so every dask
    chunk must cover whole zarr chunks; anything else is refused rather than risk lost writes.
    """
    for axis, (sizes, step) in enumerate(zip(result.chunks, target.chunks)):
        edges = np.cumsum(sizes)[:-1]
        if np.any(edges % step):
            raise ValueError(f"dask chunks {sizes} along axis {axis} split zarr chunks of {step}")
    return da.store(result, target, lock=False, compute=False)


def set_status(path: str, status: str, **fields: Any) -> None:
    """Update the status (and e.g. the finish time or the error) in the group's attributes."""
    group = zarr.open_group(path, mode="r+")
    group.attrs[ATTRS_KEY] = {**group.attrs[ATTRS_KEY], **fields, "status": status}


@dataclass(frozen=True)
class StoredResult:
    path: str
    array: zarr.Array
    provenance: dict[str, Any]

    @property
    def sources(self) -> list[str]:
        group = zarr.open_group(self.path, mode="r")
        return [str(name) for name in group[SOURCES_ARRAY][:]]

    @property
    def status(self) -> str:
        return self.provenance.get("status", "unknown")


def open_result(path: str) -> StoredResult:
    """Open a store written by this pipeline for reading (inspect, export)."""
    if not Path(path).is_dir():
        raise InputError(f"store {path!r} does not exist")
    try:
        group = zarr.open_group(path, mode="r")
        array = group[RESULT_ARRAY]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
        raise InputError(f"{path!r} is not a store written by this pipeline (no group with array '0')") from None
    return StoredResult(path=path, array=array, provenance=dict(group.attrs.get(ATTRS_KEY, {})))


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
