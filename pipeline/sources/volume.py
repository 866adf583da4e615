"""Volumes: each multi-page TIFF (a z-stack) is one image of shape (z, y, x), read slab by slab.

A slab of slices is one chunk, as deep as one worker's memory budget allows (``budget.slab_depth``).
A 3-D kernel's halo along z is read from the file with the slab (a halo of h slices costs 2h
slices of reading per slab, not a copy of the neighbouring slabs), so each slab is read, convolved
and written by one task that depends on nothing but the file.
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

import dask.array as da
import numpy as np
import tifffile

from pipeline.errors import InputError
from pipeline.pixels import check_depth, convert_pixels
from pipeline.sources.frames import TIFF_SUFFIXES
from pipeline.sources.tiled import block_regions


def stack_shape(path: str) -> tuple[int, ...]:
    """The (z, y, x[, c]) shape of a TIFF's first series, from its header."""
    if not path.lower().endswith(TIFF_SUFFIXES):
        raise InputError(f"input.layout: volume reads multi-page TIFF stacks; {path!r} is not a TIFF", path)
    try:
        with tifffile.TiffFile(path) as tiff:
            shape = tuple(tiff.series[0].shape)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return shape if len(shape) >= 3 else (1, *shape)


def stack_dtype(path: str) -> np.dtype:
    """The pixel type of a TIFF stack's first series, from its header."""
    try:
        with tifffile.TiffFile(path) as tiff:
            return np.dtype(tiff.series[0].dtype)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None


def volume_shape(path: str, raw: tuple[int, ...]) -> tuple[int, ...]:
    """(z, y, x) after gray conversion; a stack of RGB(A) pages becomes luma."""
    if len(raw) == 3 or (len(raw) == 4 and raw[-1] in (3, 4)):
        return raw[:3]
    raise InputError(f"image {path!r} has shape {raw}, which is not a (z, y, x) stack of gray or RGB pages", path)


def stack_volumes(
    sources: Sequence[str], *, shape: tuple[int, ...], raw_shape: tuple[int, ...], slab: int, dtype: str,
    reference: str, halo: int = 0, depth: str | None = None, scale: str = "native", raw: bool = False,
) -> da.Array:
    """(volume, z, y, x), one chunk per slab of slices, each with ``halo`` slices more on each side.

    ``raw``: slabs in the pixel type the files store (``depth``) when ``dtype`` holds every value of
    it exactly (16-bit integers in float32), for a first step that converts them as it reads them
    (``strategies.correlate_block``); in ``dtype`` otherwise.
    """
    dtype = stored_dtype(raw_shape, depth, scale, dtype) if raw else dtype
    regions = block_regions(shape[0], slab, halo)
    volumes = []
    for source in sources:
        found = stack_shape(source)
        if depth is not None:
            check_depth(source, stack_dtype(source), depth, reference)
        if found != raw_shape:
            raise InputError(
                f"image {source!r} has shape {found} but {reference!r}, the first image, has {raw_shape}; "
                f"all volumes of a collection must have the same size",
                source,
            )
        volumes.append(
            da.map_blocks(
                _read_slab,
                chunks=((1,), tuple(stop - start for start, stop in regions), (shape[1],), (shape[2],)),
                dtype=dtype,
                meta=np.empty((0, 0, 0, 0), dtype=dtype),
                path=os.path.abspath(source),
                out_dtype=dtype,
                plane=tuple(shape[1:]),
                regions=regions,
                scale=scale,
            )
        )
    return da.concatenate(volumes, axis=0)


def stored_dtype(raw_shape: tuple[int, ...], depth: str | None, scale: str, dtype: str) -> str:
    """The type a raw slab is read in: the stored one where it converts to ``dtype`` exactly and as is
    (gray pages on their own scale), ``dtype`` otherwise."""
    if depth is None or scale != "native" or len(raw_shape) != 3:
        return dtype
    stored = np.dtype(depth)
    exact = stored.kind in "uif" and np.can_cast(stored, dtype, casting="safe")
    return stored.str if exact and stored != np.dtype(dtype) else dtype


def _read_slab(
    *, path: str, out_dtype: str, plane: tuple[int, int], regions: list[tuple[int, int]], scale: str,
    block_id: tuple[int, ...],
) -> np.ndarray:
    z0, z1 = regions[block_id[1]]
    slab = np.empty((1, z1 - z0, *plane), dtype=out_dtype)
    try:
        # Converted slice by slice into the slab: the file's raw pixels are held one slice at a time.
        for index, pixels in enumerate(read_slices(path, z0, z1)):
            plain = pixels.ndim == 2 and scale == "native"  # converted as it is copied in, no temporary
            slab[0, index] = pixels if plain else convert_pixels(pixels, color="gray", dtype=out_dtype, scale=scale)
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return slab


def read_slices(path: str, start: int, stop: int) -> Iterator[np.ndarray]:
    """The stored pixels of slices ``start:stop`` of the stack, one at a time.

    Slices stored plainly (uncompressed, in native byte order, one after the other) are mapped from
    the file, so they are converted straight from the page cache; others are decoded page by page.
    """
    try:
        mapped = tifffile.memmap(path, mode="r")
    except ValueError:  # compressed, tiled or scattered pages: tifffile decodes them
        mapped = None
    if mapped is not None:
        stack = mapped if mapped.ndim >= 3 else mapped[np.newaxis]
        for z in range(start, stop):
            yield stack[z]
        return
    with tifffile.TiffFile(path) as tiff:
        pages = tiff.series[0].pages
        for z in range(start, stop):
            yield pages[z].asarray()
