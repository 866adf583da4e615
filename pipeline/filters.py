"""The steps of a job as functions of arrays: ``convolve``, ``correlate``, ``layer``, ``activation``,
``pool`` and ``kernel``.

Each takes a NumPy or a Dask array of any number of axes and returns the same kind: NumPy in, NumPy
out (computed at once, in the calling thread); Dask in, a lazy Dask array out, chunked as its input
(``valid``, ``full``, strides and pools change sizes: those chunks are dask's). They are thin: each
builds the very step a job file's mapping builds (``pipeline/steps/``) and runs it through the same
chain (``steps/chain.py``), so a function here and a job give the same values. Options are
keyword-only and carry the job file's names and meanings.

Types. Floats keep their type (float16 is computed in float32); booleans and integers are
promoted, never wrapped: up to 16 bits to float32 (which holds every such value exactly), 32 and 64
bits to float64, as a job's compute dtype. Complex arrays are refused. For scipy.ndimage's
signature and dtype rules (an integer image gives integers), use ``pipeline.ndfilters``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import dask.array as da
import numpy as np

from pipeline.errors import ArgumentTypeError, KernelError, PipelineError, UnsupportedArgument
from pipeline.steps.activation import FUNCTIONS as ACTIVATIONS, Activation, ActivationStep
from pipeline.steps.bank import BANK_STRATEGIES
from pipeline.steps.base import ImageShape, Step
from pipeline.steps.chain import chain
from pipeline.steps.convolve import BOUNDARIES, MODES, Convolution, ConvolveStep
from pipeline.steps.kernels import build_kernel, check_matrix
from pipeline.steps.layer import LayerStep
from pipeline.steps.pool import FUNCTIONS as POOLS, Pool, PoolStep
from pipeline.steps.strategies import STRATEGIES

if TYPE_CHECKING:
    from numpy.typing import ArrayLike, DTypeLike

__all__ = ["activation", "convolve", "correlate", "kernel", "layer", "pool"]

# scipy.ndimage's names for what the job file calls `boundary`: a `mode` among them is a mix-up.
_NDIMAGE_MODES = (*BOUNDARIES, "grid-mirror", "grid-wrap", "grid-constant")
# The parameters each activation takes, in the job file's names.
_ACTIVATION_PARAMS = {"leaky_relu": ("slope",), "clip": ("min", "max")}


def kernel(name: str, **params: Any) -> np.ndarray:
    """A built-in kernel (or a kernel file) as a float64 NumPy array, in convolution orientation.

    Parameters
    ----------
    name : str
        A built-in name (``identity``, ``box``, ``blur``, ``gaussian``, ``edge``, ``laplacian``,
        ``sobel_x``, ``sobel_y``, ``prewitt_x``, ``prewitt_y``, ``sharpen``, ``emboss``) or the path
        of a ``.npy``, ``.csv`` or ``.txt`` file.
    **params
        The built-in's parameters, as in a job file's ``params:`` (``sigma``, ``truncate``,
        ``size``, ``ndim``).

    Returns
    -------
    numpy.ndarray
        The kernel, 1 to 3 dimensions.

    Examples
    --------
    >>> from pipeline import kernel
    >>> kernel("laplacian")
    array([[ 0.,  1.,  0.],
           [ 1., -4.,  1.],
           [ 0.,  1.,  0.]])
    >>> kernel("gaussian", sigma=1.0, ndim=1).round(3)
    array([0.   , 0.004, 0.054, 0.242, 0.399, 0.242, 0.054, 0.004, 0.   ])
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"kernel name must be a string (a built-in name or a file path); got {type(name).__name__}")
    return build_kernel(name, params).weights


