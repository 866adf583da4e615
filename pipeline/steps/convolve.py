"""Overlapping-block convolution of Dask arrays: ``same``, ``valid`` ("narrow") and ``full`` ("wide").

The leading axes of the array (image index, channel) are never convolved; the kernel applies to the
trailing ``spatial_ndim`` axes, and a kernel with fewer dimensions than that acts along the last
axes (a 1-D kernel filters rows).

Every mode reduces to one per-block ``scipy.ndimage.correlate`` inside ONE ``map_overlap``:

* true convolution is correlation with the flipped kernel, and for ``same`` with an even-sized kernel
  the origin shifts by one sample exactly as ``scipy.ndimage.convolve`` does, so results agree with it;
* ``valid`` keeps the centred correlation where the kernel lies fully inside, i.e. the ``same`` result
  cropped by the kernel's reach; ``full`` is ``valid`` on the image padded with ``m - 1`` zeros,
  which is the seed's definition (values outside the image are 0), as ``scipy.signal.convolve``.

Dask pads nothing at the outer edge (``boundary="none"``): the block function's own ``mode`` handles
it, except ``wrap``, which needs real neighbours from the far side (dask's ``periodic``).
"""

from __future__ import annotations

from typing import Literal

import dask.array as da
import numpy as np
from scipy import ndimage

from pipeline.errors import KernelError

Mode = Literal["same", "valid", "full"]
Boundary = Literal["reflect", "nearest", "mirror", "wrap", "constant"]
MODES: tuple[str, ...] = ("same", "valid", "full")
BOUNDARIES: tuple[str, ...] = ("reflect", "nearest", "mirror", "wrap", "constant")


def correlate_block(
    block: np.ndarray, weights: np.ndarray, *, edge_mode: str, cval: float, origin: tuple[int, ...]
) -> np.ndarray:
    """Correlate one in-memory block (halo included); the per-block kernel of every mode."""
    return ndimage.correlate(block, weights, mode=edge_mode, cval=cval, origin=list(origin))


def _expand_kernel(weights: np.ndarray, ndim: int, spatial_ndim: int) -> np.ndarray:
    if weights.ndim > spatial_ndim:
        raise KernelError(
            f"kernel has {weights.ndim} dimensions but the images have only {spatial_ndim} "
            f"spatial dimensions; use a kernel with at most {spatial_ndim}"
        )
    return weights.reshape((1,) * (ndim - weights.ndim) + weights.shape)


def _correlation_form(
    weights: np.ndarray, *, correlate: bool, mode: str
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Weights and origin that make ``ndimage.correlate`` compute the requested operation."""
    if correlate:
        return weights, (0,) * weights.ndim
    flipped = np.ascontiguousarray(weights[(slice(None, None, -1),) * weights.ndim])
    if mode != "same":
        return flipped, (0,) * weights.ndim
    # scipy.ndimage.convolve shifts even-sized kernels by one sample; follow it so `same` agrees.
    return flipped, tuple(-1 if m % 2 == 0 else 0 for m in weights.shape)


def convolve(
    array: da.Array,
    weights: np.ndarray,
    *,
    mode: Mode = "same",
    boundary: Boundary = "reflect",
    cval: float = 0.0,
    correlate: bool = False,
    spatial_ndim: int = 2,
) -> da.Array:
    """Convolve (or correlate) the trailing ``spatial_ndim`` axes of a float Dask array.

    Parameters
    ----------
    array : dask.array.Array
        Floating-point data, leading axes (image, channel) first.
    weights : ndarray
        Kernel in convolution orientation, 1 to ``spatial_ndim`` dimensions, any sizes.
    mode : {"same", "valid", "full"}
        Output size: input size, ``n - m + 1`` or ``n + m - 1`` per spatial axis.
    boundary : {"reflect", "nearest", "mirror", "wrap", "constant"}
        Values beyond the edge for ``same`` (scipy.ndimage names); ``valid``/``full`` ignore it.
    cval : float
        Value beyond the edge for ``boundary="constant"``.
    correlate : bool
        Cross-correlate (kernel not flipped), as CNN layers do.
    spatial_ndim : int
        How many trailing axes are spatial.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.array([1.0, 2.0, 3.0]), chunks=2)
    >>> convolve(x, np.array([1.0, 1.0]), mode="full", spatial_ndim=1).compute()
    array([1., 3., 5., 3.])
    """
    if mode not in MODES:
        raise KernelError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if boundary not in BOUNDARIES:
        raise KernelError(f"boundary must be one of {', '.join(BOUNDARIES)}; got {boundary!r}")
    kernel = _expand_kernel(np.asarray(weights, dtype=np.float64), array.ndim, spatial_ndim)
    kernel, origin = _correlation_form(kernel, correlate=correlate, mode=mode)
    if mode == "same":
        return _overlap_correlate(array, kernel, origin, boundary=boundary, cval=cval)

    sizes = array.shape[-spatial_ndim:]
    reach = kernel.shape[-spatial_ndim:]
    if mode == "valid":
        too_big = [(n, m) for n, m in zip(sizes, reach) if m > n]
        if too_big:
            raise KernelError(
                f"kernel of shape {tuple(reach)} is larger than the image {tuple(sizes)} "
                f"for mode 'valid' (which keeps only positions where the kernel fits); "
                f"use mode 'same' or 'full', or a smaller kernel"
            )
    else:  # full: the seed's zeros outside the image
        pad = [(0, 0)] * (array.ndim - spatial_ndim) + [(m - 1, m - 1) for m in reach]
        array = da.pad(array, pad, mode="constant", constant_values=0)
        sizes = array.shape[-spatial_ndim:]
    result = _overlap_correlate(array, kernel, origin, boundary="constant", cval=0.0)
    crop = tuple(slice(m // 2, m // 2 + n - m + 1) for n, m in zip(sizes, reach))
    return result[(Ellipsis, *crop)]


def _overlap_correlate(
    array: da.Array, kernel: np.ndarray, origin: tuple[int, ...], *, boundary: str, cval: float
) -> da.Array:
    # A halo of m//2 on both sides covers every sample the kernel reaches, whatever its parity
    # and origin. An axis shorter than its halo is taken whole instead (kernel larger than image).
    depth = {}
    whole_axes = {}
    for axis, m in enumerate(kernel.shape):
        reach = m // 2
        if reach == 0:
            continue
        if reach >= array.shape[axis]:
            whole_axes[axis] = -1
        else:
            depth[axis] = reach
    if whole_axes:
        array = array.rechunk(whole_axes)
    return array.map_overlap(
        correlate_block,
        depth=depth,
        boundary="periodic" if boundary == "wrap" else "none",
        dtype=array.dtype,
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
        weights=kernel,
        edge_mode=boundary,
        cval=cval,
        origin=origin,
    )
