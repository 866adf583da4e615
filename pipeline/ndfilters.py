"""A drop-in for dask-image's ``dask_image.ndfilters.convolve`` and ``correlate``.

Change one import, ``from pipeline import ndfilters`` for ``from dask_image import ndfilters``, and
keep the calls: the signature ``(image, weights, mode="reflect", cval=0.0, origin=0)`` and the
meaning are scipy.ndimage's (``mode`` is the border rule; ``origin`` shifts the kernel), and so are
the results: equal to ``scipy.ndimage.convolve``/``correlate`` on the whole array, dtype included
(an integer image gives integers, rounded and wrapped as scipy does: code that relies on it keeps
working; ``pipeline.convolve`` promotes them instead), and so are the exceptions for bad arguments.
NumPy in, NumPy out; Dask in, a lazy Dask array out, chunked as its input. scipy's keyword-only
``axes`` and its ``output`` (a dtype, or for a NumPy image an array to fill) are taken too.

How. dask-image's recipe (one ``map_overlap`` whose blocks apply the border rule themselves at the
array's edges; ``wrap`` takes its halo from the far side), with a halo on the axes split into
chunks only. A block is computed by the pipeline's engines (OpenCV ``filter2D``/``sepFilter2D``,
separable passes, FFT: ``steps/strategies.py``) when its result is float32 or float64, equal to
scipy's to rounding; by ``scipy.ndimage`` itself wherever only scipy gives scipy's bytes: integer,
boolean, float16 and complex results, non-finite weights, a kernel reaching past a whole axis.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
from dask.array.overlap import ensure_minimum_chunksize
from scipy import ndimage

from pipeline.errors import ArgumentTypeError, KernelError, UnsupportedArgument
from pipeline.steps.strategies import KernelStrategy, choose_engine, choose_strategy, correlate_block

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

__all__ = ["convolve", "correlate"]

# scipy.ndimage's border modes for filters, each with the rule our engines know it by.
MODES = {
    "reflect": "reflect", "grid-mirror": "reflect", "mirror": "mirror", "nearest": "nearest",
    "constant": "constant", "grid-constant": "constant", "wrap": "wrap", "grid-wrap": "wrap",
}
_ENGINE_DTYPES = (np.float32, np.float64)


def convolve(
    image: ArrayLike | da.Array, weights: ArrayLike, mode: str = "reflect", cval: float = 0.0, origin: Any = 0,
    *, axes: Any = None, output: DTypeLike | np.ndarray = None,
) -> np.ndarray | da.Array:
    """Multidimensional convolution, as ``scipy.ndimage.convolve`` and ``dask_image.ndfilters.convolve``.

    Parameters
    ----------
    image : numpy.ndarray or dask.array.Array
        The array to filter, any dtype scipy.ndimage takes.
    weights : array_like
        The kernel, as many dimensions as ``image`` (or as ``axes``).
    mode : {"reflect", "constant", "nearest", "mirror", "wrap", "grid-mirror", "grid-constant", "grid-wrap"}
        What lies beyond the edges (scipy.ndimage's names).
    cval : float
        The value beyond the edges for ``mode="constant"``.
    origin : int or sequence of int
        Shifts the kernel (one per axis, or one for all), within
        ``-(weights.shape[k] // 2) <= origin[k] <= (weights.shape[k] - 1) // 2``.
    axes : int or sequence of int, optional
        The axes filtered (default: all); ``weights`` has one dimension per axis.
    output : dtype or numpy.ndarray, optional
        The result's dtype (default: the image's), or for a NumPy image an array to write into.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The same kind as ``image``, with scipy.ndimage's dtype.

    Raises
    ------
    TypeError
        A non-integer ``origin`` (``pipeline.errors.ArgumentTypeError``).
    RuntimeError
        ``weights`` of another ndim than the image, an ``origin`` of the wrong length, an unknown
        ``mode`` (``pipeline.errors.UnsupportedArgument``, a ValueError too, as dask-image raises).
    ValueError
        An ``origin`` outside the kernel (``pipeline.errors.KernelError``).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from pipeline import ndfilters
    >>> a = np.array([[1, 2, 0, 0], [5, 3, 0, 4], [0, 0, 0, 7], [9, 3, 0, 0]])
    >>> k = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    >>> ndfilters.convolve(a, k, mode="constant", cval=0.0)
    array([[11, 10,  7,  4],
           [10,  3, 11, 11],
           [15, 12, 14,  7],
           [12,  3,  7,  0]])
    >>> lazy = ndfilters.convolve(da.from_array(a, chunks=2), k, mode="constant")
    >>> lazy.chunks, bool((lazy.compute() == ndfilters.convolve(a, k, mode="constant")).all())
    (((2, 2), (2, 2)), True)
    """
    return _filter(image, weights, mode, cval, origin, axes, output, convolution=True)


def correlate(
    image: ArrayLike | da.Array, weights: ArrayLike, mode: str = "reflect", cval: float = 0.0, origin: Any = 0,
    *, axes: Any = None, output: DTypeLike | np.ndarray = None,
) -> np.ndarray | da.Array:
    """Multidimensional correlation, as ``scipy.ndimage.correlate`` and ``dask_image.ndfilters.correlate``.

    The kernel is not flipped (complex weights are conjugated, as scipy does). Parameters, results
    and errors are those of ``convolve``.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import ndfilters
    >>> ndfilters.correlate(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0]))
    array([ 9., 14., 17.])
    >>> ndfilters.correlate(np.array([1, 2, 3]), np.array([1, 1]), origin=-1)
    array([3, 5, 6])
    """
    return _filter(image, weights, mode, cval, origin, axes, output, convolution=False)


@dataclass(frozen=True)
class _Filter:
    """One call's arguments, checked: what every block is computed with."""

    weights: np.ndarray  # as given, one dimension per image axis
    origin: tuple[int, ...]  # as given, one per image axis
    mode: str  # scipy's name, as given
    cval: Any
    convolution: bool
    dtype: np.dtype  # of the result
    plan: KernelStrategy | None  # the engines' plan, or None when scipy computes every block
    reach: tuple[tuple[int, int], ...]  # samples read before and after each output sample, per axis

    def block(self, block: np.ndarray) -> np.ndarray:
        """The filter on one block (with its halo: the rule at its edges then touches only the halo)."""
        # the engines follow scipy where the kernel reaches no further than the block's length
        if self.plan is not None and all(max(reach) < n for reach, n in zip(self.reach, block.shape) if sum(reach)):
            edge = MODES[self.mode]
            cval = float(self.cval) if edge == "constant" else 0.0
            return correlate_block(block.astype(self.dtype, copy=False), self.plan, edge_mode=edge, cval=cval)
        scipy_filter = ndimage.convolve if self.convolution else ndimage.correlate
        return scipy_filter(block, self.weights, output=self.dtype, mode=self.mode, cval=self.cval, origin=list(self.origin))


