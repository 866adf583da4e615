"""Per-image rescaling, the one place values change scale besides the final cast."""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np

Normalize = Literal["minmax", "max"]


def normalize(array: da.Array, how: Normalize, *, image_axes: int = 1) -> da.Array:
    """Rescale each image on its own: ``minmax`` maps [min, max] to [0, 1]; ``max`` divides by max |x|.

    The first ``image_axes`` axes index images; every other axis (channel, y, x) is reduced over.
    A constant image becomes all zeros rather than NaN.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.array([[2.0, 4.0], [5.0, 5.0]]), chunks=1)
    >>> normalize(x, "minmax").compute()
    array([[0., 1.],
           [0., 0.]])
    """
    axes = tuple(range(image_axes, array.ndim))
    if how == "minmax":
        low = array.min(axis=axes, keepdims=True)
        span = array.max(axis=axes, keepdims=True) - low
        shifted = array - low
    elif how == "max":
        span = abs(array).max(axis=axes, keepdims=True)
        shifted = array
    else:
        raise ValueError(f"normalize must be 'minmax' or 'max', got {how!r}")
    safe = da.where(span > 0, span, 1)
    return (shifted / safe).astype(array.dtype, copy=False)


def unit_range_to(dtype: np.dtype) -> float:
    """Scale that maps a [0, 1] result onto an integer type's full range (1 for floats)."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
