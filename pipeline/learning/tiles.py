"""How one tile of an (input, target) image pair is read, so that the tiles of an image add up to it.

The model predicts the target at the *valid* positions only, the positions whose whole kernel window
lies inside the image. Targets have the input's spatial shape; the target at image position ``q``
belongs to the window of the input centred on ``q`` as in ``scipy.ndimage`` (offset ``a - m // 2``
for window index ``a``). Along an axis of ``N`` samples and a kernel of ``m`` the valid positions are
``m // 2 <= q < N - (m - 1 - m // 2)``.

A tiling of the image into disjoint *own regions* (for instance a Dask chunk grid) then gives each
valid position to exactly one tile. For each own region, :func:`tile_window` says

* ``x`` — which input samples to read: the windows of the valid positions of the region, which is
  the region grown by ``m // 2`` before and ``m - 1 - m // 2`` after, clipped to the image;
* ``valid`` — which positions of the region's target block count, relative to the region.

A caller reads ``x_block = image[(slice(None),) + window.x]`` and ``y_block = target[(slice(None),)
+ own]`` and passes ``valid_region=window.valid``. A region with no valid position (at the border,
or smaller than the kernel) counts nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class TileWindow:
    """Where a tile reads its input (image coordinates) and which of its positions count."""

    x: tuple[slice, ...]
    valid: tuple[slice, ...]


def kernel_extent(kernel_shape: Sequence[int]) -> tuple[int, ...]:
    """The kernel shape as a tuple of positive ints, or ValueError naming the bad value."""
    kernel = tuple(int(m) for m in kernel_shape)
    if not kernel or min(kernel) < 1:
        raise ValueError(f"kernel_shape must be one or more positive sizes, got {tuple(kernel_shape)}")
    return kernel


def tile_window(image_shape: Sequence[int], kernel_shape: Sequence[int], own: Sequence[slice]) -> TileWindow:
    """The input slices to read and the positions to count for the tile that owns ``own``.

    Parameters
    ----------
    image_shape : sequence of int
        The image's spatial shape (no channel axis).
    kernel_shape : sequence of int
        The kernel's shape, one size per spatial axis.
    own : sequence of slice
        The tile's own region of the image, step 1; own regions of all tiles partition the image.

    Returns
    -------
    TileWindow
        ``x``: slices of the image's spatial axes to read; ``valid``: slices of the own region.

    Examples
    --------
    >>> tile_window((10,), (3,), (slice(0, 4),))
    TileWindow(x=(slice(0, 5, None),), valid=(slice(1, 4, None),))
    """
    kernel = kernel_extent(kernel_shape)
    if not len(image_shape) == len(kernel) == len(own):
        raise ValueError(f"image_shape {tuple(image_shape)}, kernel_shape {kernel} and own {tuple(own)} "
                         "must have one entry per spatial axis")
    x, valid = [], []
    for size, m, region in zip(image_shape, kernel, own):
        start, stop, step = region.indices(size)
        if step != 1:
            raise ValueError(f"own regions must be contiguous slices, got {region}")
        before, after = m // 2, m - 1 - m // 2
        first, last = max(start, before), min(stop, size - after)
        if last <= first:
            return TileWindow(x=(slice(0, 0),) * len(kernel), valid=(slice(0, 0),) * len(kernel))
        x.append(slice(first - before, last + after))
        valid.append(slice(first - start, last - start))
    return TileWindow(x=tuple(x), valid=tuple(valid))


def block_pair(
    x_block: np.ndarray, y_block: np.ndarray, kernel: tuple[int, ...], valid_region: Sequence[slice] | None
) -> tuple[np.ndarray, np.ndarray]:
    """``x_block`` and the counted part of ``y_block`` in float64, checked against each other.

    The windows of the counted positions must be exactly ``x_block``: its spatial shape is the counted
    shape plus ``m - 1`` per axis (unchecked when nothing is counted).
    """
    x = np.asarray(x_block, dtype=np.float64)
    y = np.asarray(y_block, dtype=np.float64)
    ndim = len(kernel)
    if x.ndim != ndim + 1 or y.ndim != ndim + 1:
        raise ValueError(f"x_block and y_block must be (channels, *spatial) with {ndim} spatial axes for a "
                         f"{kernel} kernel, got shapes {x.shape} and {y.shape}")
    if valid_region is not None:
        if len(valid_region) != ndim:
            raise ValueError(f"valid_region must have {ndim} slices, got {tuple(valid_region)}")
        y = y[(slice(None), *valid_region)]
    if not x.shape[0] or not y.shape[0]:
        raise ValueError(f"x_block and y_block need at least one channel, got shapes {x.shape} and {y.shape}")
    expected = tuple(v + m - 1 for v, m in zip(y.shape[1:], kernel))
    if min(y.shape[1:]) > 0 and x.shape[1:] != expected:
        raise ValueError(f"x_block's spatial shape {x.shape[1:]} does not hold the windows of the {y.shape[1:]} "
                         f"counted positions of a {kernel} kernel: expected {expected} (see tile_window)")
    return x, y
