"""The output store: a Zarr v3 group holding the result, its source list, and provenance.

Layout (OME-NGFF 0.5: the ``ome`` attributes describe levels "0", "1", … as one multiscale image)::

    result.zarr/
        zarr.json      group; attributes["pipeline"] = provenance and status
        0/             the result, axes (image, [c], y, x), one chunk per image (or tile)
        1/, 2/, …      resolution levels (output.levels): y and x halved at each
        sources/       1-D string array: the source file of each image index
        source_shapes/ each image's own shape, when smaller images were padded (input.shapes: pad)
        ledger/        which images are durably written (see ledger.py)

Every array names its dimensions (``image`` first), and the levels name ``sources`` as their
coordinate along it (CF's ``coordinates``), so ``xarray.open_zarr`` opens a store as it is.

With ``input.shapes: group`` the store is a group of such stores, one per image shape (see
grouped.py).

``status`` is ``running`` while chunks are written (and stays so if the run is killed),
``failed`` (with the error) if the run stops on an error, and ``complete`` only after every image
is recorded as written.

A store may also live at an fsspec URL (``s3://bucket/x.zarr``): zarr writes it through its
FsspecStore with ``output.storage_options``, and every function here takes those options.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import zarr

from pipeline.errors import InputError, OutputError, PipelineError
from pipeline.sinks.codecs import CODECS, V2_CODECS, describe_codec
from pipeline.sinks.layout import IMAGE_AXIS, StoreLayout, level_shape, level_shards, named_dimensions, ome_metadata
from pipeline.sinks.ledger import LEDGER, create_ledger, done_flags, resize_ledger
from pipeline.storage import explain, filesystem, is_remote, is_remote_failure, local_or_url

RESULT_ARRAY = "0"
_FIRST_FILE_LEFTOVER = re.compile(r"zarr\.[0-9a-f]{32}\.partial")
MAX_LEVELS = 16
SOURCES_ARRAY = "sources"
SHAPES_ARRAY = "source_shapes"
ATTRS_KEY = "pipeline"
SOURCES_PER_CHUNK = 65536

Options = Mapping[str, Any] | None

__all__ = ["CODECS", "StoreLayout", "describe_codec", "level_shape"]  # also imported from here
# Where a group keeps its attributes: Zarr v3, then v2 (output.format: ome-0.4).
METADATA_FILES = (("zarr.json", lambda meta: meta.get("attributes", {})), (".zattrs", lambda meta: meta))


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def open_group(path: str, mode: str, storage_options: Options = None, **kwargs: Any) -> zarr.Group:
    """The zarr group at a local path, or at a URL through zarr's fsspec store."""
    if is_remote(path):
        return zarr.open_group(path, mode=mode, storage_options=dict(storage_options or {}), **kwargs)
    return zarr.open_group(path, mode=mode, **kwargs)


def check_output_path(path: str, storage_options: Options = None) -> bool:
    """Fail early, before any work, if no store can live at ``path``; say whether one exists.

    On a remote store nothing says in advance whether it is writable: the lock object, written
    before this check, is the first write and fails with the reason.
    """
    if is_remote(path):
        return _check_remote_output(path, storage_options)
    target = Path(path)
    if target.is_file():
        raise OutputError(f"output.path {path!r} is a file; give a directory name for the Zarr store")
    if half_created(target):
        return False  # created afresh (create_store replaces the leftover)
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


def _check_remote_output(path: str, storage_options: Options) -> bool:
    fs, root = filesystem(path, storage_options, where="output.path", error=OutputError)
    try:
        fs.invalidate_cache(root)  # zarr writes through another instance, which does not clear this one's
        if fs.isfile(root):
            raise OutputError(f"output.path {path!r} is an object (a file); give a prefix for the Zarr store")
        try:
            exists = bool(fs.ls(root))
        except FileNotFoundError:
            exists = False
    except PipelineError:
        raise
    except Exception as exc:
        raise OutputError(f"output.path {path!r}: {explain(exc, storage_options)}") from None
    if exists and stored_status(path, storage_options) is None:
        raise OutputError(
            f"refusing to write into {path!r}: it is not a store written by this pipeline; "
            f"choose another output.path"
        )
    return exists


def _written_by_us(target: Path) -> bool:
    return stored_status(str(target)) is not None


def half_created(target: Path) -> bool:
    """A folder holding only the temporary file of our first ``zarr.json``: a run killed while creating it.

    Zarr writes each file to ``<name>.<hex>.partial`` and renames it into place, and a new store's
    first file is its group's ``zarr.json`` (carrying our attributes), so a folder with nothing but
    such a leftover was being created by this pipeline; a rerun creates it afresh.
    """
    entries = list(target.iterdir()) if target.is_dir() else []
    return bool(entries) and all(
        entry.is_file() and _FIRST_FILE_LEFTOVER.fullmatch(entry.name) for entry in entries
    )