def convolve(
    x: ArrayLike | da.Array, kernel: ArrayLike | str, *, mode: str = "same", boundary: str = "reflect",
    cval: float = 0.0, correlate: bool = False, strategy: str = "auto",
) -> np.ndarray | da.Array:
    """Convolve the last axes of ``x`` with ``kernel``: the job file's ``convolve`` step on an array.

    A kernel of ``k`` dimensions filters the last ``k`` axes of ``x``; every axis before them is a
    batch axis (images, channels), filtered on its own. On vectors, ``mode="full"`` and
    ``mode="valid"`` are ``numpy.convolve``'s wide and narrow convolutions; in any dimension they equal
    ``scipy.signal.convolve``, and ``same`` equals ``scipy.ndimage.convolve`` with
    ``mode=boundary``.

    Parameters
    ----------
    x : numpy.ndarray or dask.array.Array
        The data, at least as many axes as the kernel. Integers and booleans are computed as
        float32 (up to 16 bits) or float64; floats keep their type.
    kernel : array_like or str
        The kernel, 1 to 3 dimensions, in convolution orientation; or a built-in's name or a
        kernel file (see ``kernel``).
    mode : {"same", "valid", "full"}
        The size of the result along each filtered axis: ``n``, ``n - m + 1`` or ``n + m - 1``.
    boundary : {"reflect", "nearest", "mirror", "wrap", "constant"}
        What lies beyond the edges for ``same`` (scipy.ndimage's names); ``valid`` needs nothing
        beyond them and ``full`` sees zeros there.
    cval : float
        The value beyond the edges for ``boundary="constant"``.
    correlate : bool
        Cross-correlate (the kernel is not flipped), as CNN layers do.
    strategy : {"auto", "direct", "separable", "fft"}
        How blocks are computed (never what): ``auto`` picks the cheapest for the kernel.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The same kind as ``x``; lazy for Dask, chunked as ``x`` for ``same``.

    Raises
    ------
    pipeline.errors.KernelError
        For a bad kernel or option (a ValueError; ``exit_code`` 2, as the CLI).

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import convolve
    >>> convolve(np.array([1.0, 2.0, 3.0]), [0.0, 1.0, 0.5], mode="full")
    array([0. , 1. , 2.5, 4. , 1.5])
    >>> convolve(np.array([1.0, 2.0, 3.0]), [0.0, 1.0, 0.5], mode="valid")
    array([2.5])

    Integers are promoted, never wrapped:

    >>> convolve(np.full((3, 3), 200, dtype=np.uint8), np.ones((3, 3)))
    array([[1800., 1800., 1800.],
           [1800., 1800., 1800.],
           [1800., 1800., 1800.]], dtype=float32)

    A Dask array gives a lazy result with its chunks:

    >>> import dask.array as da
    >>> images = da.ones((4, 64, 64), chunks=(1, 32, 32))
    >>> blurred = convolve(images, "gaussian", boundary="nearest")
    >>> blurred.chunksize, round(float(blurred.max().compute()), 6)
    ((1, 32, 32), 1.0)
    """
    with _in_words("convolve"):
        array, lazy = _as_dask(x)
        weights = _kernel_weights(kernel)
        _check_choice("mode", mode, MODES, hint=_mode_hint(mode))
        _check_choice("boundary", boundary, BOUNDARIES)
        _check_choice("strategy", strategy, ("auto", *STRATEGIES))
        if not isinstance(correlate, (bool, np.bool_)):
            raise ArgumentTypeError(f"correlate must be True or False; got {correlate!r}")
        if weights.ndim > array.ndim:
            raise UnsupportedArgument(
                f"kernel has {weights.ndim} dimensions but x has only {array.ndim}; give a kernel with at most "
                f"{array.ndim} (it filters the last axes of x)"
            )
        step = ConvolveStep(Convolution(weights, mode=mode, boundary=boundary, cval=_real(cval, "cval"),
                                        correlate=bool(correlate), strategy=strategy))
        spatial = weights.ndim
        image = ImageShape(tuple(array.shape[-spatial:]), ("z", "y", "x")[-spatial:])
        step.check(image)
        if 0 in image.shape:  # nothing to filter: scipy.ndimage returns the empty array, numpy.convolve refuses
            if mode != "same":
                raise UnsupportedArgument(f"x has shape {tuple(array.shape)}, no samples to filter; mode {mode!r} needs at least one")
            return _returned(array, lazy)
        result = _run(array, [step], image)
        if mode == "same" and result.chunks != array.chunks:  # chunks smaller than the halo were widened
            result = result.rechunk(array.chunks)
    return _returned(result, lazy)


