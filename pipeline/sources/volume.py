"""Volumes: each multi-page TIFF (a z-stack) is one image of shape (z, y, x), read slab by slab.

A slab of ``SLAB`` slices is one chunk: a 3-D kernel's halo along z is exchanged between slabs by
map_overlap (a halo of h slices costs 2h/SLAB extra work, not 2h per slice), and memory stays at a
few slabs per worker, whatever the depth of the stack.
"""

from __future__ import annotations

import os
from typing import Sequence

import dask.array as da
import numpy as np
import tifffile

from pipeline.errors import InputError
from pipeline.sources.frames import TIFF_SUFFIXES
SLAB = 16


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


def volume_shape(path: str, raw: tuple[int, ...]) -> tuple[int, ...]:
    """(z, y, x) after gray conversion; a stack of RGB(A) pages becomes luma."""
    if len(raw) == 3 or (len(raw) == 4 and raw[-1] in (3, 4)):
        return raw[:3]
    raise InputError(f"image {path!r} has shape {raw}, which is not a (z, y, x) stack of gray or RGB pages", path)


def stack_volumes(sources: Sequence[str], *, shape: tuple[int, ...], raw_shape: tuple[int, ...], dtype: str, reference: str) -> da.Array:
    """(volume, z, y, x), one chunk per slab of slices."""
    volumes = []
    for source in sources:
        found = stack_shape(source)
        if found != raw_shape:
            raise InputError(
                f"image {source!r} has shape {found} but {reference!r}, the first image, has {raw_shape}; "
                f"all volumes of a collection must have the same size",
                source,
            )
        volumes.append(
            da.map_blocks(
                _read_slab,
                chunks=((1,), slabs(shape[0]), (shape[1],), (shape[2],)),
                dtype=dtype,
                meta=np.empty((0, 0, 0, 0), dtype=dtype),
                path=os.path.abspath(source),
                out_dtype=dtype,
            )
        )
    return da.concatenate(volumes, axis=0)


def slabs(depth: int) -> tuple[int, ...]:
    return tuple(min(SLAB, depth - start) for start in range(0, depth, SLAB))


def _read_slab(*, path: str, out_dtype: str, block_info: dict | None = None) -> np.ndarray:
    from pipeline.sources.images import convert_pixels

    z0, z1 = block_info[None]["array-location"][1]
    try:
        pages = [tifffile.imread(path, key=z) for z in range(z0, z1)]
    except Exception as exc:
        raise InputError.unreadable(path, exc) from None
    return np.stack([convert_pixels(page, color="gray", dtype=out_dtype) for page in pages])[np.newaxis]
