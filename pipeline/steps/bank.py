"""A bank of kernels on one in-memory block, as a CNN layer computes it, picked by cost.

The weights have PyTorch's ``ConvNd.weight`` layout ``(K, C, *kernel)``: output channel ``k`` of a
block ``(C, *spatial)`` is ``sum_c scipy.ndimage.correlate(block[c], weights[k, c], mode, cval) +
bias[k]`` (the oracle; origin 0, scipy's centring for even sizes). Three strategies compute it:

* ``direct`` — one single-kernel plan per ``(k, c)`` pair (``strategies.choose_strategy``: OpenCV
  ``filter2D``, separable passes, running-sum boxes, scipy in N-D), summed per output channel.
  Cheapest for small banks.
* ``gemm`` (1-D and 2-D kernels) — the layer as one matrix product per row of output, the MEC
  lowering: each input row is copied ``kw`` times, shifted by ``dx``, into a band buffer laid out
  ``(row, c, dx, x)``; the ``kh·C·kw`` rows the outputs of row ``y`` read then sit at one stride,
  so ``weights (K, kh·C·kw) @ band[y] (kh·C·kw, x)`` is a BLAS call on a view, no im2col matrix.
  It copies ``C·kw`` values per pixel instead of im2col's ``C·kh·kw``. Cheapest for dense banks.
* ``fft`` — each input channel transformed once, multiplied by the ``K×C`` kernel spectra and
  summed over ``c``, one inverse per output channel (scipy.fft, one worker). For large kernels.

Every strategy pads the block once with the border rule (``np.pad``, which reflects again and again
like scipy when the kernel outreaches the block) except ``direct``, whose pairs handle their borders.

Reproducibility. A pipeline computes an image in blocks whose sizes differ from run to run and from
machine to machine, so a pixel must get the same bytes whatever block it is computed in. Sums in a
fixed order per pixel (``direct``'s taps and passes; not OpenCV's DFT and running-sum box filters,
see ``BankStrategy.reproducible``) have that property; BLAS does not: OpenBLAS
changes its reduction order with the shape of a call, with its thread count, and — with the Haswell
kernels it runs when OPENBLAS_CORETYPE=Haswell, as in this project's test environment — with a
pixel's position inside one call (rows at the edges of its panels use two accumulators instead of
one). So ``gemm`` makes every call the same shape (``GEMM_TILE`` pixels of one output row), lines
the tiles up with the IMAGE's columns (``start`` says where the block begins; a partial tile at a
block edge is computed whole over zeros), caps BLAS at one thread and runs bands of rows on as many
Python threads as BLAS was allowed. ``fft``'s transform size follows the block: not reproducible.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy import fft

from pipeline.errors import KernelError
from pipeline.steps.padding import PaddedRows, pad_block
from pipeline.steps.strategies import NUMPY_PAD_MODES, KernelStrategy, choose_engine, correlate_block, choose_strategy

BANK_STRATEGIES: tuple[str, ...] = ("direct", "gemm", "fft")
FLOAT_DTYPES = (np.float32, np.float64)

# Pixels of one output row per BLAS call, lined up with the image's columns: fixed, so that a
# pixel's place in its call never depends on the block (see the module docstring).
GEMM_TILE = 256
# Output pixels per band of rows: bounds the lowered buffer (C·kw values per pixel plus kh - 1 rows).
GEMM_BAND_PIXELS = 1 << 15
# Bytes added to each lowered row: a power-of-two row stride puts all kh·C·kw rows a BLAS call
# reads in the same cache sets (measured 1.5× slower at a width of 2048).
GEMM_ROW_PAD_BYTES = 64

# --- cost model: CPU seconds per output position (all K channels) on one thread, 2048² blocks
# (64×256×256 for volumes), per item size (4: float32, 8: float64) and strategy, one constant per
# term of cost_terms():
#   direct  per tap of each pair's single-kernel plan (strategies' cost_in_taps) on OpenCV, on scipy;
#           per pair (its result added into its output channel); per output channel (first write)
#   gemm    per output position (BLAS calls, bands); per lowered value (C·kw); per BLAS flop, output
#           channels rounded up to a multiple of GEMM_CHANNEL_GROUP (a 256-pixel call with 5 to 8
#           channels costs about what one with 8 does, 1 to 4 about what 4 do); per output value
#   fft     per transform of one channel (C forward, K inverse); per pair (the kernel's spectrum and
#           its multiply-add into the output's spectrum)
# Fitted by `python benchmarks/bank_engines.py --constants` (non-negative least squares of relative
# errors, each strategy timed on 10 to 12 banks; see the script) on the 2-core AMD EPYC (AVX-512)
# this was written on, numpy's OpenBLAS 0.3.31 with its SkylakeX kernels, OpenCV 5.0, scipy 1.17.
COST_CONSTANTS = {
    4: {"direct": (3.8e-11, 3.6e-10, 3.1e-10, 1.6e-10), "gemm": (0.0, 2.2e-10, 7.3e-12, 3.8e-10),
        "fft": (4.4e-9, 3.2e-9)},
    8: {"direct": (5.4e-11, 4.8e-10, 1.4e-9, 0.0), "gemm": (5.7e-10, 5.6e-10, 1.6e-11, 6.7e-10),
        "fft": (1.1e-8, 6.3e-9)},
}
GEMM_CHANNEL_GROUP = 4
ENGINES = ("opencv", "scipy")


@dataclass(frozen=True)
class Bands:
    """The bank's result handed over band by band instead of returned whole.

    ``take(first, band)`` receives bands of ``window``'s rows, in order of nothing (``gemm`` may run
    bands on several threads): ``band`` is ``(K, n, columns)``, its first row ``first`` rows after
    the window's, and is scratch, valid during the call only. Every band but the last holds a
    multiple of ``rows`` rows (a pool's stride, so that no window straddles two bands). ``window``
    cuts the block's same-sized result (spatial axes; default: all of it). Strategies that compute
    the result whole hand it over as one band.

    ``reduce`` (a max or min pool) shrinks each band before ``take`` gets it. ``gemm`` applies it
    before adding the bias, to a band smaller by the pool's area: the same bytes, since rounding
    ``x + b`` never reverses the order of two values; strategies that compute the result whole
    reduce it after.
    """

    take: Callable[[int, np.ndarray], None]
    rows: int = 1
    window: tuple[slice, ...] = ()
    reduce: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class BankStrategy:
    """A bank of kernels ready for blocks: weights, bias and the chosen strategy and engine."""

    weights: np.ndarray  # (K, C, *kernel) float64, correlation orientation
    bias: np.ndarray | None  # (K,) float64
    strategy: str  # "direct" | "gemm" | "fft"
    engine: str  # "opencv" | "scipy" (direct), "blas" (gemm), "scipy" (fft)
    dtype: np.dtype  # of the blocks it was planned for
    # direct: one single-kernel plan per (k, c) pair
    pairs: tuple[tuple[KernelStrategy, ...], ...] = field(default=(), repr=False)

    @property
    def reach(self) -> tuple[int, ...]:
        """Samples of halo a ``same`` block needs per kernel axis."""
        return tuple(m // 2 for m in self.weights.shape[2:])

    @property
    def reproducible(self) -> bool:
        """Whether a pixel's bytes are the same whatever block it is computed in (for gemm: when
        correlate_bank is told where each block starts)."""
        if self.strategy == "direct":
            return all(pair.reproducible for row in self.pairs for pair in row)  # strategies.py knows its DFTs
        return self.strategy == "gemm"

    def describe(self) -> str:
        return f"{self.strategy} ({self.engine})"

    def cost(self) -> float:
        """Estimated seconds per output position (all K channels) on one thread."""
        return _costs(self.weights, self.pairs, self.dtype)[self.strategy]


def choose_bank_strategy(weights, bias=None, *, dtype, strategy: str = "auto") -> BankStrategy:
    """Check a bank and pick the cheapest strategy for blocks of ``dtype`` (or honour a forced one).

    ``weights`` is ``(K, C, *kernel)`` with 1 to 3 kernel axes, correlation orientation; ``bias``
    one value per output channel. A forced strategy that cannot run the bank (``gemm`` on 3-D
    kernels) falls back to ``direct``, as ``strategies.choose_strategy`` does; ``describe()`` says so.

    Examples
    --------
    >>> plan = choose_bank_strategy(np.ones((16, 3, 5, 5)), dtype=np.float32)
    >>> plan.describe(), plan.reach
    ('gemm (blas)', (2, 2))
    """
    weights = _checked_weights(weights)
    bias = _checked_bias(bias, weights.shape[0])
    dtype = np.dtype(dtype)
    if dtype.type not in FLOAT_DTYPES:
        raise KernelError(f"a kernel bank runs on float32 or float64 blocks; got {dtype}")
    if strategy not in ("auto", *BANK_STRATEGIES):
        raise KernelError(f"bank strategy must be auto or one of {', '.join(BANK_STRATEGIES)}; got {strategy!r}")
    pairs = tuple(
        tuple(choose_strategy(kernel, (0,) * kernel.ndim, engine=choose_engine(dtype, kernel, "reflect"), dtype=dtype) for kernel in row)
        for row in weights
    )
    costs = _costs(weights, pairs, dtype)
    if strategy == "auto":
        chosen = min(costs, key=costs.__getitem__)
    else:
        chosen = strategy if strategy in costs else "direct"
    engine = {"direct": pairs[0][0].engine, "gemm": "blas", "fft": "scipy"}[chosen]
    return BankStrategy(weights, bias, chosen, engine, dtype, pairs if chosen == "direct" else ())


def correlate_bank(
    block: np.ndarray, plan: BankStrategy, *, edge_mode: str = "reflect", cval: float = 0.0, start: tuple[int, ...] = (),
    bands: Bands | None = None,
) -> np.ndarray | None:
    """``sum_c scipy.ndimage.correlate(block[c], plan.weights[k, c], mode=edge_mode, cval=cval) + bias[k]``.

    ``block`` is ``(C, *spatial)`` float32 or float64; the result ``(K, *spatial)`` has its dtype.
    ``start`` is the index of the block's first sample in the whole image (default: the origin);
    ``gemm`` lines its BLAS calls up with the image's columns with it, so that a pixel's bytes do
    not depend on where the image was cut into blocks. With ``bands`` the result is handed to
    ``bands.take`` band by band (the same bytes) and None is returned: ``gemm`` on 2-D kernels
    then never holds more than a band of the K maps.
    """
    _check_block(block, plan)
    if edge_mode not in NUMPY_PAD_MODES:
        raise KernelError(f"edge mode must be one of {', '.join(NUMPY_PAD_MODES)}; got {edge_mode!r}")
    if plan.strategy == "gemm" and block.ndim == 3 and bands is not None:
        _gemm(PaddedRows(block, plan.weights.shape[2:], edge_mode, cval), plan.weights, plan.bias, start, bands)
        return None
    if plan.strategy == "direct":
        result = _direct(block, plan, edge_mode, cval)
    elif plan.strategy == "fft":
        result = _fft(pad_block(block, plan.weights.shape[2:], edge_mode, cval), plan, block.shape[1:])
    elif block.ndim == 2:  # 1-D kernels: rows of a one-row image
        rows = PaddedRows(block[:, None], (1, *plan.weights.shape[2:]), edge_mode, cval)
        result = _gemm(rows, plan.weights[:, :, None], plan.bias, (0, *start[-1:]))[:, 0]
    else:
        result = _gemm(PaddedRows(block, plan.weights.shape[2:], edge_mode, cval), plan.weights, plan.bias, start)
    if bands is None:
        return result
    result = result[(slice(None), *bands.window)]
    bands.take(0, result if bands.reduce is None else bands.reduce(result))
    return None


# --- checks -----------------------------------------------------------------------------------


def _checked_weights(weights) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if not 3 <= weights.ndim <= 5:
        raise KernelError(
            f"layer weights have shape {weights.shape}; they need 3 to 5 dimensions, (out_channels, "
            "in_channels, *kernel) as PyTorch's Conv1d/Conv2d/Conv3d weight"
        )
    if weights.size == 0:
        raise KernelError(f"layer weights of shape {weights.shape} are empty; every dimension needs at least 1")
    if not np.isfinite(weights).all():
        raise KernelError("layer weights contain NaN or infinite values")
    return np.ascontiguousarray(weights)


def _checked_bias(bias, out_channels: int) -> np.ndarray | None:
    if bias is None:
        return None
    bias = np.asarray(bias, dtype=np.float64)
    if bias.shape != (out_channels,):
        raise KernelError(
            f"layer bias has shape {bias.shape} but the weights have {out_channels} output channels; "
            f"give one bias per output channel, shape ({out_channels},)"
        )
    if not np.isfinite(bias).all():
        raise KernelError("layer bias contains NaN or infinite values")
    return bias


def _check_block(block: np.ndarray, plan: BankStrategy) -> None:
    channels, spatial = plan.weights.shape[1], plan.weights.ndim - 2
    if block.dtype.type not in FLOAT_DTYPES:
        raise KernelError(f"a kernel bank runs on float32 or float64 blocks; got {block.dtype}")
    if block.ndim != spatial + 1:
        raise KernelError(
            f"block has shape {block.shape} but the bank's kernels are {spatial}-D: it needs "
            f"(channels, {', '.join('zyx'[-spatial:])})"
        )
    if block.shape[0] != channels:
        raise KernelError(
            f"block has {block.shape[0]} channels but the layer's weights {plan.weights.shape} take "
            f"{channels} input channels; give images with {channels} channels or weights for {block.shape[0]}"
        )


# --- cost model -------------------------------------------------------------------------------


def _costs(weights: np.ndarray, pairs, dtype: np.dtype) -> dict[str, float]:
    """Estimated seconds per output position of every strategy that can run the bank."""
    constants = COST_CONSTANTS[np.dtype(dtype).itemsize]
    return {name: float(np.dot(terms, constants[name])) for name, terms in cost_terms(weights, pairs, dtype).items()}


def cost_terms(weights: np.ndarray, pairs, dtype: np.dtype) -> dict[str, list[float]]:
    """The cost model's terms of every strategy that can run the bank (see COST_CONSTANTS)."""
    out_channels, channels, *kernel = weights.shape
    taps = [sum(p.cost_in_taps() for row in pairs for p in row if p.engine == engine) for engine in ENGINES]
    terms = {"direct": [*taps, out_channels * channels, out_channels]}
    if len(kernel) <= 2:
        grouped = -(-out_channels // GEMM_CHANNEL_GROUP) * GEMM_CHANNEL_GROUP
        terms["gemm"] = [1, channels * kernel[-1], 2 * grouped * channels * math.prod(kernel), out_channels]
    if math.prod(kernel) > 1:
        terms["fft"] = [channels + out_channels, out_channels * channels]
    return terms


# --- strategies -------------------------------------------------------------------------------


def _direct(block: np.ndarray, plan: BankStrategy, edge_mode: str, cval: float) -> np.ndarray:
    out = np.empty((len(plan.pairs), *block.shape[1:]), dtype=block.dtype)
    for k, row in enumerate(plan.pairs):
        for c, pair in enumerate(row):
            part = correlate_block(block[c], pair, edge_mode=edge_mode, cval=cval)
            if c > 0:
                np.add(out[k], part, out=out[k])
            elif plan.bias is None:
                np.copyto(out[k], part)
            else:  # the bias rides on the first copy rather than costing a pass of its own
                np.add(part, block.dtype.type(plan.bias[k]), out=out[k])
    return out


def _fft(padded: np.ndarray, plan: BankStrategy, spatial: tuple[int, ...]) -> np.ndarray:
    """Circular correlation on a fast transform size at least the padded block's: nothing wraps
    into the samples kept, which read at most ``m - 1`` samples past themselves."""
    shape = tuple(fft.next_fast_len(n, real=True) for n in padded.shape[1:])
    axes = tuple(range(1, padded.ndim))
    spectra = fft.rfftn(padded, s=shape, axes=axes, workers=1)
    kept = tuple(slice(0, n) for n in spatial)
    out = np.empty((plan.weights.shape[0], *spatial), dtype=padded.dtype)
    total = np.empty_like(spectra[0])
    for k, row in enumerate(plan.weights):
        for c, kernel in enumerate(row):
            # correlation is the product with the kernel's conjugate spectrum
            term = _spectrum(kernel.astype(padded.dtype), shape).conj()
            if c == 0:
                np.multiply(spectra[c], term, out=total)
            else:
                total += spectra[c] * term
        same = fft.irfftn(total, s=shape, workers=1)[kept]
        np.add(same, padded.dtype.type(0 if plan.bias is None else plan.bias[k]), out=out[k])
    return out


def _spectrum(kernel: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``rfftn(kernel, s=shape)``, transforming along x only the kernel's own rows (the rest are zero)."""
    spectrum = fft.rfft(kernel, n=shape[-1], axis=-1, workers=1)
    for axis in range(kernel.ndim - 1):
        spectrum = fft.fft(spectrum, n=shape[axis], axis=axis, workers=1)
    return spectrum


def _gemm(padded: PaddedRows, weights: np.ndarray, bias: np.ndarray | None, start: tuple[int, ...],
          bands: Bands | None = None) -> np.ndarray | None:
    """MEC lowering + one fixed-shape BLAS call per ``GEMM_TILE`` pixels of an output row.

    Without ``bands``, the result whole; with them, only the window's rows are computed, each band
    handed over as soon as it is (columns are computed whole: the calls stay lined up).
    """
    out_channels, channels, kh, kw = weights.shape
    dtype, item = padded.block.dtype, padded.block.itemsize
    height, width = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    window = (bands.window if bands else ()) + (slice(None),) * 2
    first, last, _ = window[0].indices(height)
    columns = window[1].indices(width)
    lead = (start[-1] if start else 0) % GEMM_TILE  # the block's first column inside its tile
    tiles = -(-(lead + width) // GEMM_TILE)
    row = tiles * GEMM_TILE + GEMM_ROW_PAD_BYTES // item
    multiple = bands.rows if bands else 1
    rows = max(multiple, min(last - first, GEMM_BAND_PIXELS // row) // multiple * multiple)
    matrix = weights.transpose(0, 2, 1, 3).reshape(out_channels, -1).astype(dtype)  # (dy, c, dx) columns
    shift = (np.zeros(out_channels) if bias is None else bias).astype(dtype)[:, None, None]
    result = None if bands else np.empty((out_channels, height, width), dtype=dtype)
    starts = range(first, last, rows)

    def run(worker: int, workers: int) -> None:
        # zeros: the columns outside the block stay 0 (finite) for every band
        lowered = np.zeros((rows + kh - 1, channels, kw, row), dtype=dtype)
        product = np.empty((out_channels, rows, row), dtype=dtype)
        # output row r, tile t reads rows (dy, c, dx) = lowered[r + dy, c, dx, tile]: one stride
        patches = as_strided(
            lowered, shape=(rows, tiles, kh * channels * kw, GEMM_TILE),
            strides=(channels * kw * row * item, GEMM_TILE * item, row * item, item),
        )
        out = as_strided(
            product, shape=(rows, tiles, out_channels, GEMM_TILE),
            strides=(row * item, GEMM_TILE * item, rows * row * item, item),
        )
        for y0 in starts[worker::workers]:
            n = min(rows, last - y0)
            band = padded[y0 : y0 + n + kh - 1].transpose(1, 0, 2)
            for dx in range(kw):
                lowered[: n + kh - 1, :, dx, lead : lead + width] = band[:, :, dx : dx + width]
            np.matmul(matrix, patches[:n], out=out[:n])
            if bands is None:
                np.add(product[:, :n, lead : lead + width], shift, out=result[:, y0 : y0 + n])
            else:
                band = product[:, :n, lead + columns[0] : lead + columns[1]]
                if bands.reduce is not None:
                    band = bands.reduce(band)
                bands.take(y0 - first, np.add(band, shift, out=band))

    with _ONE_BLAS_THREAD as allowed:
        workers = min(allowed, len(starts))
        if workers <= 1:
            run(0, 1)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(run, range(workers), [workers] * workers))
    return result


class _OneBlasThread:
    """Caps BLAS at one thread while any gemm runs, and says how many threads it was allowed.

    OpenBLAS splits a call over its threads in a way that changes its results, so each call runs
    on one; gemm runs as many bands at once instead. Concurrent gemm tasks share one cap (counted),
    so that none lifts it while another still relies on it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._allowed = 1
        self._limiter = None

    def __enter__(self) -> int:
        with self._lock:
            if self._users == 0:
                controller = _blas_controller()
                self._allowed = max([info["num_threads"] for info in controller.info()] or [1])
                self._limiter = controller.limit(limits=1) if self._allowed > 1 else None
            self._users += 1
            return self._allowed

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._limiter is not None:
                self._limiter.restore_original_limits()


@cache
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().select(user_api="blas")


_ONE_BLAS_THREAD = _OneBlasThread()
