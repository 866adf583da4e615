"""Huge TIFF images read by tiles: each task decodes one region, never the whole image.

A task opens the file, decodes the file tiles (or strips) its region overlaps with tifffile's own
decoder, and converts the region like any image (gray or channels). A convolution's halo is read
with the region, from the file, rather than taken from the neighbouring tasks: tasks then depend on
nothing but the file, each tile is read, convolved and written by one task, and memory stays at
one tile per worker.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import tifffile
import zarr

from pipeline.budget import BlockBudget, tile_shape, working_set
from pipeline.errors import InputError
from pipeline.pixels import check_depth, convert_pixels
from pipeline.sources.frames import TIFF_SUFFIXES, check_frames, split_source
from pipeline.storage import is_remote, opened

# A stripped TIFF has no file tiles to align to: tiles are whole multiples of this instead.
STRIP_TILE_STEP = (256, 256)
# Bytes of file tiles read in one pass (tifffile's default, 256 MiB, would hold a tile's all at once).
READ_AT_ONCE = 4 * 1024 * 1024


def tiff_layout(
    source: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[tuple[int, ...], tuple[int, int] | None, np.dtype]:
    """A page's shape, its tile size (None for strips) and its pixel type, from the header only.

    The first page of a file, or the named one of a frame (``huge.tif#2``).
    """
    path, frame = split_source(source)
    try:
        with opened(path, storage_options) as file, tifffile.TiffFile(file) as tiff:
            page = tiff.pages[frame or 0]
            tile = (page.tilelength, page.tilewidth) if page.is_tiled else None
            return tuple(page.shape), tile, np.dtype(page.dtype)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def choose_tile(path: str, setting: str | int, shape: tuple[int, ...], *, budget: BlockBudget) -> tuple[int, int] | None:
    """The (y, x) tile to read ``path`` (of converted ``shape``, [c,] y, x) by, or None to read it whole.

    ``auto`` reads a TIFF whole when its working set fits one worker's budget, else by the largest
    tiles that fit; a number is a tile size. Either way tiles are whole file tiles, so that no file
    tile is decoded by two tasks except for the halo. Remote files are read whole (one request
    each): tile reads would need a ranged request per tile from every task, which this reader
    does not do.
    """
    if setting == "whole" or (setting == "auto" and is_remote(path)):
        return None
    if is_remote(path):
        raise InputError(
            f"input.tile: {path!r} is remote; only local TIFF files are read by tiles "
            f"(set input.tile: whole or auto, or copy the file to a local disk)",
            path,
        )
    if not split_source(path)[0].lower().endswith(TIFF_SUFFIXES):
        if setting == "auto":
            return None
        raise InputError(
            f"input.tile: {path!r} is not a TIFF; only TIFF files can be read by tiles (set input.tile: whole)",
            path,
        )
    if setting == "auto" and fits_whole(shape, budget):  # whole: no halo
        return None
    _, file_tile, _ = tiff_layout(path)
    return budget_tile(setting, shape, budget=budget, step=file_tile or (STRIP_TILE_STEP if setting == "auto" else (1, 1)))


def fits_whole(shape: tuple[int, ...], budget: BlockBudget) -> bool:
    """An image of ``shape`` ([c,] y, x) read whole (no halo) fits one worker's budget."""
    pixels = math.prod(shape[-2:])
    return working_set(pixels, pixels, budget.itemsize * math.prod(shape[:-2])) <= budget.bytes


def budget_tile(setting: str | int, shape: tuple[int, ...], *, budget: BlockBudget, step: tuple[int, int]) -> tuple[int, int]:
    """The tile of whole ``step``s (file tiles, array chunks): ``auto`` the largest that fits, a number rounded down."""
    if setting == "auto":
        pixel_bytes = budget.itemsize * math.prod(shape[:-2])
        return tile_shape(budget.bytes, pixel_bytes=pixel_bytes, halo=budget.reach(2), step=step)
    return tuple(max(unit, int(setting) // unit * unit) for unit in step)


def tiled_stack(
    sources: Sequence[str], *, shape: tuple[int, ...], raw_shape: tuple[int, ...], tile: tuple[int, int],
    color: str, dtype: str, reference: str, halo: tuple[int, int] = (0, 0), frames: int = 1,
    depth: str | None = None, scale: str = "native",
) -> da.Array:
    """(image, [c], y, x) with chunks of one tile; ``shape`` is the converted shape of each image.

    Each source is a file, or one page of a multi-page file (``huge.tif#2``).

    With a ``halo``, each chunk also holds that many pixels of its neighbours on each side where the
    image has them (the layout of dask's ``overlap`` with ``boundary="none"``), read from the file.
    """
    regions = [block_regions(size, step, reach) for size, step, reach in zip(shape[-2:], tile, halo)]
    lead = shape[:-2]
    chunks = ((1,), *((n,) for n in lead), *(tuple(stop - start for start, stop in axis) for axis in regions))
    images = []
    checked: set[str] = set()
    for source in sources:
        path, frame = split_source(source)
        if path not in checked:  # once per file, not once per page
            check_frames(path, frames, reference)
            checked.add(path)
        found, _, stored = tiff_layout(source)
        check_depth(source, stored, depth, reference)
        if found != raw_shape:
            raise InputError(
                f"image {source!r} has shape {found} but {reference!r}, the first image, has {raw_shape}; "
                f"all images of a collection must have the same size and channels",
                source,
            )
        images.append(
            da.map_blocks(
                _read_tile,
                chunks=chunks,
                dtype=dtype,
                meta=np.empty((0,) * (1 + len(shape)), dtype=dtype),
                path=os.path.abspath(path),
                page=frame or 0,
                color=color,
                out_dtype=dtype,
                regions=regions,
                scale=scale,
            )
        )
    return da.concatenate(images, axis=0)


def block_regions(size: int, step: int, halo: int = 0) -> list[tuple[int, int]]:
    """(start, stop) of each block of ``step`` along an axis of ``size``, widened by ``halo`` inside it."""
    return [(max(0, start - halo), min(size, start + step + halo)) for start in range(0, size, step)]


def _read_tile(
    *, path: str, page: int, color: str, out_dtype: str, regions: list[list[tuple[int, int]]], scale: str,
    block_id: tuple[int, ...],
) -> np.ndarray:
    rows, columns = (axis[index] for axis, index in zip(regions, block_id[-2:]))
    try:
        # Unit scale needs the stored type to divide by: the region is converted after reading.
        pixels = read_region(path, rows, columns, dtype=out_dtype if scale == "native" else None, page=page)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return convert_pixels(pixels, color=color, dtype=out_dtype, scale=scale)[np.newaxis]


def read_region(
    path: str, rows: tuple[int, int], columns: tuple[int, int], *, dtype: str | None = None, page: int = 0
) -> np.ndarray:
    """A page's pixels in ``rows`` x ``columns``, (y, x[, samples]), decoded in this thread.

    Only the file's tiles (or strips) that overlap the region are read and decoded, by tifffile's
    own decoder; a single-sample page is converted to ``dtype`` as it is copied out. (tifffile's
    Zarr view decodes on zarr's one event-loop thread, which serialised every worker's reads.)
    """
    (y0, y1), (x0, x1) = rows, columns
    with tifffile.TiffFile(path) as tiff:
        number, page = page, tiff.pages[page]
        separate, depth, length, width, samples = page.shaped
        if separate != 1 or depth != 1:  # planar or 3-D tiles: rare enough for the Zarr view
            # One page's store (key): a multi-page file's series would add a leading page axis.
            with tifffile.imread(path, aszarr=True, key=number) as store:
                return zarr.open_array(store, mode="r")[y0:y1, x0:x1]
        step_y, step_x = page.chunks[:2]
        across = -(-width // step_x)
        wanted = [ty * across + tx for ty in range(y0 // step_y, -(-y1 // step_y)) for tx in range(x0 // step_x, -(-x1 // step_x))]
        out = np.empty((y1 - y0, x1 - x0, samples), dtype=dtype if dtype and samples == 1 else page.dtype)
        options = {key: value for key, value in (("jpegtables", page.jpegtables), ("jpegheader", page.jpegheader)) if value is not None}
        segments = tiff.filehandle.read_segments(
            [page.dataoffsets[i] for i in wanted], [page.databytecounts[i] for i in wanted], indices=wanted, sort=True,
            buffersize=READ_AT_ONCE,
        )
        for data, index in segments:
            segment, (_, _, top, left, _), _ = page.decode(data, index, _fullsize=True, **options)
            a, b = max(y0, top), min(y1, top + step_y)
            c, d = max(x0, left), min(x1, left + step_x)
            # a tile the file leaves empty reads as zeros, as with tifffile's own reading
            out[a - y0 : b - y0, c - x0 : d - x0] = 0 if segment is None else segment[0, a - top : b - top, c - left : d - left]
    return out[..., 0] if len(page.shape) == 2 else out
