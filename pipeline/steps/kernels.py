"""Kernels as data: built-in constants and small factories, inline matrices, and kernel files.

A kernel is always returned as a float64 ndarray of 1 to 3 dimensions and at most
``MAX_KERNEL_ELEMENTS`` (2**24) values, a size checked before any array is made: from the nested
lists' lengths, a .npy file's header, a built-in's parameters. Its orientation is the one of *true
convolution*: the convolve step flips it (as the definition does) unless the step asks for
cross-correlation.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from pipeline.errors import KernelError

MAX_KERNEL_NDIM = 3
MAX_KERNEL_ELEMENTS = 2**24  # 128 MiB of float64: far beyond any useful kernel, well within memory

# Separable parts, combined below with outer products (as scikit-image builds its edge kernels).
_SMOOTH = np.array([1.0, 2.0, 1.0])
_AVERAGE = np.array([1.0, 1.0, 1.0])
# As a convolution kernel (flipped when applied) [1, 0, -1] gives f(x+1) - f(x-1): +d/dx.
_DIFF = np.array([1.0, 0.0, -1.0])

SOBEL_X = np.outer(_SMOOTH, _DIFF)
SOBEL_Y = SOBEL_X.T.copy()
PREWITT_X = np.outer(_AVERAGE, _DIFF)
PREWITT_Y = PREWITT_X.T.copy()
BLUR = np.full((3, 3), 1.0 / 9.0)
EDGE = np.array([[1.0, 1.0, 1.0], [1.0, -8.0, 1.0], [1.0, 1.0, 1.0]])
LAPLACIAN = np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
SHARPEN = np.array([[0.0, -1.0, 0.0], [-1.0, 5.0, -1.0], [0.0, -1.0, 0.0]])
EMBOSS = np.array([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def _not_too_large(shape: tuple[int, ...], what: str) -> tuple[int, ...]:
    count = math.prod(shape)
    if count > MAX_KERNEL_ELEMENTS:
        raise KernelError(
            f"{what} has {'x'.join(map(str, shape))} = {count:,} values; a kernel has at most "
            f"{MAX_KERNEL_ELEMENTS:,} (2**24)"
        )
    return shape


def _check_ndim(ndim: int) -> int:
    if ndim not in (1, 2, 3):
        raise KernelError(f"ndim must be 1, 2 or 3, got {ndim}")
    return ndim


def identity(*, size: int = 3, ndim: int = 2) -> np.ndarray:
    """A centred 1 in a cube of zeros: convolution leaves the image unchanged."""
    if size < 1 or size % 2 == 0:
        raise KernelError(f"identity size must be a positive odd integer, got {size}")
    kernel = np.zeros(_not_too_large((size,) * _check_ndim(ndim), f"identity kernel of size {size}"))
    kernel[(size // 2,) * ndim] = 1.0
    return kernel


def box(*, size: int = 3, ndim: int = 2) -> np.ndarray:
    """Moving average over a cube of ``size`` samples per axis (any size, odd or even)."""
    if size < 1:
        raise KernelError(f"box size must be a positive integer, got {size}")
    return np.full(_not_too_large((size,) * _check_ndim(ndim), f"box kernel of size {size}"), 1.0 / size ** ndim)


def gaussian(*, sigma: float = 1.0, truncate: float = 4.0, ndim: int = 2) -> np.ndarray:
    """Sampled, normalised Gaussian, cut at ``truncate`` standard deviations (as scipy.ndimage)."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise KernelError(f"gaussian sigma must be a positive number, got {sigma}")
    if not (truncate > 0 and math.isfinite(truncate)):
        raise KernelError(f"gaussian truncate must be a positive number, got {truncate}")
    radius = int(truncate * sigma + 0.5)
    _not_too_large((2 * radius + 1,) * _check_ndim(ndim), f"gaussian kernel of sigma {sigma} (truncate {truncate})")
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    profile = np.exp(-0.5 * (x / sigma) ** 2)
    profile /= profile.sum()
    kernel = profile
    for _ in range(ndim - 1):
        kernel = np.multiply.outer(kernel, profile)
    return kernel


def _constant(matrix: np.ndarray) -> Callable[[], np.ndarray]:
    def factory() -> np.ndarray:
        return matrix.copy()

    return factory


