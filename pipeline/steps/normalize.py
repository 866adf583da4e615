"""Per-image rescaling, the one place values change scale besides the final cast."""

from __future__ import annotations

from typing import Any, Literal

import dask.array as da
import numpy as np

from pipeline.steps.base import ImageShape, Step

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


class NormalizeStep(Step):
    """``normalize``: each image rescaled on its own (every channel together, keeping their balance)."""

    kind = "normalize"
    fusion = "whole"
    unit_range = True

    def __init__(self, how: Normalize) -> None:
        self.how = how

    @property
    def name(self) -> str:
        return f"normalize {self.how}"

    def provenance(self) -> dict[str, Any]:
        return {"step": "normalize", "how": self.how}

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        return (-1.0 if self.how == "max" and low < 0 else 0.0), 1.0

    def block(self, block: np.ndarray, image: ImageShape) -> np.ndarray:
        """Whole images in the block (leading image axis): the same rescaling, in NumPy."""
        axes = tuple(range(block.ndim - len(image.shape), block.ndim))
        if self.how == "minmax":
            low = block.min(axis=axes, keepdims=True)
            span, shifted = block.max(axis=axes, keepdims=True) - low, block - low
        else:
            span, shifted = np.abs(block).max(axis=axes, keepdims=True), block
        return (shifted / np.where(span > 0, span, 1)).astype(block.dtype, copy=False)

    def apply(self, array: da.Array, image: ImageShape) -> da.Array:
        lead = array.ndim - len(image.shape)
        if all(len(chunks) == 1 for chunks in array.chunks[lead:]):  # whole images: one task each
            return array.map_blocks(self.block, image, dtype=array.dtype, meta=np.empty((0,) * array.ndim, dtype=array.dtype))
        return normalize(array, self.how, image_axes=lead)


def build(how: Normalize) -> NormalizeStep:
    return NormalizeStep(how)
