"""``input.shapes: group``: a mixed collection split into one collection per distinct image shape.

Grouping reads every file's header (not its pixels), as padding does. Each group is named by its
shape (``48x64``, ``3x48x64`` with channels kept) and keeps the collection's order; the groups come
in the order their first image appears.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

from pipeline.errors import InputError
from pipeline.sources.images import declared_shape

if TYPE_CHECKING:
    from pipeline.config import InputConfig


@dataclass(frozen=True)
class ShapeGroups:
    groups: dict[str, list[str]]  # group name → its sources, in collection order
    shapes: dict[str, tuple[int, ...]]  # group name → the shape of each of its images
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (source, reason), with skip


def other_shapes(
    sources: Sequence[str], shape: tuple[int, ...], settings: InputConfig, *, limit: int = 4, look: int = 2000
) -> tuple[list[tuple[str, tuple[int, ...]]], bool]:
    """The first images among ``sources`` (up to ``look`` headers) whose shape is not ``shape``.

    Returns up to ``limit`` of them and whether the search stopped before the end of ``sources``.
    """
    found: list[tuple[str, tuple[int, ...]]] = []
    for checked, source in enumerate(sources):
        if len(found) == limit or checked == look:
            return found, True
        try:
            declared = declared_shape(source, settings.color_mode, settings.storage_options)
        except InputError:
            continue  # unreadable files are another error, reported when they are read
        if declared != shape:
            found.append((source, declared))
    return found, False


def group_name(shape: Sequence[int]) -> str:
    return "x".join(str(n) for n in shape)


def group_by_shape(sources: Sequence[str], settings: InputConfig) -> ShapeGroups:
    """Split ``sources`` by their declared shape; unreadable headers fail, or are set aside with skip."""
    groups: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    unreadable: list[tuple[str, str]] = []
    for source in sources:
        try:
            shape = declared_shape(source, settings.color_mode, settings.storage_options)
        except InputError as exc:
            if settings.on_error != "skip":
                raise
            unreadable.append((source, str(exc)))
            continue
        name = group_name(shape)
        groups.setdefault(name, []).append(source)
        shapes[name] = shape
    if not groups:
        raise InputError(f"input.paths: none of the {len(sources)} files can be read (first: {unreadable[0][1]})")
    return ShapeGroups(groups, shapes, unreadable)