@dataclass(frozen=True)
class BuiltinKernel:
    name: str
    description: str
    factory: Callable[..., np.ndarray]

    @property
    def defaults(self) -> dict[str, Any]:
        """The parameters the factory accepts, with their default values."""
        return {
            name: p.default
            for name, p in inspect.signature(self.factory).parameters.items()
        }


BUILTINS: dict[str, BuiltinKernel] = {
    k.name: k
    for k in (
        BuiltinKernel("identity", "leaves the image unchanged", identity),
        BuiltinKernel("box", "moving average of size^ndim samples", box),
        BuiltinKernel("blur", "3x3 average", _constant(BLUR)),
        BuiltinKernel("gaussian", "Gaussian blur, radius = int(truncate*sigma+0.5)", gaussian),
        BuiltinKernel("edge", "3x3 edge detector [[1,1,1],[1,-8,1],[1,1,1]]", _constant(EDGE)),
        BuiltinKernel("laplacian", "4-neighbour Laplacian", _constant(LAPLACIAN)),
        BuiltinKernel("sobel_x", "Sobel derivative along x (finds vertical edges)", _constant(SOBEL_X)),
        BuiltinKernel("sobel_y", "Sobel derivative along y (finds horizontal edges)", _constant(SOBEL_Y)),
        BuiltinKernel("prewitt_x", "Prewitt derivative along x", _constant(PREWITT_X)),
        BuiltinKernel("prewitt_y", "Prewitt derivative along y", _constant(PREWITT_Y)),
        BuiltinKernel("sharpen", "3x3 sharpening", _constant(SHARPEN)),
        BuiltinKernel("emboss", "3x3 emboss", _constant(EMBOSS)),
    )
}

KERNEL_FILE_SUFFIXES = (".npy", ".csv", ".txt")


@dataclass(frozen=True)
class Kernel:
    """A resolved kernel: where it came from and its actual matrix."""

    source: str
    weights: np.ndarray = field(repr=False)
    params: dict[str, Any] = field(default_factory=dict)

    def to_provenance(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "params": dict(self.params),
            "shape": list(self.weights.shape),
            "matrix": self.weights.tolist(),
        }


def build_kernel(spec: str | list | np.ndarray, params: dict[str, Any] | None = None) -> Kernel:
    """Resolve a kernel spec: a built-in name, an inline matrix, or a path to .npy/.csv/.txt.

    Examples
    --------
    >>> build_kernel("edge").weights
    array([[ 1.,  1.,  1.],
           [ 1., -8.,  1.],
           [ 1.,  1.,  1.]])
    >>> build_kernel("box", {"size": 2}).weights.shape
    (2, 2)
    """
    params = dict(params or {})
    if isinstance(spec, str):
        if spec in BUILTINS:
            weights = _call_builtin(BUILTINS[spec], params)
            return Kernel(spec, check_matrix(weights, what=f"kernel {spec!r}"), params)
        if spec.lower().endswith(KERNEL_FILE_SUFFIXES):
            weights = load_kernel_file(spec)  # a missing file is the first thing to say
            _no_params(spec, params)
            return Kernel(spec, weights, {})
        raise KernelError(_unknown_name_message(spec))
    _no_params("an inline matrix", params)
    return Kernel("inline", check_matrix(spec, what="inline kernel"), {})


def _unknown_name_message(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, BUILTINS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown kernel {name!r}{hint}; use a built-in name ({', '.join(BUILTINS)}), "
        f"an inline matrix, or a path ending in {', '.join(KERNEL_FILE_SUFFIXES)}"
    )


def _no_params(what: str, params: dict[str, Any]) -> None:
    if params:
        raise KernelError(f"params {sorted(params)} given, but {what} takes no parameters")


def _call_builtin(builtin: BuiltinKernel, params: dict[str, Any]) -> np.ndarray:
    accepted = builtin.defaults
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(f"{k} (default {v})" for k, v in accepted.items()) or "no parameters"
        raise KernelError(f"kernel {builtin.name!r} does not take {unknown}; it takes {takes}")
    for key, value in params.items():
        default = accepted[key]
        if isinstance(default, int) and not (isinstance(value, int) and not isinstance(value, bool)):
            raise KernelError(f"kernel {builtin.name!r} param {key!r} must be an integer, got {value!r}")
        if isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise KernelError(f"kernel {builtin.name!r} param {key!r} must be a number, got {value!r}")
    return builtin.factory(**params)


