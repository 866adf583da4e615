"""Arrays as inputs: a Zarr array, an OME-Zarr image, a store this pipeline wrote, ``.npy`` files.

The array's axes map onto the pipeline's (image, [c | z], y, x) by name: OME-NGFF axes, Zarr v3
``dimension_names`` (our own stores carry them), or, for arrays without names (``.npy``, Zarr v2),
by their number: (y, x), (image, y, x), (image, c, y, x); with ``input.layout: volume`` (z, y, x)
and (image, z, y, x). Each image along the image axis is one source, named ``<entry>#<index>``
like a frame of a multi-page file, so batches, the ledger, resume and ``--append`` (new images
along the first axis) work as for files.

Tasks read their block, with its halo, straight from the store (as tiles of huge TIFFs are read
from the file): Zarr by slicing, ``.npy`` through a memory map (ranged reads for remote files),
so no array is ever loaded whole and tasks depend on nothing but the store. Consecutive images of
one array may be read by one task (``array_stack``'s ``groups``): a stored chunk holding several
images along the image axis is then read and decompressed once, not once per image.

Each entry's metadata is read once per run, when it is listed: the plan and every batch's graph
reuse the ``ArrayInput`` the listing resolved.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np

from pipeline.errors import InputError
from pipeline.pixels import full_scale
from pipeline.sources.frames import split_source
from pipeline.sources.listing import natural_key
from pipeline.sources.tiled import block_regions
from pipeline.storage import absolute, filesystem, is_remote, local_or_url

Options = Mapping[str, Any] | None

# Names other tools give the axes, mapped to ours. A time axis is read as images (one line says so).
_ROLE_OF_NAME = {
    "image": "image", "t": "image", "time": "image", "n": "image", "sample": "image", "index": "image", "b": "image",
    "c": "c", "channel": "c", "ch": "c",
    "z": "z", "y": "y", "x": "x",
}
# Axis roles of arrays without names, by their number of axes.
_BY_NDIM = {2: ("y", "x"), 3: ("image", "y", "x"), 4: ("image", "c", "y", "x")}
_BY_NDIM_VOLUME = {3: ("z", "y", "x"), 4: ("image", "z", "y", "x")}
_OUR_ATTRS = "pipeline"  # the attributes this pipeline's stores keep their provenance and status in


@dataclass(frozen=True)
class ChannelDisplay:
    """How an OME-Zarr's ``omero`` metadata shows one channel, as far as it says so validly."""

    label: str
    color: str | None = None  # RRGGBB hex
    window: tuple[float, float, float, float] | None = None  # min, max, start, end, in the stored values
    active: bool | None = None


@dataclass(frozen=True)
class ArrayInput:
    """One array an input entry names, and how its axes map onto the pipeline's."""

    entry: str  # the store, group or file as the job names it
    path: str  # the array inside the store ("" for a root array or a .npy file)
    kind: str  # npy | zarr | ome-zarr | pipeline
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    roles: tuple[str, ...]  # per axis of the array: image, c, z, y or x
    names: tuple[str, ...]  # the array's own axis names ("" where it has none)
    pixel_size: tuple[float, ...] | None = None  # along the space axes (z, y, x present), from OME metadata
    unit: str | None = None
    channel_display: tuple[ChannelDisplay, ...] | None = None  # the omero channels, one per channel listed
    note: str | None = None  # e.g. "axis 't' read as images"

    @property
    def images(self) -> int:
        return self.shape[self.roles.index("image")] if "image" in self.roles else 1

    @property
    def channel_names(self) -> tuple[str, ...] | None:
        """The omero channels' labels (what provenance records)."""
        return tuple(channel.label for channel in self.channel_display) if self.channel_display else None

    @property
    def image_chunk(self) -> int:
        """Images per stored chunk along the image axis (a ``.npy`` file is one chunk; 1 without the axis)."""
        return self.chunks[self.roles.index("image")] if "image" in self.roles else 1

    def image_shape(self) -> tuple[int, ...]:
        """One image's shape in our axis order: ([c | z,] y, x)."""
        sizes = dict(zip(self.roles, self.shape))
        return tuple(sizes[role] for role in ("c", "z", "y", "x") if role in sizes)

    def block_chunks(self) -> tuple[int, int]:
        """The array's own chunk along y and x: tiles are read in whole ones."""
        sizes = dict(zip(self.roles, self.chunks))
        return sizes["y"], sizes["x"]

    def describe(self) -> dict[str, Any]:
        """What a store made from this array records of it (provenance)."""
        return {
            "store": self.entry, "array": self.path, "kind": self.kind, "shape": list(self.shape),
            "dtype": self.dtype, "axes": list(self.names), "read_as": list(self.roles),
            **({"pixel_size": list(self.pixel_size), "unit": self.unit} if self.pixel_size else {}),
            **({"channel_names": list(self.channel_names)} if self.channel_names else {}),
        }