def correlate(
    x: ArrayLike | da.Array, kernel: ArrayLike | str, *, mode: str = "same", boundary: str = "reflect",
    cval: float = 0.0, strategy: str = "auto",
) -> np.ndarray | da.Array:
    """Cross-correlate the last axes of ``x`` with ``kernel``: ``convolve(..., correlate=True)``.

    The kernel slides over ``x`` unflipped, as in CNN layers; ``same`` equals
    ``scipy.ndimage.correlate`` with ``mode=boundary``, ``valid``/``full`` equal
    ``scipy.signal.correlate``. Parameters, types and results are those of ``convolve``.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import correlate
    >>> correlate(np.array([1.0, 2.0, 3.0]), [0.0, 1.0, 0.5], mode="full")
    array([0.5, 2. , 3.5, 3. , 0. ])
    >>> correlate(np.arange(5.0), [-1.0, 0.0, 1.0], boundary="nearest")
    array([1., 2., 2., 2., 1.])
    """
    return convolve(x, kernel, mode=mode, boundary=boundary, cval=cval, correlate=True, strategy=strategy)


def layer(
    x: ArrayLike | da.Array, weights: ArrayLike, bias: ArrayLike | None = None, *, mode: str = "same",
    boundary: str = "reflect", cval: float = 0.0, stride: int | Sequence[int] = 1, correlate: bool = True,
    strategy: str = "auto",
) -> np.ndarray | da.Array:
    """A convolution layer: a bank of K kernels over C channels into K channels, plus a bias.

    The job file's ``layer`` step, with PyTorch's layout and meaning: weights ``(K, C, kh, kw)``
    (``Conv2d.weight``; ``(K, C, kd, kh, kw)`` for volumes, ``(K, kh, kw)`` for gray images),
    cross-correlated, ``bias[k]`` added to output channel ``k``, every ``stride``-th output kept.

    Parameters
    ----------
    x : numpy.ndarray or dask.array.Array
        ``(C, y, x)`` or a batch ``(N, C, y, x)`` (``(C, z, y, x)`` or ``(N, C, z, y, x)`` for
        volumes); for ``(K, kh, kw)`` weights, gray ``(y, x)`` or ``(N, y, x)``.
    weights : array_like
        ``(K, C, *kernel)``, or ``(K, kh, kw)`` for gray images.
    bias : array_like, optional
        One value per output channel, ``(K,)``.
    mode, boundary, cval
        As for ``convolve``: ``same`` keeps y and x, ``valid`` is PyTorch's ``padding=0``.
    stride : int or sequence of int
        Keep every ``stride``-th output (a number, or one per spatial axis).
    correlate : bool
        Cross-correlate, as PyTorch does (default); ``False`` flips the kernels.
    strategy : {"auto", "direct", "gemm", "fft"}
        How the bank is computed; ``auto`` picks the cheapest by the cost model.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        ``(K, y', x')`` or ``(N, K, y', x')``, of ``x``'s kind; floats keep their type, integers
        are promoted as for ``convolve``.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import layer
    >>> image = np.arange(16.0).reshape(1, 4, 4)           # (C, y, x)
    >>> weights = np.ones((2, 1, 2, 2)) * [[[[1.0]]], [[[-1.0]]]]
    >>> layer(image, weights, bias=[0.0, 100.0], mode="valid", stride=2)
    array([[[10., 18.],
            [42., 50.]],
    <BLANKLINE>
           [[90., 82.],
            [58., 50.]]])
    """
    with _in_words("layer"):
        array, lazy = _as_dask(x)
        bank = check_matrix(weights, what="layer weights", max_ndim=5)
        gray = bank.ndim == 3
        if gray:
            bank = bank[:, np.newaxis]
        if bank.ndim not in (4, 5):
            raise UnsupportedArgument(
                f"layer weights have shape {list(bank.shape)}; give (K, C, kh, kw), (K, kh, kw) for gray images, "
                f"or (K, C, kd, kh, kw) for volumes"
            )
        spatial = bank.ndim - 2
        if gray:
            array = array[(Ellipsis, np.newaxis, *(slice(None),) * spatial)] if array.ndim >= spatial else array
        offsets = _bias(bias, bank.shape[0])
        _check_choice("mode", mode, MODES, hint=_mode_hint(mode))
        _check_choice("boundary", boundary, BOUNDARIES)
        _check_choice("strategy", strategy, ("auto", *BANK_STRATEGIES))
        expected = "(y, x) or (N, y, x)" if gray else ("(C, y, x) or (N, C, y, x)" if spatial == 2 else "(C, z, y, x) or (N, C, z, y, x)")
        if array.ndim not in (spatial + 1, spatial + 2):
            raise UnsupportedArgument(f"layer: x has shape {tuple(np.shape(x))}; with weights of shape {list(np.shape(weights))} give {expected}")
        channels = array.shape[-spatial - 1]
        if channels != bank.shape[1]:
            raise UnsupportedArgument(
                f"layer: x has {channels} channels (axis {array.ndim - spatial - 1} of shape {tuple(np.shape(x))}) but the "
                f"weights {list(bank.shape)} take {bank.shape[1]}; give weights of shape "
                f"[{bank.shape[0]}, {channels}, {', '.join(map(str, bank.shape[2:]))}]"
            )
        step = LayerStep(bank, offsets, source="array", mode=mode, boundary=boundary, cval=_real(cval, "cval"),
                         correlate=bool(correlate), stride=_stride(stride, spatial), strategy=strategy)
        image = ImageShape(tuple(array.shape[-spatial - 1:]), ("c", *("z", "y", "x")[-spatial:]))
        step.check(image)
        result = _run(array, [step], image)
    return _returned(result, lazy)


