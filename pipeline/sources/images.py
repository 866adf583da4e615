"""Folders, globs and lists of image files as ONE lazy Dask array, one chunk per image.

Only the first file is opened while the graph is built (for its shape and type); each file is
decoded inside its own task, converted to the compute dtype on the input's own scale (uint8 stays
0-255, 16-bit stays 0-65535), and its shape is checked there, failing with the file's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping, Sequence

import dask.array as da
import numpy as np

from pipeline.budget import BlockBudget, ImageBudget, slab_depth
from pipeline.errors import InputError, ShapeMismatch
from pipeline.pixels import Color, GrayFrom, Scale, channels_after, check_depth, convert_pixels
from pipeline.sources.arrays import ArrayInput, array_stack, resolve_array
from pipeline.sources.decode import check_size, decode, image_suffix
from pipeline.sources.frames import TIFF_SUFFIXES, check_frames, frame_count, is_array_entry, split_source
from pipeline.sources.image_libraries import imageio
from pipeline.sources.listing import IMAGE_SUFFIXES, list_images
from pipeline.sources.tiled import budget_tile, choose_tile, fits_whole, tiff_layout, tiled_stack
from pipeline.sources.volume import stack_dtype, stack_shape, stack_volumes, volume_shape
from pipeline.storage import absolute, is_remote, opened

__all__ = ["IMAGE_SUFFIXES", "ImageCollection", "ImageSpec", "list_images", "probe", "read_image", "stack_images"]

# Refuse images declaring more pixels than this before decoding them (input.max_pixels).
DEFAULT_MAX_PIXELS = 1 << 30


@dataclass(frozen=True)
class ImageCollection:
    """A lazy stack of images and what each index came from."""

    array: da.Array
    sources: tuple[str, ...]
    axes: tuple[str, ...]

    @property
    def spatial_ndim(self) -> int:
        return sum(axis in ("z", "y", "x") for axis in self.axes)


@dataclass(frozen=True)
class ImageSpec:
    """What every image of a collection must look like, learnt from its first file."""

    shape: tuple[int, ...]  # after colour handling: (y, x) or (c, y, x)
    color: Color
    reference: str
    max_pixels: int = DEFAULT_MAX_PIXELS
    budget: ImageBudget | None = None  # what a task may hold to decode an image whole (checked from its header)
    raw_shape: tuple[int, ...] = ()  # as stored in the file: (y, x[, c]), or (z, y, x[, c]) for volumes
    tile: tuple[int, int] | None = None  # read by (y, x) tiles (huge TIFFs), or whole
    volume: bool = False  # each file a (z, y, x) stack, read by slabs of ``slab`` slices
    slab: int = 1
    pad_value: float | None = None  # input.shapes: pad — smaller images padded (bottom, right) with it
    frames: int = 1  # frames (pages) of each file: each frame is one image (see sources/frames.py)
    dtype: str | None = None  # the pixel type the first file stores: every file must store it (scale native)
    scale: Scale = "native"  # native: values on their type's scale; unit: divided by the type's maximum
    gray_from: GrayFrom = "luma"  # color: gray from a JPEG: its luma plane, or RGB mixed by BT.601
    images_per_task: int = 1  # whole images decoded (and computed, and written) together by one task
    # fsspec options for remote files (input.storage_options); handed to every decode task
    storage_options: Mapping[str, Any] = field(default_factory=dict, compare=False)
    array: ArrayInput | None = None  # the inputs are arrays (Zarr, OME-Zarr, .npy), described by the first
    # every array the listing resolved, by entry: the batches' graphs read no array's metadata again
    arrays: Mapping[str, ArrayInput] = field(default_factory=dict, compare=False, repr=False)
    allow_incomplete: bool = False  # read a store of ours that is not complete (input.allow_incomplete)

    @property
    def chunks(self) -> tuple[int, ...]:
        """One image's chunk: the whole image, one tile of it, or one slab of a volume."""
        if self.volume:
            return (min(self.slab, self.shape[0]), *self.shape[1:])
        return self.shape if self.tile is None else (*self.shape[:-2], *self.tile)

    @property
    def whole_only(self) -> bool:
        """Whether every image is one block whatever the memory budget: files that are never read by
        tiles or slabs (TIFFs may be, under another budget; volumes and arrays are)."""
        never_tiled = not split_source(self.reference)[0].lower().endswith(TIFF_SUFFIXES)
        return self.tile is None and not self.volume and self.array is None and never_tiled

    @property
    def axes(self) -> tuple[str, ...]:
        if self.volume:
            return ("image", "z", "y", "x")
        return ("image", "y", "x") if self.color == "gray" else ("image", "c", "y", "x")

    @property
    def depth(self) -> str | None:
        """The pixel type every file must store; None when any may (``scale: unit``)."""
        return self.dtype if self.scale == "native" else None

    @property
    def spatial_ndim(self) -> int:
        return len(self.shape) - (self.color != "gray")


