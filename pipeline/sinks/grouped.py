"""A store of shape groups (``input.shapes: group``): one result store per distinct image shape.

    result.zarr/
        zarr.json      attributes["pipeline"] = provenance, status, "groups": {name: shape}, "unreadable"
        48x64/         a result store (see zarr_store.py) for the images of that shape
        512x512/       …

The root is ``complete`` only when every group is; each group resumes and appends on its own.
"""

from __future__ import annotations

from typing import Any, Sequence

from pipeline.errors import InputError, OutputError
from pipeline.sinks.zarr_store import ATTRS_KEY, Options, _remove, open_group, open_result, stored_groups
from pipeline.storage import explain, is_remote

__all__ = ["create_grouped_root", "grouped_summary", "member_path", "record_groups", "stored_groups"]


def member_path(path: str, name: str) -> str:
    """Where group ``name`` lives inside the store at ``path`` (a folder, or a key prefix)."""
    return f"{path.rstrip('/')}/{name}"


def create_grouped_root(path: str, provenance: dict[str, Any], storage_options: Options = None) -> None:
    """Replace whatever is at ``path`` with an empty store of shape groups, in status ``running``."""
    try:
        _remove(path, storage_options)  # check_output_path has established that it is one of ours
        open_group(path, "w", storage_options, attributes={ATTRS_KEY: {**provenance, "status": "running", "groups": {}}})
    except OSError as exc:
        reason = explain(exc, storage_options) if is_remote(path) else exc.strerror or exc
        raise OutputError(f"cannot create output store {path!r}: {reason}") from None


def record_groups(
    path: str,
    groups: dict[str, Sequence[int]],
    unreadable: Sequence[tuple[str, str]],
    storage_options: Options = None,
    *,
    dry_run: bool = False,
) -> bool:
    """Add groups to a grouped store's list, and note files whose headers could not be read.

    Returns whether that changes the root; nothing is written when it does not (or with ``dry_run``).
    """
    group = open_group(path, "r" if dry_run else "r+", storage_options)
    attrs = group.attrs[ATTRS_KEY]
    known = {**attrs.get("groups", {}), **{name: list(shape) for name, shape in groups.items()}}
    skipped = [{"source": source, "reason": reason} for source, reason in unreadable]
    updated = {**attrs, "groups": known, "unreadable": skipped}
    if updated == attrs:
        return False
    if not dry_run:
        group.attrs[ATTRS_KEY] = updated
    return True


def grouped_summary(path: str, storage_options: Options = None) -> dict[str, Any]:
    """What `pipeline inspect` shows for a grouped store: its status and each group's progress."""
    attrs = dict(open_group(path, "r", storage_options).attrs.get(ATTRS_KEY, {}))
    groups = []
    for name, shape in attrs.get("groups", {}).items():
        member = member_path(path, name)
        try:
            stored = open_result(member, storage_options=storage_options)
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