def activation(x: ArrayLike | da.Array, function: str, **params: float) -> np.ndarray | da.Array:
    """A pointwise non-linearity, as the job file's ``activation`` step.

    Parameters
    ----------
    x : numpy.ndarray or dask.array.Array
        Any shape; integers are promoted as for ``convolve``. ``x`` itself is never modified.
    function : {"relu", "leaky_relu", "tanh", "sigmoid", "abs", "clip"}
        The function.
    **params
        ``slope`` for ``leaky_relu`` (default 0.01); ``min`` and/or ``max`` for ``clip``.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Of ``x``'s shape and kind, chunked as ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import activation
    >>> x = np.array([-2.0, -0.5, 0.0, 3.0])
    >>> activation(x, "relu")
    array([0., 0., 0., 3.])
    >>> activation(x, "leaky_relu", slope=0.1)
    array([-0.2 , -0.05,  0.  ,  3.  ])
    >>> activation(x, "clip", min=-1.0, max=1.0)
    array([-1. , -0.5,  0. ,  1. ])
    """
    with _in_words("activation"):
        array, lazy = _as_dask(x)
        _check_choice("function", function, ACTIVATIONS)
        takes = _ACTIVATION_PARAMS.get(function, ())
        unknown = sorted(set(params) - set(takes))
        if unknown:
            takes_text = f"takes {', '.join(takes)}" if takes else "takes no parameters"
            raise KernelError(f"activation {function!r} {takes_text}; got {', '.join(unknown)}")
        values = {name: _real(value, name) for name, value in params.items()}
        step = ActivationStep(Activation(function, slope=values.get("slope", 0.01), low=values.get("min"), high=values.get("max")))
        # Activation works in place on a writeable float block; a block of the caller's array is read-only here.
        result = array.map_blocks(_read_only_then(step.activation.apply), dtype=array.dtype, meta=np.empty((0,) * array.ndim, array.dtype))
    return _returned(result, lazy)