def _filter(image: Any, weights: Any, mode: Any, cval: Any, origin: Any, axes: Any, output: Any, *, convolution: bool) -> Any:
    lazy = isinstance(image, da.Array)
    if not lazy:
        image = np.asarray(image)
    target = output if isinstance(output, np.ndarray) else None
    if target is not None and lazy:
        raise ArgumentTypeError("output: a Dask image's result is lazy, so it cannot fill an array; give a dtype or None")
    spec = _checked(image, weights, mode, cval, origin, axes, target.dtype if target is not None else output, convolution)
    if not lazy:
        result = spec.block(image)
        if target is None:
            return result
        if target.shape != image.shape:
            raise UnsupportedArgument(f"output has shape {target.shape} but the image has {image.shape}; give an array of the image's shape")
        target[...] = result
        return target
    return _lazy(image, spec)


def _lazy(image: da.Array, spec: _Filter) -> da.Array:
    """dask-image's recipe: one overlapped pass, a halo on the axes split into chunks only."""
    wrap = MODES[spec.mode] == "wrap"
    depth = {}
    for axis, (before, after) in enumerate(spec.reach):
        reach, chunks = max(before, after), image.chunks[axis]
        if reach and len(chunks) > 1:
            # a halo as long as the axis: the axis whole instead (the block sees every neighbour)
            depth[axis] = reach if reach < image.shape[axis] else -1
    whole = {axis: -1 for axis, reach in depth.items() if reach == -1}
    depth = {axis: reach for axis, reach in depth.items() if reach != -1}
    source = image.rechunk(whole) if whole else image
    meta = np.empty((0,) * image.ndim, dtype=spec.dtype)
    if not depth:
        result = source.map_blocks(spec.block, dtype=spec.dtype, meta=meta)
    else:
        # no chunk shorter than its halo: dask's overlap would rechunk by itself otherwise
        source = source.rechunk({axis: ensure_minimum_chunksize(reach, source.chunks[axis]) for axis, reach in depth.items()})
        result = source.map_overlap(
            spec.block, depth=depth, boundary={axis: "periodic" if wrap else "none" for axis in depth},
            trim=True, dtype=spec.dtype, meta=meta,
        )
    return result if result.chunks == image.chunks else result.rechunk(image.chunks)