def stored_status(path: str, storage_options: Options = None) -> str | None:
    """The status a store of ours records ("creating" if a run died while making it), else None."""
    for name, attributes in METADATA_FILES:
        try:
            meta = json.loads(_read_group_metadata(path, storage_options, name))
        except (OSError, ValueError):
            continue
        ours = attributes(meta).get(ATTRS_KEY) if isinstance(meta, dict) else None
        return ours.get("status", "unknown") if isinstance(ours, dict) else None
    return None


def level_arrays(group: zarr.Group) -> list[zarr.Array]:
    """The result's resolution levels, full resolution first."""
    return [group[str(level)] for level in range(MAX_LEVELS) if str(level) in group]


def _read_group_metadata(path: str, storage_options: Options, name: str = "zarr.json") -> str:
    if not is_remote(path):
        return (Path(path) / name).read_text(encoding="utf-8")
    fs, root = filesystem(path, storage_options, where="output.path", error=OutputError)
    try:
        return fs.cat_file(f"{root.rstrip('/')}/{name}").decode("utf-8")
    except (OSError, ValueError):
        raise
    except Exception as exc:
        raise OutputError(f"output.path {path!r}: {explain(exc, storage_options)}") from None


def _remove(path: str, storage_options: Options) -> None:
    """Delete a store (check_output_path has established that it is one of ours)."""
    if not is_remote(path):
        if Path(path).exists():
            shutil.rmtree(path)
        return
    fs, root = filesystem(path, storage_options, where="output.path", error=OutputError)
    try:
        fs.rm(root, recursive=True)
    except FileNotFoundError:
        pass


def create_store(
    path: str,
    layout: StoreLayout,
    *,
    sources: tuple[str, ...],
    provenance: dict[str, Any],
    storage_options: Options = None,
) -> zarr.Array:
    """Replace whatever is at ``path`` with a fresh store in status ``running``; return the result array."""
    try:
        _remove(path, storage_options)
        # The attributes come first: a run killed while creating leaves a store that is ours.
        attributes: dict[str, Any] = {ATTRS_KEY: {**provenance, "status": "creating"}}
        if layout.ome:
            attributes.update(
                ome_metadata(
                    layout.dimension_names, layout.levels, layout.ome_version,
                    pixel_size=layout.pixel_size, unit=layout.unit, channels=layout.channels,
                )
            )
        v2 = layout.zarr_format == 2
        group = open_group(path, "w", storage_options, attributes=attributes, zarr_format=layout.zarr_format)
        for level in range(layout.levels):
            group.create_array(
                str(level),
                shape=level_shape(layout.shape, level),
                chunks=level_shape(layout.chunks, level),
                shards=level_shards(layout.chunks, layout.shards, level),
                dtype=layout.dtype,
                compressors=(V2_CODECS if v2 else CODECS)[layout.codec](),
                # CF's way (xarray reads it) of saying the source names label the image axis.
                **named_dimensions(layout.dimension_names, layout.zarr_format, {"coordinates": SOURCES_ARRAY}),
                # An image never written (skipped, or not reached yet) reads as NaN, not as black.
                fill_value=float("nan") if np.dtype(layout.dtype).kind == "f" else 0,
            )
        array = group[RESULT_ARRAY]
        names = group.create_array(
            SOURCES_ARRAY,
            shape=(len(sources),),
            chunks=(min(max(len(sources), 1), SOURCES_PER_CHUNK),),
            dtype=str,
            **named_dimensions((IMAGE_AXIS,), layout.zarr_format),
        )
        names[:] = np.asarray(sources, dtype=str)
        create_ledger(group, len(sources))
        group.attrs[ATTRS_KEY] = {
            **provenance,
            "status": "running",
            "sources": {"array": SOURCES_ARRAY, "count": len(sources)},
        }
    except Exception as exc:
        if not (isinstance(exc, OSError) or is_remote_failure(exc)):
            raise
        reason = explain(exc, storage_options) if is_remote(path) else exc.strerror or exc
        raise OutputError(f"cannot create output store {path!r}: {reason}") from None
    return array


def append_sources(path: str, new_sources: Sequence[str], storage_options: Options = None) -> zarr.Array:
    """Grow the store along the image axis for ``new_sources``; return the (resized) result array."""
    group = open_group(path, "r+", storage_options)
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