def probe(
    path: str,
    *,
    color: Color = "gray",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    tile: str | int = "auto",
    layout: str = "images",
    storage_options: Mapping[str, Any] | None = None,
    budget: BlockBudget = BlockBudget(),
    recorded_tile: tuple[int, int] | None | Literal["unset"] = "unset",
    scale: Scale = "native",
    allow_incomplete: bool = False,
    gray_from: GrayFrom = "luma",
    arrays: Mapping[str, ArrayInput] | None = None,
) -> ImageSpec:
    """Open one file (header only where the format allows) for the collection's image shape.

    ``path`` is a file or one frame of one (``stack.tif#0``). Tiles and slabs are sized from one
    worker's ``budget``, unless ``recorded_tile`` (what the store a run resumes recorded it read:
    a tile, or None for whole images) fixes the tiles: every task must write whole chunks of that
    store. Slabs need no such record: a volume's store holds one slice per chunk.

    ``arrays``, the arrays the listing resolved (array inputs), are kept in the spec and not read again.
    """
    options = dict(storage_options or {})
    if is_array_entry(split_source(path)[0]):
        return _probe_array(
            path, color=color, tile=tile, layout=layout, options=options, budget=budget,
            recorded_tile=recorded_tile, scale=scale, allow_incomplete=allow_incomplete, arrays=arrays or {},
        )
    if layout == "volume":
        check_size(path, max_pixels, options)
        if color != "gray":
            raise InputError("input.layout: volume reads gray stacks; set input.color: gray")
        if is_remote(path):
            raise InputError(
                f"input.layout: volume reads local TIFF stacks slice by slice; {path!r} is remote — "
                f"copy the stacks to a local disk first", path
            )
        raw = stack_shape(path)
        shape = volume_shape(path, raw)
        slab = slab_depth(
            budget.bytes,
            plane_bytes=budget.itemsize * shape[1] * shape[2],
            halo=budget.reach(3)[0],
        )
        return ImageSpec(
            shape=shape, color=color, reference=path, max_pixels=max_pixels, raw_shape=raw, volume=True, slab=slab,
            dtype=str(stack_dtype(path)), scale=scale,
        )
    file, frame = split_source(path)
    frames = frame_count(file, options)
    raw, stored = declared_header(path, options)
    shape = _converted_shape(path, raw, color)
    if recorded_tile != "unset":
        chosen = None if recorded_tile is None else (int(recorded_tile[0]), int(recorded_tile[1]))
    else:
        chosen = choose_tile(path, tile, shape, budget=budget)
    # Each frame is one image, read on its own: the limits apply to one frame (and memory to whole reads).
    decoding = budget.whole_image(shape) if chosen is None else None
    check_size(path if frames == 1 or frame is not None else f"{file}#0", max_pixels, options, budget=decoding)
    return ImageSpec(
        shape=shape,
        color=color,
        reference=file,
        max_pixels=max_pixels,
        budget=decoding,
        raw_shape=raw,
        tile=chosen,
        storage_options=options,
        frames=frames,
        dtype=str(stored),
        scale=scale,
        gray_from=gray_from,
    )


