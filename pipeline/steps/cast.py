"""The final cast to the output dtype: integers are rounded and clipped, never wrapped."""

from __future__ import annotations

import dask.array as da
import numpy as np


def cast_block(block: np.ndarray, *, out_dtype: np.dtype, scale: float) -> np.ndarray:
    if scale != 1.0:
        block = block * scale
    if out_dtype.kind in "ui":
        info = np.iinfo(out_dtype)
        if out_dtype.itemsize >= block.dtype.itemsize:
            # float32 cannot hold 2**31 - 1: it would round the bound up and astype would wrap.
            block = block.astype(np.float64)
        return np.clip(np.rint(block), info.min, info.max).astype(out_dtype)
    return block.astype(out_dtype, copy=False)


def cast_to(array: da.Array, dtype: str | np.dtype, *, scale: float = 1.0) -> da.Array:
    """Cast to ``dtype``, multiplying by ``scale`` first (used to map a normalised [0, 1] range).

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> cast_to(da.from_array(np.array([-3.0, 7.6, 300.0])), "uint8").compute()
    array([  0,   8, 255], dtype=uint8)
    """
    dtype = np.dtype(dtype)
    if array.dtype == dtype and scale == 1.0:
        return array
    return array.map_blocks(
        cast_block,
        dtype=dtype,
        meta=np.empty((0,) * array.ndim, dtype=dtype),
        out_dtype=dtype,
        scale=scale,
    )
