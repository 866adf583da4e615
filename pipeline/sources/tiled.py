"""Huge TIFF images read by tiles: each task decodes one region, never the whole image.

tifffile exposes a TIFF's tiles (or strips) as a Zarr store; a task opens it, reads its region and
converts it like any image (gray or channels). The convolution then exchanges halos between tiles
and the store is written tile by tile, so memory stays at a few tiles per worker.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import tifffile
import zarr

from pipeline.errors import InputError
from pipeline.sources.frames import TIFF_SUFFIXES, check_frames, split_source
from pipeline.storage import is_remote, opened

# `tile: auto` reads a TIFF by tiles once it holds more pixels than this (16 MPix: 64 MiB as float32).
AUTO_TILE_ABOVE = 4096 * 4096
AUTO_TILE = 2048


def tiff_layout(
    source: str, storage_options: Mapping[str, Any] | None = None
) -> tuple[tuple[int, ...], tuple[int, int] | None]:
    """A page's shape and its tile size (None for strips), from the header only.

    The first page of a file, or the named one of a frame (``huge.tif#2``).
    """
    path, frame = split_source(source)
    try:
        with opened(path, storage_options) as file, tifffile.TiffFile(file) as tiff:
            page = tiff.pages[frame or 0]
            tile = (page.tilelength, page.tilewidth) if page.is_tiled else None
            return tuple(page.shape), tile
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def choose_tile(path: str, setting: str | int, raw_shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The (y, x) tile to read ``path`` by, or None to read it whole.

    Remote files are read whole (one request each): tile reads would need a ranged request per
    tile from every task, which this reader does not do.
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
    if setting == "auto" and math.prod(raw_shape[:2]) <= AUTO_TILE_ABOVE:
        return None
    size = AUTO_TILE if setting == "auto" else int(setting)
    _, file_tile = tiff_layout(path)
    if file_tile is None:
        return size, size
    # Whole file tiles per task, so that no tile is decoded twice.
    return tuple(max(step, size // step * step) for step in file_tile)


def tiled_stack(
    sources: Sequence[str], *, shape: tuple[int, ...], raw_shape: tuple[int, ...], tile: tuple[int, int],
    color: str, dtype: str, reference: str, frames: int = 1,
) -> da.Array:
    """(image, [c], y, x) with chunks of one tile; ``shape`` is the converted shape of each image.

    Each source is a file, or one page of a multi-page file (``huge.tif#2``).
    """
    images = []
    for source in sources:
        path, frame = split_source(source)
        check_frames(path, frames, reference)
        found, _ = tiff_layout(source)
        if found != raw_shape:
            raise InputError(
                f"image {source!r} has shape {found} but {reference!r}, the first image, has {raw_shape}; "
                f"all images of a collection must have the same size and channels",
                source,
            )
        lead = shape[:-2]
        chunks = (*((n,) for n in lead), _split(shape[-2], tile[0]), _split(shape[-1], tile[1]))
        images.append(
            da.map_blocks(
                _read_tile,
                chunks=((1,), *chunks),
                dtype=dtype,
                meta=np.empty((0,) * (1 + len(shape)), dtype=dtype),
                path=os.path.abspath(path),
                page=frame or 0,
                color=color,
                out_dtype=dtype,
            )
        )
    return da.concatenate(images, axis=0)


def _split(size: int, step: int) -> tuple[int, ...]:
    return tuple(min(step, size - start) for start in range(0, size, step))


def _read_tile(*, path: str, page: int, color: str, out_dtype: str, block_info: dict | None = None) -> np.ndarray:
    from pipeline.sources.images import convert_pixels

    (y0, y1), (x0, x1) = block_info[None]["array-location"][-2:]
    try:
        # One page's store (key): a multi-page file's series would add a leading page axis.
        with tifffile.imread(path, aszarr=True, key=page) as store:
            pixels = zarr.open_array(store, mode="r")[y0:y1, x0:x1]
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return convert_pixels(pixels, color=color, dtype=out_dtype)[np.newaxis]