def record_source_shapes(
    path: str, start: int, shapes: Sequence[tuple[int, ...]], storage_options: Options = None
) -> None:
    """Each image's own shape before padding (input.shapes: pad), from index ``start`` on."""
    group = open_group(path, "r+", storage_options)
    rows = np.asarray(shapes, dtype=np.int64).reshape(len(shapes), -1)
    if SHAPES_ARRAY not in group:
        group.create_array(
            SHAPES_ARRAY, shape=(0, rows.shape[1]), chunks=(SOURCES_PER_CHUNK, rows.shape[1]), dtype="int64",
            **named_dimensions((IMAGE_AXIS, "source_axis"), group.metadata.zarr_format),
        )
    array = group[SHAPES_ARRAY]
    array.resize((max(array.shape[0], start + len(rows)), rows.shape[1]))
    array[start : start + len(rows)] = rows


def remove_partial_writes(path: str) -> int:
    """Delete the temporary files of chunk writes cut short by a killed run; return how many.

    A remote store has none: an object store writes each chunk in one request, which lands whole
    or not at all.
    """
    if is_remote(path):
        return 0
    removed = 0
    for leftover in Path(path).rglob("*.partial"):
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def set_status(path: str, status: str, *, storage_options: Options = None, **fields: Any) -> None:
    """Update the status (and e.g. the finish time or the error) in the group's attributes."""
    group = open_group(path, "r+", storage_options)
    group.attrs[ATTRS_KEY] = {**group.attrs[ATTRS_KEY], **fields, "status": status}


# Earlier attempts a store remembers (the newest ones), under "history".
MAX_HISTORY = 20
_ATTEMPT_KEYS = ("status", "started", "resumed", "finished", "error")


def mark_resumed(path: str, *, storage_options: Options = None) -> None:
    """Status ``running`` again for a rerun; the last attempt's outcome moves into ``history``.

    So a store that a rerun completes carries no stale error: what went wrong before is kept,
    clearly as history (``[{"status": "interrupted", "error": ..., "finished": ...}, ...]``).
    """
    group = open_group(path, "r+", storage_options)
    attrs = dict(group.attrs[ATTRS_KEY])
    attempt = {key: attrs.pop(key) for key in _ATTEMPT_KEYS if key in attrs}
    history = [*attrs.pop("history", []), attempt][-MAX_HISTORY:]
    group.attrs[ATTRS_KEY] = {**attrs, "history": history, "status": "running", "resumed": utc_now()}


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
    def trusted_status(self) -> str:
        """The status as the ledger bears it out: "complete" only when every image is done."""
        done = self.done
        if self.status != "complete" or done.all():
            return self.status
        return (
            f"incomplete (marked complete, but the ledger records {int(done.sum())}/{done.size} images "
            f"done; a rerun writes the rest)"
        )

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
        skipped = f", {len(unreadable)} unreadable (left out)" if unreadable else ""
        return {
            "store": self.path,
            "status": self.trusted_status,
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


def open_result(path: str, *, mode: Literal["r", "r+"] = "r", storage_options: Options = None) -> StoredResult:
    """Open a store written by this pipeline: for reading (inspect, export) or ``r+`` to resume it."""
    path = local_or_url(path)
    if not _store_exists(path, storage_options):
        raise InputError(f"store {path!r} does not exist")
    groups = stored_groups(path, storage_options)
    if groups:
        raise InputError(
            f"store {path!r} holds one result per image shape (input.shapes: group): "
            f"{', '.join(groups)}; name one, e.g. {path.rstrip('/') + '/' + next(iter(groups))!r}"
        )
    try:
        group = open_group(path, mode, storage_options)
        array = group[RESULT_ARRAY]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.BaseZarrError):
        raise InputError(f"{path!r} is not a store written by this pipeline (no group with array '0')") from None
    except Exception as exc:
        if not (isinstance(exc, OSError) or is_remote_failure(exc)):
            raise
        raise InputError(f"store {path!r} cannot be read: {explain(exc, storage_options)}") from None
    return StoredResult(path=path, group=group, array=array, provenance=dict(group.attrs.get(ATTRS_KEY, {})))


def _store_exists(path: str, storage_options: Options) -> bool:
    if not is_remote(path):
        return Path(path).is_dir()
    fs, root = filesystem(path, storage_options, where="store")
    try:
        fs.invalidate_cache(root)  # zarr writes through another instance, which does not clear this one's
        return bool(fs.exists(root))
    except Exception as exc:
        raise InputError(f"store {path!r} cannot be read: {explain(exc, storage_options)}") from None


def dimension_names(array: zarr.Array) -> tuple[str, ...]:
    """The array's axis names: Zarr v3 metadata, or the ``_ARRAY_DIMENSIONS`` attribute of v2."""
    names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    return tuple(names or ())


def stored_groups(path: str, storage_options: Options = None) -> dict[str, list[int]] | None:
    """A grouped store's groups (name → image shape), or None for a store of one result."""
    try:
        attrs = open_group(path, "r", storage_options).attrs.get(ATTRS_KEY, {})
    except Exception:  # absent or unreachable: whoever opens it next says why
        return None
    groups = attrs.get("groups")
    return dict(groups) if isinstance(groups, dict) else None