def pool(
    x: ArrayLike | da.Array, function: str = "max", *, size: int | Sequence[int] = 2,
    stride: int | Sequence[int] | None = None, padding: str = "valid",
) -> np.ndarray | da.Array:
    """Pool the last two axes (y, x) of ``x``, as the job file's ``pool`` step.

    Windows of ``size`` start every ``stride`` samples from the origin (default: ``size``, windows
    side by side, as PyTorch's ``MaxPool2d(k)``).

    Parameters
    ----------
    x : numpy.ndarray or dask.array.Array
        At least two axes; the ones before y and x are pooled each on its own. Integers are
        promoted as for ``convolve``.
    function : {"max", "mean", "min", "l2"}
        How each window is reduced.
    size : int or (int, int)
        The window, a number or ``(y, x)``.
    stride : int or (int, int), optional
        The step between windows; defaults to ``size``.
    padding : {"valid", "same"}
        ``valid`` keeps whole windows only (the ragged edge dropped, as PyTorch); ``same`` keeps
        ``ceil(n / stride)`` outputs, the windows at the edge reduced over the samples they hold.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Of ``x``'s kind, y and x divided.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline import pool
    >>> x = np.arange(16.0).reshape(4, 4)
    >>> pool(x, "max")
    array([[ 5.,  7.],
           [13., 15.]])
    >>> pool(x[:3, :3], "mean", padding="same")
    array([[ 2.5,  4. ],
           [ 8.5, 10. ]])
    """
    with _in_words("pool"):
        array, lazy = _as_dask(x)
        _check_choice("function", function, POOLS)
        _check_choice("padding", padding, ("valid", "same"))
        if array.ndim < 2:
            raise UnsupportedArgument(f"pool: x has shape {tuple(array.shape)}; it pools y and x, the last two axes, so it needs at least 2")
        window = _stride(size, 2, what="size")
        step = PoolStep(Pool(function, window, window if stride is None else _stride(stride, 2), padding))
        image = ImageShape(tuple(array.shape[-2:]), ("y", "x"))
        step.check(image)
        result = _run(array, [step], image)
    return _returned(result, lazy)


# --- shared ---------------------------------------------------------------------------------------