def list_array_sources(
    entries: Sequence[str], *, volume: bool, options: Options = None, allow_incomplete: bool = False
) -> tuple[list[str], dict[str, ArrayInput]]:
    """Every image the entries name (``<entry>#<index>`` along an image axis, or the entry itself),
    and the array each named entry resolved to, by the entry as its sources spell it.

    This is where each array's metadata (a ``.npy`` file's header) is read: the plan and the
    batches' graphs take these instead of reading it again.
    """
    sources: list[str] = []
    arrays: dict[str, ArrayInput] = {}
    for entry in entries:
        for name in expand_entry(entry, options):
            array = arrays[name] = resolve_array(name, volume=volume, options=options, allow_incomplete=allow_incomplete)
            sources.extend([name] if "image" not in array.roles else [f"{name}#{i}" for i in range(array.images)])
    if not sources:
        raise InputError(f"input.paths: {', '.join(map(repr, entries))} names no arrays (no .npy files match)")
    return sources, arrays


def in_array_order(sources: Sequence[str]) -> bool:
    """``sources`` are images 0, 1, 2, … of one array: groups on the collection's grid are on the array's.

    >>> in_array_order(["a.zarr#0", "a.zarr#1"]), in_array_order(["a.zarr#0", "b.zarr#0"])
    (True, False)
    """
    entry, index = split_source(sources[0]) if sources else ("", None)
    return index == 0 and all(source == f"{entry}#{position}" for position, source in enumerate(sources))


def expand_entry(entry: str, options: Options) -> list[str]:
    """A glob of ``.npy`` files, naturally sorted; every other entry as it is."""
    if not glob.has_magic(entry):
        return [entry]
    if is_remote(entry):
        fs, inner = filesystem(entry, options, where="input.paths")
        protocol = entry.split("://", 1)[0]
        found = [f"{protocol}://{path}" for path in fs.glob(inner)]
    else:
        found = glob.glob(entry, recursive=True)
    return sorted(found, key=natural_key)


def resolve_array(entry: str, *, volume: bool = False, options: Options = None, allow_incomplete: bool = False) -> ArrayInput:
    """Open an entry's metadata (no pixels) and map its axes; one clear InputError if it cannot be read."""
    entry = local_or_url(entry)
    if entry.rstrip("/").lower().endswith(".npy"):
        shape, dtype, order = npy_header(entry, options)
        if order == "F":
            raise InputError(f"array {entry!r} is stored in Fortran order; save it in C order (np.ascontiguousarray)", entry)
        return _mapped(entry, "", "npy", shape, dtype, shape, None, volume=volume)
    zarr = _zarr()
    try:
        node = zarr.open(store=entry, mode="r", storage_options=dict(options or {}) or None)
    except Exception as exc:
        raise InputError(f"input.paths: {entry!r} is not a Zarr array or group that can be read ({_reason(exc)})", entry) from None
    if isinstance(node, zarr.Array):
        return _from_zarr_array(entry, "", node, "zarr", volume=volume)
    attrs = dict(node.attrs)
    ours = attrs.get(_OUR_ATTRS)
    if isinstance(ours, dict) and "groups" in ours:
        raise InputError(
            f"store {entry!r} holds one result per image shape; name one of its groups "
            f"({', '.join(ours['groups'])}), e.g. {entry.rstrip('/') + '/' + next(iter(ours['groups']))!r}",
            entry,
        )
    if isinstance(ours, dict) and "0" in node:
        status = ours.get("status", "unknown")
        if status != "complete" and not allow_incomplete:
            raise InputError(
                f"store {entry!r} is {status}, not complete: finish it first (rerun its job), or set "
                f"input.allow_incomplete: true to read it as it is (images not yet written read as its fill value)",
                entry,
            )
        config = ours.get("config", {}).get("output", {})
        array = node["0"]
        found = _from_zarr_array(entry, "0", array, "pipeline", volume=volume)
        size, unit = config.get("pixel_size"), config.get("unit")
        return _with_channels(_with_scale(found, tuple(size) if size else None, unit), attrs)
    multiscales = (attrs.get("ome") or {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        return _from_ome(entry, node, multiscales[0], attrs, volume=volume)
    arrays = sorted(name for name, _ in node.arrays())
    raise InputError(
        f"input.paths: {entry!r} is a Zarr group without OME-NGFF multiscales; name one of its arrays"
        + (f" ({', '.join(arrays[:5])}), e.g. {entry.rstrip('/') + '/' + arrays[0]!r}" if arrays else " (it holds none)"),
        entry,
    )


def _from_zarr_array(entry: str, path: str, array: Any, kind: str, *, volume: bool, names: Sequence[str] | None = None) -> ArrayInput:
    if names is None:
        names = getattr(array.metadata, "dimension_names", None) or array.attrs.get("_ARRAY_DIMENSIONS")
    chunks = tuple(array.chunks)
    return _mapped(entry, path, kind, tuple(array.shape), np.dtype(array.dtype), chunks, names, volume=volume)


def _from_ome(entry: str, group: Any, multiscale: dict[str, Any], attrs: dict[str, Any], *, volume: bool) -> ArrayInput:
    """Level 0 of an OME-NGFF image: axes, pixel sizes and units from its metadata."""
    axes = multiscale.get("axes") or []
    names = [axis["name"] if isinstance(axis, dict) else str(axis) for axis in axes]
    dataset = multiscale["datasets"][0]
    path = dataset["path"]
    try:
        array = group[path]
    except KeyError:
        raise InputError(f"OME-Zarr {entry!r}: its level 0 array {path!r} is missing", entry) from None
    found = _from_zarr_array(entry, path, array, "ome-zarr", volume=volume, names=names or None)
    scale = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t.get("type") == "scale"), None)
    space = [i for i, axis in enumerate(axes) if isinstance(axis, dict) and axis.get("type") == "space"]
    size = tuple(float(scale[i]) for i in space) if scale and space else None
    units = {axis.get("unit") for axis in axes if isinstance(axis, dict) and axis.get("type") == "space"} - {None}
    found = _with_scale(found, size, units.pop() if len(units) == 1 else None)
    return _with_channels(found, attrs)