def check_matrix(matrix: Any, *, what: str, max_ndim: int = MAX_KERNEL_NDIM) -> np.ndarray:
    """Turn a nested list or array into a finite float64 kernel of 1 to ``max_ndim`` dimensions.

    (Layers' weights have up to 5: output and input channels, then the kernel's 1 to 3.)
    """
    if isinstance(matrix, np.ndarray):
        _not_too_large(matrix.shape, what)
    else:
        _check_nested(matrix, what, max_ndim)
    try:
        weights = np.asarray(matrix, dtype=np.float64)
    except OverflowError:
        raise KernelError(f"{what} holds an integer too large for a float") from None
    if weights.ndim == 0 or weights.size == 0:
        raise KernelError(f"{what} is empty; give at least one number")
    if weights.ndim > max_ndim:
        raise KernelError(f"{what} has {weights.ndim} dimensions; at most {max_ndim} are supported")
    if not np.all(np.isfinite(weights)):
        raise KernelError(f"{what} contains NaN or infinite values")
    return weights


def _check_nested(matrix: Any, what: str, max_ndim: int = MAX_KERNEL_NDIM) -> None:
    """Nested lists that numpy can turn into a kernel: checked level by level (never recursing), the
    shape (from the first items) before any value, so that numpy never builds a huge or ragged array."""
    shape, first, seen = [], matrix, set()
    while isinstance(first, (list, tuple)) and id(first) not in seen:
        seen.add(id(first))
        shape.append(len(first))
        first = first[0] if first else None
    if len(shape) > max_ndim:
        raise KernelError(f"{what} has {len(shape)} dimensions; at most {max_ndim} are supported")
    _not_too_large(tuple(shape), what)
    ragged = KernelError(f"{what} must be a rectangular matrix of numbers (rows of equal length)")
    rows = [matrix]
    for length in shape:
        if any(not isinstance(row, (list, tuple)) or len(row) != length for row in rows):
            raise ragged
        rows = [item for row in rows for item in row]
    for value in rows:
        if not _is_number(value):
            raise ragged if isinstance(value, (list, tuple)) else KernelError(
                f"{what} must be a rectangular matrix of numbers; it holds a non-number ({value!r})"
            )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, (bool, np.bool_))


def load_kernel_file(path: str, *, max_ndim: int = MAX_KERNEL_NDIM) -> np.ndarray:
    """Read a kernel from .npy (no pickles), .csv (comma separated) or .txt (whitespace separated)."""
    file = Path(path)
    if not file.is_file():
        against = "" if file.is_absolute() else f" (resolved against {Path.cwd()})"
        raise KernelError(f"kernel file {path!r} does not exist{against}")
    if file.suffix.lower() == ".npy":
        data = _read_npy(file, path)
    else:
        try:
            data = np.loadtxt(file, delimiter="," if file.suffix.lower() == ".csv" else None, ndmin=1, dtype=np.float64)
        except (ValueError, OSError):
            raise KernelError(f"kernel file {path!r} cannot be read: not a numeric matrix") from None
    if np.iscomplexobj(data) or data.dtype.kind not in "uif":
        raise KernelError(f"kernel file {path!r} holds {data.dtype} values; a kernel needs real numbers")
    return check_matrix(data, what=f"kernel file {path!r}", max_ndim=max_ndim)


def _read_npy(file: Path, path: str) -> np.ndarray:
    """A .npy array, its header read first: its size is checked before its data is read."""
    npy = np.lib.format
    with file.open("rb") as handle:
        try:
            version = npy.read_magic(handle)
            read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read_header(handle)
        except ValueError:
            raise KernelError(f"kernel file {path!r} cannot be read: not a .npy file (use np.save)") from None
        if dtype.hasobject:
            raise KernelError(f"kernel file {path!r} cannot be read: it holds Python objects, which need pickle (refused)")
        _not_too_large(shape, f"kernel file {path!r}")
        handle.seek(0)
        try:
            return npy.read_array(handle, allow_pickle=False)
        except (ValueError, OSError):
            raise KernelError(f"kernel file {path!r} cannot be read: it holds fewer values than its header declares") from None