def compute_dtype(dtype: DTypeLike) -> np.dtype:
    """The float type an array of ``dtype`` is computed in (see the module docstring), or a refusal.

    >>> compute_dtype("uint8"), compute_dtype("int32"), compute_dtype("float32")
    (dtype('float32'), dtype('float64'), dtype('float32'))
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "biu":
        return np.dtype(np.float32 if dtype.itemsize <= 2 else np.float64)
    if dtype.kind == "f" and dtype.itemsize <= 8:
        return np.dtype(np.float32 if dtype.itemsize < 4 else dtype)
    if dtype.kind == "c":
        raise ArgumentTypeError(
            f"x has dtype {dtype}: complex arrays are not supported; filter x.real and x.imag apart (or use "
            f"pipeline.ndfilters, which follows scipy.ndimage)"
        )
    raise ArgumentTypeError(f"x has dtype {dtype}; give numbers (integers, booleans, float16/32/64)")


def _as_dask(x: Any) -> tuple[da.Array, bool]:
    """``x`` as a Dask array in its compute dtype, and whether it was one (the result stays lazy)."""
    if isinstance(x, da.Array):
        array, lazy = x, True
    else:
        if isinstance(x, (str, bytes)) or x is None:
            raise ArgumentTypeError(f"x must be a NumPy or Dask array; got {type(x).__name__}")
        values = np.asarray(x)
        compute_dtype(values.dtype)  # refuse before wrapping
        # one chunk, no hashing of the data for the task's name: computed at once below
        array, lazy = da.from_array(values, chunks=values.shape or (), name=False), False
    if array.ndim == 0:
        raise UnsupportedArgument("x is a scalar; give an array of at least one axis")
    dtype = compute_dtype(array.dtype)
    return (array if array.dtype == dtype else array.astype(dtype)), lazy


def _returned(result: da.Array, lazy: bool) -> np.ndarray | da.Array:
    return result if lazy else np.asarray(result.compute(scheduler="synchronous"))


def _run(array: da.Array, steps: Sequence[Step], image: ImageShape) -> da.Array:
    """The steps on an array whose last axes hold one ``image``: the first axis before them is the
    images, any others are channel-like axes filtered each on its own (as ``chain`` wants them)."""
    lead = array.ndim - len(image.shape)
    if lead == 0:
        return chain(array[np.newaxis], steps, image=image).array[0]
    if lead > 1:
        image = ImageShape(tuple(array.shape[1:]), (*(f"c{i}" for i in range(lead - 1)), *image.axes))
    return chain(array, steps, image=image).array


def _kernel_weights(kernel: Any) -> np.ndarray:
    if isinstance(kernel, str):
        return build_kernel(kernel).weights
    if isinstance(kernel, da.Array):
        kernel = kernel.compute()
    if not isinstance(kernel, (np.ndarray, list, tuple)):
        raise ArgumentTypeError(f"kernel must be an array, nested lists of numbers, or a built-in kernel's name; got {type(kernel).__name__}")
    return check_matrix(kernel, what="kernel")


def _bias(bias: Any, out_channels: int) -> np.ndarray | None:
    if bias is None:
        return None
    values = check_matrix(bias, what="layer bias", max_ndim=1)
    if values.shape != (out_channels,):
        raise UnsupportedArgument(
            f"layer bias has shape {list(values.shape)} but the weights have {out_channels} output channels; "
            f"give one value per output channel, shape ({out_channels},)"
        )
    return values


def _stride(value: Any, spatial: int, *, what: str = "stride") -> tuple[int, ...]:
    """A number or one per spatial axis, each a positive integer."""
    values = (value,) * spatial if np.ndim(value) == 0 else tuple(value)
    if len(values) != spatial:
        raise UnsupportedArgument(f"{what} must be a number or {spatial} numbers (one per spatial axis); got {value!r}")
    for item in values:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise ArgumentTypeError(f"{what} must be positive integers; got {value!r}")
        if item < 1:
            raise KernelError(f"{what} must be at least 1; got {value!r}")
    return tuple(int(item) for item in values)


def _real(value: Any, name: str) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"{name} must be a real number; got {value!r}")
    return float(value)


def _check_choice(name: str, value: Any, choices: Sequence[str], hint: str = "") -> None:
    if not isinstance(value, str) or value not in choices:
        raise KernelError(f"{name} must be one of {', '.join(choices)}; got {value!r}{hint}")


def _mode_hint(mode: Any) -> str:
    if isinstance(mode, str) and mode in _NDIMAGE_MODES:
        boundary = {"grid-mirror": "reflect", "grid-wrap": "wrap", "grid-constant": "constant"}.get(mode, mode)
        return f"; for scipy.ndimage's boundary modes use boundary={boundary!r}, or pipeline.ndfilters"
    return ""


def _read_only_then(function):
    def apply(block: np.ndarray) -> np.ndarray:
        view = block.view()
        view.flags.writeable = False
        return function(view)

    return apply


@contextmanager
def _in_words(function: str) -> Iterator[None]:
    """A step's own ValueError (a pool larger than the image, clip's bounds) as a KernelError."""
    try:
        yield
    except PipelineError:
        raise
    except ValueError as exc:
        raise KernelError(f"{function}: {exc}") from None