def _with_channels(found: ArrayInput, attrs: dict[str, Any]) -> ArrayInput:
    """The omero channels: their labels (recorded in provenance) and how they are shown (carried to the result)."""
    omero = (attrs.get("ome") or attrs).get("omero") or {}
    channels = [channel for channel in omero.get("channels", []) if isinstance(channel, dict)]
    display = tuple(_display(channel) for channel in channels) or None
    return ArrayInput(**{**found.__dict__, "channel_display": display})


def _display(channel: dict[str, Any]) -> ChannelDisplay:
    """One omero channel; a colour or window that is not valid OME-NGFF is left out rather than refused."""
    color = channel.get("color")
    valid_color = isinstance(color, str) and len(color) == 6 and all(c in "0123456789abcdefABCDEF" for c in color)
    window = channel.get("window")
    bounds = [window.get(key) for key in ("min", "max", "start", "end")] if isinstance(window, dict) else []
    finite = len(bounds) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bounds
    ) and bounds[0] <= bounds[1]
    active = channel.get("active")
    return ChannelDisplay(
        label=str(channel.get("label", "")),
        color=color.upper() if valid_color else None,
        window=tuple(float(v) for v in bounds) if finite else None,  # type: ignore[arg-type]
        active=active if isinstance(active, bool) else None,
    )


def _with_scale(found: ArrayInput, size: tuple[float, ...] | None, unit: str | None) -> ArrayInput:
    return ArrayInput(**{**found.__dict__, "pixel_size": size, "unit": unit})


def _mapped(
    entry: str, path: str, kind: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple[int, ...],
    names: Sequence[str] | None, *, volume: bool,
) -> ArrayInput:
    """The roles of the array's axes, by name or by number; one line when they cannot map."""
    where = f"array {entry!r}" + (f" (array {path!r} in it)" if path else "")
    if dtype.kind not in "uif" or dtype.itemsize > 8:
        raise InputError(f"{where} holds {dtype} values; give an array of integers or real floats", entry)
    note = None
    if names and any(names):
        roles = []
        for name in names:
            role = _ROLE_OF_NAME.get(str(name).lower())
            if role is None:
                raise InputError(
                    f"{where} has axes {tuple(names)}; axis {name!r} is none of image (t), c, z, y, x — "
                    f"save the array with those axis names", entry,
                )
            roles.append(role)
        timed = [name for name in names if str(name).lower() in ("t", "time")]
        if timed:
            note = f"axis {timed[0]!r} of {entry!r} is read as images, one per time point"
    else:
        table = _BY_NDIM_VOLUME if volume else _BY_NDIM
        if len(shape) not in table:
            raise InputError(
                f"{where} has {len(shape)} axes without names; arrays without names are read as "
                + ", ".join(str(axes) for axes in table.values())
                + " — save it with axis names (Zarr v3 dimension_names)", entry,
            )
        roles = list(table[len(shape)])
    duplicated = sorted({role for role in roles if roles.count(role) > 1})
    if duplicated or "y" not in roles or "x" not in roles or ("c" in roles and "z" in roles):
        raise InputError(
            f"{where} has axes {tuple(names or roles)}, which do not map onto (image, [c or z], y, x)"
            + (f": {duplicated[0]!r} appears twice (e.g. both image and t)" if duplicated else ""), entry,
        )
    if volume != ("z" in roles):
        raise InputError(
            f"{where} {'has' if 'z' in roles else 'has no'} z axis; set input.layout: "
            f"{'volume' if 'z' in roles else 'images'} to read it", entry,
        )
    return ArrayInput(
        entry=entry, path=path, kind=kind, shape=tuple(int(n) for n in shape), dtype=str(dtype),
        chunks=tuple(int(n) for n in chunks), roles=tuple(roles), names=tuple(str(n) for n in (names or ())), note=note,
    )


