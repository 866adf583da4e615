"""Resolution levels for viewers: each level halves y and x by averaging 2×2 blocks (area mean).

Averaging is the anti-aliasing filter that matches a halving exactly (what ome-zarr-py's
``local_mean`` does); it runs on the lazy result, so levels are computed in the same pass.
"""

from __future__ import annotations

import dask.array as da
import numpy as np

from pipeline.steps.cast import cast_to


def halve(array: da.Array, dtype: str | np.dtype) -> da.Array:
    """y and x halved by 2×2 means in float64 (an odd last row or column is dropped), cast to ``dtype``.

    An axis already down to one sample stays as it is.
    """
    axes = [axis for axis in (array.ndim - 2, array.ndim - 1) if array.shape[axis] >= 2]
    crop = [slice(None)] * array.ndim
    for axis in axes:
        crop[axis] = slice(0, array.shape[axis] // 2 * 2)
    even = array[tuple(crop)].astype(np.float64)
    # coarsen needs every chunk divisible by 2: keep even chunk sizes along the halved axes.
    even = even.rechunk({axis: _even_chunks(even.chunks[axis]) for axis in axes})
    return cast_to(da.coarsen(np.mean, even, {axis: 2 for axis in axes}), dtype)


def _even_chunks(chunks: tuple[int, ...]) -> tuple[int, ...] | int:
    if all(size % 2 == 0 for size in chunks):
        return chunks
    step = max(2, max(chunks) + max(chunks) % 2)
    return step


def pyramid(array: da.Array, levels: int) -> list[da.Array]:
    """``levels`` arrays: ``array`` and each halving of the previous one, in ``array``'s dtype."""
    result = [array]
    for _ in range(1, levels):
        result.append(halve(result[-1], array.dtype))
    return result