def _probe_array(
    source: str, *, color: Color, tile: str | int, layout: str, options: dict[str, Any], budget: BlockBudget,
    recorded_tile: tuple[int, int] | None | Literal["unset"], scale: Scale, allow_incomplete: bool,
    arrays: Mapping[str, ArrayInput],
) -> ImageSpec:
    """The spec of an array input: its image shape, and blocks of whole chunks of the array.

    Images are read whole when they fit a worker's budget, else (``tile: auto``) by the largest
    tiles of whole array chunks that fit, or by the tile ``input.tile`` sets, rounded to chunks.
    """
    entry, _ = split_source(source)
    array = arrays.get(entry) or resolve_array(
        entry, volume=layout == "volume", options=options, allow_incomplete=allow_incomplete
    )
    shape = array.image_shape()
    if "c" in array.roles:
        if color == "gray" and shape[0] != 1:
            raise InputError(
                f"array {entry!r} has {shape[0]} channels (axis c); set input.color: keep to read them "
                f"(gray reads arrays of one channel)", entry,
            )
        if color not in ("gray", "keep", "opaque"):
            raise InputError(f"array {entry!r}: input.color {color} applies to image files; use keep or gray", entry)
        if color == "gray":
            shape = shape[1:]
    elif color not in ("gray", "keep", "opaque"):
        raise InputError(f"array {entry!r}: input.color {color} applies to image files; use keep or gray", entry)
    elif color != "gray" and "z" not in array.roles:
        shape = (1, *shape)
    common = dict(
        color=color, reference=entry, raw_shape=array.shape, dtype=array.dtype, scale=scale,
        storage_options=options, array=array, allow_incomplete=allow_incomplete, frames=array.images, arrays=arrays,
    )
    if "z" in array.roles:
        slab = slab_depth(budget.bytes, plane_bytes=budget.itemsize * shape[1] * shape[2], halo=budget.reach(3)[0])
        return ImageSpec(shape=shape, volume=True, slab=min(slab, shape[0]), **common)
    step = array.block_chunks()
    if recorded_tile != "unset":
        chosen = None if recorded_tile is None else (int(recorded_tile[0]), int(recorded_tile[1]))
    elif tile == "whole" or (tile == "auto" and (step == shape[-2:] or fits_whole(shape, budget))):
        chosen = None
    else:
        chosen = budget_tile(tile, shape, budget=budget, step=step)
    if chosen is not None and tuple(chosen) == tuple(shape[-2:]):
        chosen = None
    return ImageSpec(shape=shape, tile=chosen, **common)


def stack_images(
    sources: Sequence[str], spec: ImageSpec, *, dtype: str = "float32", halo: dict[int, int] | None = None,
    start: int = 0, raw: bool = False,
) -> da.Array:
    """A lazy (image, [c], y, x) stack of ``sources``, one chunk and one decode task per image.

    Small images come ``spec.images_per_task`` to a chunk and a task (per image, a task costs
    more than decoding a thumbnail), in groups on the collection's grid of that size: ``sources``
    begin at image ``start`` of it.

    Tasks get absolute paths (a distributed worker may run in another directory), or URLs and
    the storage options: each task opens its own file, whatever process it runs in. Huge TIFFs
    (``spec.tile``) are read by tiles instead, one task per tile, and volumes by slabs. Those can
    also be read with a ``halo`` ({axis: samples}, as dask's ``overlap`` takes it): each chunk then
    holds that much of its neighbours too, read from the file. ``raw`` asks for a volume's slabs in
    the pixel type its files store, where ``dtype`` holds it exactly (``stack_volumes``); other
    sources come in ``dtype`` whatever it says.
    """
    halo = {axis: reach for axis, reach in (halo or {}).items() if reach}
    ndim = 1 + len(spec.shape)
    if spec.array is not None:
        return _array_images(sources, spec, dtype=dtype, halo=halo, start=start)
    if spec.volume:
        _only_along(halo, (1,), "volumes are read with halos along z only")
        return stack_volumes(
            sources, shape=spec.shape, raw_shape=spec.raw_shape, slab=spec.chunks[0], dtype=dtype,
            reference=spec.reference, halo=halo.get(1, 0), depth=spec.depth, scale=spec.scale, raw=raw,
        )
    if spec.tile is not None:
        _only_along(halo, (ndim - 2, ndim - 1), "tiles are read with halos along y and x only")
        return tiled_stack(
            sources, shape=spec.shape, raw_shape=spec.raw_shape, tile=spec.tile,
            color=spec.color, dtype=dtype, reference=spec.reference, frames=spec.frames,
            halo=(halo.get(ndim - 2, 0), halo.get(ndim - 1, 0)), depth=spec.depth, scale=spec.scale,
        )
    _only_along(halo, (), "whole images are read without halos")
    names = np.empty(len(sources), dtype=object)
    names[:] = [absolute(source) for source in sources]
    listed = da.from_array(names, chunks=(_grouped(len(sources), start, spec.images_per_task),), name=False)
    return listed.map_blocks(
        _read_block,
        new_axis=list(range(1, 1 + len(spec.shape))),
        chunks=(listed.chunks[0], *((n,) for n in spec.shape)),
        dtype=dtype,
        meta=np.empty((0,) * (1 + len(spec.shape)), dtype=dtype),
        color=spec.color,
        shape=spec.shape,
        reference=spec.reference,
        out_dtype=dtype,
        max_pixels=spec.max_pixels,
        budget=spec.budget,
        pad_value=spec.pad_value,
        storage_options=dict(spec.storage_options),
        frames=spec.frames,
        depth=spec.depth,
        scale=spec.scale,
        gray_from=spec.gray_from,
    )