def npy_header(path: str, options: Options = None) -> tuple[tuple[int, ...], np.dtype, str]:
    """A ``.npy`` file's shape, type and order, from its header only."""
    try:
        with _open(path, options) as file:
            shape, fortran, dtype = _read_header(file)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return tuple(shape), np.dtype(dtype), "F" if fortran else "C"


def _read_header(file: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    """shape, Fortran order and dtype from an open ``.npy`` file, left at the start of its data."""
    major, _ = np.lib.format.read_magic(file)
    reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    return reader(file)


def _open(path: str, options: Options):
    if not is_remote(path):
        return open(path, "rb")
    fs, inner = filesystem(path, options, where="input.paths")
    return fs.open(inner, "rb")


def array_stack(
    sources: Sequence[str], *, array: ArrayInput, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: str,
    halo: Mapping[int, int] | None = None, scale: str = "native", options: Options = None, allow_incomplete: bool = False,
    arrays: Mapping[str, ArrayInput] | None = None, groups: Sequence[int] | None = None,
) -> da.Array:
    """(image, [c | z,] y, x) of ``sources``; chunks of ``chunks`` per image, each read with its ``halo``.

    ``shape`` and ``chunks`` are one image's, in our axis order; ``halo`` ({axis: samples}, axes of
    the stack) widens each block by that much of its neighbours where the image has them, read
    from the store (the layout of dask's ``overlap`` with ``boundary="none"``).

    ``groups`` cuts ``sources`` into runs of consecutive images (one each by default); a run that
    holds consecutive indices of one array is read by one task, in one slice along the image axis,
    so that the stored chunks it covers are each read once. Sources that are not consecutive are
    read one to a task. ``arrays`` are the entries the listing resolved (``list_array_sources``):
    only entries missing from it are opened here.
    """
    halo = dict(halo or {})
    regions = [block_regions(size, step, halo.get(axis + 1, 0)) for axis, (size, step) in enumerate(zip(shape, chunks))]
    block_chunks = tuple(tuple(stop - start for start, stop in axis) for axis in regions)
    checked: dict[str, ArrayInput] = {}
    images = []
    first = 0
    for size in groups if groups is not None else (1,) * len(sources):
        for entry, index, count in _runs(sources[first : first + size]):
            found = checked.get(entry)
            if found is None:
                found = checked[entry] = _matching(entry, array, arrays or {}, scale, options, allow_incomplete)
            images.append(
                da.map_blocks(
                    _read_block, chunks=((count,), *block_chunks), dtype=dtype,
                    meta=np.empty((0,) * (1 + len(shape)), dtype=dtype),
                    entry=absolute(found.entry), path=found.path, kind=found.kind, index=index, count=count,
                    roles=found.roles, regions=regions, out_dtype=dtype, scale=scale, options=dict(options or {}),
                )
            )
        first += size
    return da.concatenate(images, axis=0)


def _runs(sources: Sequence[str]) -> list[tuple[str, int | None, int]]:
    """(entry, first index, count) of each run of consecutive indices of one array, in order.

    >>> _runs(["a.npy#3", "a.npy#4", "b.npy#5", "c.npy"])
    [('a.npy', 3, 2), ('b.npy', 5, 1), ('c.npy', None, 1)]
    """
    runs: list[tuple[str, int | None, int]] = []
    for source in sources:
        entry, index = split_source(source)
        if runs and index is not None and runs[-1][0] == entry and runs[-1][1] is not None and sum(runs[-1][1:]) == index:
            runs[-1] = (entry, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((entry, index, 1))
    return runs


def _matching(
    entry: str, array: ArrayInput, resolved: Mapping[str, ArrayInput], scale: str, options: Options, allow_incomplete: bool
) -> ArrayInput:
    """The array ``entry`` names (as listed, or opened now), refused unless its images match the first's."""
    found = resolved.get(entry) or (
        array if entry == array.entry
        else resolve_array(entry, volume="z" in array.roles, options=options, allow_incomplete=allow_incomplete)
    )
    if found.image_shape() != array.image_shape() or found.roles != array.roles:
        raise InputError(
            f"array {entry!r} holds images of shape {found.image_shape()} but {array.entry!r}, the first, holds "
            f"{array.image_shape()}; all images of a collection must have the same size and channels", entry,
        )
    if scale == "native" and found.dtype != array.dtype:
        raise InputError(
            f"array {entry!r} holds {found.dtype} but {array.entry!r}, the first, holds {array.dtype}; "
            f"set input.scale: unit to read arrays of several types together", entry,
        )
    return found


def _read_block(*, index: int | None, count: int, block_id: tuple[int, ...], **where: Any) -> np.ndarray:
    """Images ``index:index+count`` of the array (the array itself when it has no image axis), this block of each.

    A run that cannot be read is read again image by image, so that the error names the image
    (``input.on_error: skip`` then leaves out that one, not the run).
    """
    try:
        return _read_images(index, count, block_id, **where)
    except Exception as exc:
        if count > 1 and index is not None:
            alone = [_read_block(index=i, count=1, block_id=block_id, **where) for i in range(index, index + count)]
            return np.concatenate(alone)
        raise InputError.unreadable(where["entry"] + (f"#{index}" if index is not None else ""), exc) from None


def _read_images(
    index: int | None, count: int, block_id: tuple[int, ...], *, entry: str, path: str, kind: str,
    roles: tuple[str, ...], regions: list[list[tuple[int, int]]], out_dtype: str, scale: str, options: dict[str, Any],
) -> np.ndarray:
    ours = [role for role in ("c", "z", "y", "x") if role in roles]
    wanted = {role: slice(*axis[i]) for role, axis, i in zip(ours, regions, block_id[1:])}
    if index is not None:
        wanted["image"] = slice(index, index + count)
    stored = _open_array(entry, path, kind, options)
    block = np.asarray(stored[tuple(wanted[role] for role in roles)])
    order = [role for role in ("image", *ours) if role in roles]
    block = np.transpose(block, [roles.index(role) for role in order]).astype(out_dtype)
    if scale == "unit" and full_scale(stored.dtype) != 1.0:
        block /= block.dtype.type(full_scale(stored.dtype))
    return block if "image" in roles else block[np.newaxis]


def _open_array(entry: str, path: str, kind: str, options: dict[str, Any]) -> Any:
    """The stored array, opened in the task (a worker may be another process on another host)."""
    if kind == "npy":
        if not is_remote(entry):
            return np.load(entry, mmap_mode="r")
        return _RemoteNpy(entry, options)
    zarr = _zarr()
    return zarr.open_array(store=entry, path=path or None, mode="r", storage_options=options or None)


class _RemoteNpy:
    """A remote C-order ``.npy`` read by ranged requests: only the rows a block needs are fetched."""

    def __init__(self, url: str, options: Options) -> None:
        self.url, self.options = url, options
        with _open(url, options) as file:
            self.shape, _, self.dtype = _read_header(file)
            self.offset = file.tell()

    def __getitem__(self, selection: tuple[Any, ...]) -> np.ndarray:
        # Fetch the contiguous run of rows of the first sliced axis that the selection touches.
        lead = [s for s in selection if not isinstance(s, slice)]
        first = len(lead)
        rows = selection[first] if first < len(selection) else slice(None)
        start, stop, _ = rows.indices(self.shape[first]) if isinstance(rows, slice) else (rows, rows + 1, 1)
        inner = math.prod(self.shape[first + 1 :]) * self.dtype.itemsize
        before = sum(i * math.prod(self.shape[k + 1 :]) for k, i in enumerate(lead)) * self.dtype.itemsize
        with _open(self.url, self.options) as file:
            file.seek(self.offset + before + start * inner)
            data = file.read((stop - start) * inner)
        block = np.frombuffer(data, dtype=self.dtype).reshape((stop - start, *self.shape[first + 1 :]))
        rest = selection[first + 1 :]
        return block[(slice(None), *rest)] if isinstance(rows, slice) else block[(0, *rest)]


def _zarr() -> Any:
    import zarr  # imported where arrays are read: image-only runs never pay for it

    return zarr


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().split("\n")[0]
    return text or type(exc).__name__