def _checked(image: Any, weights: Any, mode: Any, cval: Any, origin: Any, axes: Any, output: Any, convolution: bool) -> _Filter:
    """Every argument checked in scipy's and dask-image's order, raising their exception types."""
    weights = np.asarray(weights)
    ndim = image.ndim
    filtered = _axes(axes, ndim)
    shape = [m for m in weights.shape if m > 0]
    if weights.ndim != len(filtered) or len(shape) != len(filtered):
        raise UnsupportedArgument(
            f"weights have shape {weights.shape} but the image has {ndim} axes{'' if axes is None else f' ({len(filtered)} filtered)'}; "
            f"give weights with one non-empty dimension per {'image axis' if axes is None else 'filtered axis'}"
        )
    origins = _origin(origin, weights.shape)
    full = np.expand_dims(weights, tuple(axis for axis in range(ndim) if axis not in filtered))
    every = [0] * ndim
    for axis, value in zip(filtered, origins):
        every[axis] = value
    if not isinstance(mode, str):
        raise UnsupportedArgument(f"mode must be one name for every axis (scipy.ndimage.correlate takes no sequence of modes), one of {', '.join(MODES)}; got {mode!r}")
    if mode not in MODES:
        raise UnsupportedArgument(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not isinstance(cval, numbers.Number) or isinstance(cval, bool):
        raise ArgumentTypeError(f"cval must be a number; got {cval!r}")
    dtype = _result_dtype(image.dtype, weights.dtype, output)
    corr, corr_origin = _correlation_form(full.astype(np.float64) if full.dtype.kind != "c" else full, every, convolution)
    reach = tuple((m // 2 + o, m - 1 - (m // 2 + o)) for m, o in zip(corr.shape, corr_origin))
    plan = None
    engines = (
        dtype.type in _ENGINE_DTYPES and image.dtype.kind in "biuf" and full.dtype.kind in "biuf"
        and np.isfinite(corr).all() and corr.size > 0 and not isinstance(cval, complex)
    )
    if engines:
        edge = MODES[mode]
        plan = choose_strategy(corr, corr_origin, engine=choose_engine(dtype, corr, edge), dtype=dtype)
    return _Filter(full, tuple(every), mode, cval, convolution, dtype, plan, reach)


def _axes(axes: Any, ndim: int) -> tuple[int, ...]:
    """scipy's ``axes``: all by default, else integers in range, each once."""
    if axes is None:
        return tuple(range(ndim))
    values = (axes,) if np.isscalar(axes) else tuple(axes)
    if not all(isinstance(axis, numbers.Integral) and not isinstance(axis, bool) for axis in values):
        raise ArgumentTypeError(f"axes must be an integer or a sequence of integers; got {axes!r}")
    if any(not -ndim <= axis < ndim for axis in values):
        raise KernelError(f"axes {axes!r} are out of range for an image of {ndim} axes")
    values = tuple(int(axis) % ndim for axis in values)
    if len(set(values)) != len(values):
        raise KernelError(f"axes must be unique; got {axes!r}")
    return values


def _origin(origin: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """One integer per kernel axis, inside the kernel; TypeError, RuntimeError, ValueError as dask-image."""
    values = np.asarray(origin)
    if values.dtype.kind not in "iu":
        raise ArgumentTypeError(f"origin must be an integer or integers, one per axis; got {origin!r}")
    if values.ndim == 0:
        values = np.full(len(shape), values)
    if values.ndim != 1 or len(values) != len(shape):
        raise UnsupportedArgument(
            f"origin {origin!r} must be one integer, or one per filtered axis ({len(shape)} for weights of shape {shape})"
        )
    for value, m in zip(values, shape):
        if not -(m // 2) <= value <= (m - 1) // 2:
            raise KernelError(
                f"origin {origin!r} lies outside weights of shape {shape}: origin[k] must lie within "
                f"-(weights.shape[k] // 2) and (weights.shape[k] - 1) // 2"
            )
    return tuple(int(value) for value in values)


def _result_dtype(image: np.dtype, weights: np.dtype, output: Any) -> np.dtype:
    """scipy.ndimage's: the image's dtype, complex when either is (or ``output``'s, made complex then)."""
    complex_result = image.kind == "c" or weights.kind == "c"
    if output is None:
        return np.promote_types(image, np.complex64) if complex_result else np.dtype(image)
    try:
        dtype = np.dtype(output)
    except TypeError:
        raise ArgumentTypeError(f"output must be a dtype or an array; got {output!r}") from None
    if complex_result and dtype.kind != "c":
        raise UnsupportedArgument(f"output dtype {dtype} cannot hold the complex result; give a complex dtype")
    return dtype


def _correlation_form(weights: np.ndarray, origin: list[int], convolution: bool) -> tuple[np.ndarray, tuple[int, ...]]:
    """Weights and origin of the correlation that computes the call (scipy's own transform)."""
    if not convolution:
        return weights, tuple(origin)
    flipped = np.ascontiguousarray(weights[(slice(None, None, -1),) * weights.ndim])
    # scipy.ndimage.convolve mirrors the origin, and shifts even-sized kernels by one sample
    return flipped, tuple(-o - (1 if m % 2 == 0 else 0) for o, m in zip(origin, weights.shape))