def _grouped(count: int, start: int, size: int) -> tuple[int, ...]:
    """``start:start+count`` cut at the multiples of ``size``.

    >>> _grouped(10, 3, 4)
    (1, 4, 4, 1)
    """
    edges = [start, *range((start // size + 1) * size, start + count, size), start + count]
    return tuple(b - a for a, b in zip(edges, edges[1:]) if b > a)


def _array_images(sources: Sequence[str], spec: ImageSpec, *, dtype: str, halo: dict[int, int], start: int) -> da.Array:
    """Array inputs as the stack: gray reads of a one-channel array drop its c axis after reading.

    Whole images come ``spec.images_per_task`` to a task on the collection's grid, as files do.
    """
    array = spec.array
    squeeze = "c" in array.roles and spec.color == "gray"
    added = "c" not in array.roles and "z" not in array.roles and spec.color != "gray"
    shape = (1, *spec.shape) if squeeze else spec.shape[1:] if added else spec.shape
    chunks = spec.chunks
    chunks = (1, *chunks) if squeeze else chunks[1:] if added else chunks
    shift = {axis + (1 if squeeze else -1 if added else 0): reach for axis, reach in halo.items()}
    stack = array_stack(
        sources, array=array, shape=shape, chunks=chunks, dtype=dtype, halo=shift, scale=spec.scale,
        options=spec.storage_options, allow_incomplete=spec.allow_incomplete, arrays=spec.arrays,
        groups=_grouped(len(sources), start, spec.images_per_task),
    )
    if squeeze:
        return stack[:, 0]
    return stack[:, np.newaxis] if added else stack


def _only_along(halo: dict[int, int], axes: tuple[int, ...], message: str) -> None:
    if set(halo) - set(axes):
        raise ValueError(f"{message}; asked for {halo}")


def open_collection(
    paths: str | list[str] | tuple[str, ...], *, color: Color = "gray", dtype: str = "float32"
) -> ImageCollection:
    """List, probe the first file, and stack: axes (image, y, x), or (image, c, y, x) with ``keep``."""
    sources = list_images(paths)
    spec = probe(sources[0], color=color)
    return ImageCollection(array=stack_images(sources, spec, dtype=dtype), sources=tuple(sources), axes=spec.axes)


def fits_inside(small: tuple[int, ...], large: tuple[int, ...]) -> bool:
    """Same channels, and no larger along y or x: an image that padding can bring to ``large``."""
    return len(small) == len(large) and small[:-2] == large[:-2] and all(a <= b for a, b in zip(small, large))


def declared_shape(path: str, color: Color, storage_options: Mapping[str, Any] | None = None) -> tuple[int, ...]:
    """An image's shape after colour handling, from its header (no decoding)."""
    return declared_image(path, color, storage_options)[0]


def declared_image(
    path: str, color: Color, storage_options: Mapping[str, Any] | None = None
) -> tuple[tuple[int, ...], np.dtype]:
    """An image's shape after colour handling and the pixel type it stores, from its header."""
    raw, dtype = declared_header(path, storage_options)
    return _converted_shape(path, raw, color), dtype


def declared_header(source: str, storage_options: Mapping[str, Any] | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """The stored (y, x[, c]) shape and pixel type of one image: a file's first page or frame, or the named one."""
    path, frame = split_source(source)
    if path.lower().endswith(TIFF_SUFFIXES):
        shape, _, dtype = tiff_layout(source, storage_options)
        return shape, dtype
    try:
        with opened(path, storage_options) as file:  # one frame, of animations too
            props = imageio().improps(file, extension=image_suffix(path), index=frame or 0)
            return tuple(props.shape), np.dtype(props.dtype)
    except Exception as exc:  # imageio raises many types for unreadable files
        raise InputError.unreadable(path, exc) from None


def _converted_shape(path: str, raw: tuple[int, ...], color: Color) -> tuple[int, ...]:
    """Shape of the image after colour handling: (y, x) for gray, (c, y, x) for the other modes."""
    if len(raw) == 2 or (len(raw) == 3 and raw[-1] in (1, 2, 3, 4)):
        if color == "gray":
            return raw[:2]
        return (channels_after(color, raw[2] if len(raw) == 3 else 1), *raw[:2])
    raise InputError(
        f"image {path!r} has shape {raw}, which is not a 2-D gray, gray+alpha, RGB or RGBA image", path
    )


def read_image(
    source: str,
    *,
    color: Color = "gray",
    dtype: str = "float32",
    max_pixels: int | None = None,
    budget: ImageBudget | None = None,
    storage_options: Mapping[str, Any] | None = None,
    frames: int | None = None,
    reference: str = "",
    depth: str | None = None,
    scale: Scale = "native",
    gray_from: GrayFrom = "luma",
) -> np.ndarray:
    """Decode one file (or frame) into ``dtype``; colour and scale as ``pixels.convert_pixels`` says.

    ``color: gray`` from a JPEG is, by ``gray_from``, the luma plane the file stores (``luma``:
    the BT.601 luma the encoder computed from the original pixels, rounded to its integers) or its
    decoded RGB mixed by BT.601 (``rgb``; the two differ by 0.1-0.2 grey levels on average, more
    at sharp colour edges, where upsampled chroma is remixed).

    With ``depth``, the file must store that pixel type, as ``reference`` (the first file) does.

    With ``frames``, the file must hold that many frames, as ``reference`` (the first file) does:
    its first image checks the count (counting a GIF's frames reads them all, so not every frame
    does), and a later frame that cannot be read says whether the file holds too few.
    """
    file, frame = split_source(source)
    if frames is not None and not frame:
        check_frames(file, frames, reference, storage_options)
    try:
        pixels, bgr = decode(
            source, max_pixels=max_pixels, budget=budget, storage_options=storage_options,
            luma=color == "gray" and gray_from == "luma",
        )
    except InputError:
        if frames is not None and frame:
            check_frames(file, frames, reference, storage_options)
        raise
    _converted_shape(source, pixels.shape, color)  # rejects shapes we cannot interpret
    check_depth(source, pixels.dtype, depth, reference)
    return convert_pixels(pixels, color=color, dtype=dtype, bgr=bgr, scale=scale)


def _read_block(
    names: np.ndarray,
    *,
    color: Color,
    shape: tuple[int, ...],
    reference: str,
    out_dtype: str,
    max_pixels: int,
    budget: ImageBudget | None,
    pad_value: float | None,
    storage_options: dict[str, Any],
    frames: int,
    depth: str | None,
    scale: Scale,
    gray_from: GrayFrom,
) -> np.ndarray:
    """The block's images, decoded one after the other into one array (one image: no copy)."""
    block: np.ndarray | None = None
    for index, path in enumerate(names):
        image = read_image(
            path, color=color, dtype=out_dtype, max_pixels=max_pixels, budget=budget, storage_options=storage_options,
            frames=frames, reference=reference, depth=depth, scale=scale, gray_from=gray_from,
        )
        if image.shape != shape and pad_value is not None and fits_inside(image.shape, shape):
            extra = [(0, 0)] * (image.ndim - 2) + [(0, n - m) for n, m in zip(shape[-2:], image.shape[-2:])]
            image = np.pad(image, extra, constant_values=pad_value)
        if image.shape != shape:
            raise ShapeMismatch(
                f"image {path!r} has shape {image.shape} but {reference!r}, the first image, has {shape}; "
                f"all images of a collection must have the same size and channels "
                f"(input.shapes: pad pads smaller images to the largest, group writes one result per shape)",
                path,
            )
        if len(names) == 1:
            return image[np.newaxis]
        if block is None:
            block = np.empty((len(names), *shape), dtype=image.dtype)
        block[index] = image
    return block
