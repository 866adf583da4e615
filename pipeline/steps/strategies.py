"""How one kernel is computed on one in-memory block: direct, separable or FFT, picked by cost.

Every strategy computes the same thing as ``scipy.ndimage.correlate(block, weights, mode, cval,
origin)`` (the oracle), only faster:

* ``direct`` — OpenCV ``filter2D`` for 2-D float blocks, ``scipy.ndimage.correlate`` otherwise;
* ``separable`` — an exact SVD rank test splits the kernel into ``r`` outer products of 1-D vectors;
  each is one 1-D pass per axis (OpenCV ``sepFilter2D`` in 2-D, ``scipy.ndimage.correlate1d`` in
  N-D) and the ``r`` results are summed; a constant kernel (box) uses OpenCV's running-sum
  ``boxFilter``, whose cost does not grow with the kernel;
* ``fft`` — for large kernels that do not separate: OpenCV's DFT-based ``filter2D`` in 2-D (it
  switches to the DFT for kernels of 11×11 and up), ``scipy.signal.oaconvolve`` (overlap-add) in N-D.

OpenCV only correlates and names its borders differently; the table below maps scipy's names.
``constant`` with a non-zero ``cval`` pads the block with ``cval`` explicitly (a separable pass
would otherwise treat the cval as a sample of the previous pass) and crops the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from scipy import ndimage

Strategy = Literal["direct", "separable", "fft"]
STRATEGIES: tuple[str, ...] = ("direct", "separable", "fft")

# scipy.ndimage mode → OpenCV border; `wrap` has no OpenCV equivalent in filter2D.
CV_BORDERS = {
    "reflect": cv2.BORDER_REFLECT,  # d c b a | a b c d
    "mirror": cv2.BORDER_REFLECT_101,  # d c b | a b c d
    "nearest": cv2.BORDER_REPLICATE,
    "constant": cv2.BORDER_CONSTANT,  # zero; non-zero cval is shifted out first
}
CV_DTYPES = (np.float32, np.float64)
# Singular values below this fraction of the largest are rounding noise, not rank.
RANK_TOLERANCE = 1e-9
Engine = Literal["opencv", "scipy"]
# Costs in "direct taps" of each engine, measured with one thread on float32 blocks.
# OpenCV, 2048x2048: ≈ 0.25 ms per tap direct or separable (filter2D 3x3 ≈ 2.7 ms, sepFilter2D
# 15+15 taps ≈ 7.6 ms), its DFT path ≈ 45 ms whatever the size → 180 taps.
# scipy, 64x256x256: ndimage.correlate ≈ 2.5 ms per tap; correlate1d ≈ 1.5 ms per tap plus ≈ 20 ms
# per pass → 8 taps of overhead per axis; oaconvolve ≈ 250 ms → 100 taps.
FFT_COST_IN_TAPS: dict[str, float] = {"opencv": 180.0, "scipy": 100.0}
# OpenCV boxFilter, 2048x2048 float32: ≈ 7.5 ms for 31x31 (sepFilter2D ≈ 14.5 ms), ≈ 30 taps.
BOX_COST_IN_TAPS = 30.0
SEPARABLE_PASS_OVERHEAD: dict[str, float] = {"opencv": 0.0, "scipy": 8.0}
MAX_SEPARABLE_RANK = 4
# Columns per OpenCV call for passes along a leading axis: a band of a slab and its halo stays in L2
# (8192 measured fastest on 1024² slices, 10% ahead of 16384 and 30% of 2048).
OPENCV_COLUMNS = 1 << 13


@dataclass(frozen=True)
class KernelPlan:
    """A kernel ready for blocks: correlation weights, origin, the chosen strategy and its factors."""

    weights: np.ndarray  # correlation orientation, as many dims as the block
    origin: tuple[int, ...]
    strategy: Strategy
    engine: Engine
    # separable: r terms, each one 1-D vector per axis (length-1 vectors on non-filtered axes)
    factors: tuple[tuple[np.ndarray, ...], ...] = ()

    @property
    def box(self) -> bool:
        """A separable constant kernel, which OpenCV filters with running sums."""
        return self.strategy == "separable" and _is_box(self.weights, self.engine)

    def cost_in_taps(self) -> float:
        """Estimated work per output sample, in kernel taps of the engine."""
        return _cost(self.strategy, self.weights, len(self.factors), self.engine)

    def describe(self) -> str:
        return f"{self.strategy} ({self.engine}{' box' if self.box else ''})"


def _is_box(weights: np.ndarray, engine: str) -> bool:
    return engine == "opencv" and weights.size > 1 and bool(np.all(weights == weights.flat[0]))


def _cost(strategy: str, weights: np.ndarray, rank: int, engine: str) -> float:
    if strategy == "direct":
        return float(weights.size)
    if strategy == "separable" and _is_box(weights, engine):
        return min(BOX_COST_IN_TAPS, float(sum(m for m in weights.shape if m > 1)))
    if strategy == "separable":
        passes = [m for m in weights.shape if m > 1]
        return rank * (sum(passes) + SEPARABLE_PASS_OVERHEAD[engine] * len(passes))
    return FFT_COST_IN_TAPS[engine]


def separate(weights: np.ndarray, *, max_rank: int = MAX_SEPARABLE_RANK) -> tuple[tuple[np.ndarray, ...], ...] | None:
    """Exact low-rank split of a kernel into sums of outer products of 1-D vectors, or None.

    2-D kernels use the SVD (rank r → r terms). Kernels with more filtered axes are split only when
    they are a single outer product (rank 1 in every unfolding).
    """
    axes = [axis for axis, m in enumerate(weights.shape) if m > 1]
    if len(axes) < 2:
        return None
    core = weights.reshape([weights.shape[axis] for axis in axes])
    if len(axes) == 2:
        u, s, vt = np.linalg.svd(core)
        rank = int(np.sum(s > s[0] * RANK_TOLERANCE)) if s[0] > 0 else 0
        if rank == 0 or rank > max_rank:
            return None
        terms = [(u[:, i] * np.sqrt(s[i]), vt[i] * np.sqrt(s[i])) for i in range(rank)]
    else:
        vectors = _rank_one(core)
        if vectors is None:
            return None
        terms = [tuple(vectors)]
    return tuple(_embed(term, axes, weights.ndim) for term in terms)


def _rank_one(core: np.ndarray) -> list[np.ndarray] | None:
    """Vectors whose outer product is ``core`` (any ndim), or None if it is not rank one."""
    if core.ndim == 1:
        return [core.copy()]
    unfolded = core.reshape(core.shape[0], -1)
    u, s, vt = np.linalg.svd(unfolded, full_matrices=False)
    if s[0] == 0 or (len(s) > 1 and s[1] > s[0] * RANK_TOLERANCE):
        return None
    rest = _rank_one((vt[0] * s[0]).reshape(core.shape[1:]))
    return None if rest is None else [u[:, 0], *rest]


def _embed(term: tuple[np.ndarray, ...], axes: list[int], ndim: int) -> tuple[np.ndarray, ...]:
    vectors = [np.ones(1)] * ndim
    for axis, vector in zip(axes, term):
        vectors[axis] = np.ascontiguousarray(vector, dtype=np.float64)
    return tuple(vectors)


def choose_engine(dtype: np.dtype, weights: np.ndarray, edge_mode: str) -> Engine:
    """OpenCV for float blocks filtered along their last two axes with a border it knows."""
    axes = _filtered_axes(weights)
    fits = bool(axes) and all(axis >= weights.ndim - 2 for axis in axes)
    return "opencv" if np.dtype(dtype).type in CV_DTYPES and edge_mode in CV_BORDERS and fits else "scipy"


def plan_kernel(
    weights: np.ndarray, origin: tuple[int, ...], *, engine: Engine, strategy: str = "auto"
) -> KernelPlan:
    """Pick the cheapest strategy for correlation ``weights`` on ``engine`` (or honour a forced one)."""
    factors = separate(weights) or ()
    candidates: dict[str, float] = {"direct": _cost("direct", weights, 0, engine)}
    if factors:
        candidates["separable"] = _cost("separable", weights, len(factors), engine)
    if weights.size > 1:
        candidates["fft"] = _cost("fft", weights, 0, engine)
    if strategy == "auto":
        chosen = min(candidates, key=candidates.__getitem__)
    elif strategy in candidates:
        chosen = strategy
    else:  # a forced strategy that does not apply (separable for a kernel that does not split)
        chosen = "direct"
    return KernelPlan(
        weights=weights,
        origin=origin,
        strategy=chosen,
        engine=engine,
        factors=factors if chosen == "separable" else (),
    )


def correlate_block(
    block: np.ndarray, plan: KernelPlan, *, edge_mode: str, cval: float, keep: tuple[slice, ...] | None = None
) -> np.ndarray:
    """``scipy.ndimage.correlate(block, plan.weights, mode=edge_mode, cval=cval, origin=plan.origin)[keep]``.

    ``keep`` (default: everything) is the region wanted; separable passes along the leading axes
    (z in a volume) compute only the samples it needs, the other strategies crop their result.
    """
    if plan.weights.size == 1:
        return _kept(block, keep) * block.dtype.type(plan.weights.flat[0])
    if edge_mode == "constant" and cval != 0:
        pads = _reach(plan)
        padded = np.pad(block, pads, mode="constant", constant_values=cval)
        result = correlate_block(padded, plan, edge_mode="constant", cval=0.0)
        return _kept(result[tuple(slice(before, before + n) for (before, _), n in zip(pads, block.shape))], keep)
    if _opencv_can(block, plan, edge_mode):
        return _kept(_opencv(block, plan, edge_mode), keep)
    return _scipy(block, plan, edge_mode, keep)


def _kept(array: np.ndarray, keep: tuple[slice, ...] | None) -> np.ndarray:
    return array if keep is None else array[keep]


def _filtered_axes(weights: np.ndarray) -> list[int]:
    return [axis for axis, m in enumerate(weights.shape) if m > 1]


def _opencv_can(block: np.ndarray, plan: KernelPlan, edge_mode: str) -> bool:
    return (
        plan.engine == "opencv"
        and block.dtype.type in CV_DTYPES
        and edge_mode in CV_BORDERS
        # OpenCV reflects only once; a kernel reaching past a whole block goes to scipy.
        and all(m // 2 + abs(o) < n for m, o, n in zip(plan.weights.shape, plan.origin, block.shape))
    )


def _opencv(block: np.ndarray, plan: KernelPlan, edge_mode: str) -> np.ndarray:
    """Run OpenCV on each (y, x) plane of the block (a 1-D block is one row)."""
    shape2d = (1,) * (2 - block.ndim) + block.shape[-2:]
    weights = plan.weights.reshape((1,) * (2 - plan.weights.ndim) + plan.weights.shape[-2:])
    origin = ((0,) * 2 + plan.origin)[-2:]
    # OpenCV's anchor is the kernel index over the output sample: scipy's centre m//2 plus origin.
    anchor = (weights.shape[1] // 2 + origin[1], weights.shape[0] // 2 + origin[0])
    border = CV_BORDERS[edge_mode]
    dtype = block.dtype
    planes = np.ascontiguousarray(block).reshape((-1, *shape2d))
    out = np.empty_like(planes)
    if plan.box:
        value = float(weights.flat[0]) * weights.size  # boxFilter averages; rescale to the kernel's sum
        for plane, target in zip(planes, out):
            cv2.boxFilter(plane, -1, weights.shape[::-1], dst=target, anchor=anchor, normalize=True, borderType=border)
            if value != 1.0:
                np.multiply(target, dtype.type(value), out=target)
    elif plan.strategy == "separable":
        terms = [(term[-1].astype(dtype), term[-2].astype(dtype)) for term in plan.factors]
        for plane, target in zip(planes, out):
            cv2.sepFilter2D(plane, -1, *terms[0], dst=target, anchor=anchor, borderType=border)
            for row, column in terms[1:]:
                target += cv2.sepFilter2D(plane, -1, row, column, anchor=anchor, borderType=border)
    else:
        kernel = weights.astype(dtype)
        for plane, target in zip(planes, out):
            cv2.filter2D(plane, -1, kernel, dst=target, anchor=anchor, borderType=border)
    return out.reshape(block.shape)


def _scipy(block: np.ndarray, plan: KernelPlan, edge_mode: str, keep: tuple[slice, ...] | None) -> np.ndarray:
    if plan.strategy == "separable":
        total = None
        for term in plan.factors:
            part = _separable_term(block, term, plan.origin, edge_mode, keep)
            total = part if total is None else total + part
        return total
    if plan.strategy == "fft":
        from scipy import signal  # 0.4 s to import: only when a job uses it

        flipped = plan.weights[(slice(None, None, -1),) * plan.weights.ndim].astype(block.dtype)
        same = signal.oaconvolve(_pad(block, plan, edge_mode), flipped, mode="valid").astype(block.dtype, copy=False)
        return _kept(same, keep)
    if any(m // 2 >= n for m, n in zip(plan.weights.shape, block.shape)):
        # scipy.ndimage.correlate misreads `reflect` for kernels far longer than the axis
        # (scipy 1.17): extend the block ourselves, then keep the samples that need no border.
        same = ndimage.correlate(_pad(block, plan, edge_mode), plan.weights, mode="constant", origin=list(plan.origin))
        return _kept(same[tuple(slice(before, before + n) for (before, _), n in zip(_reach(plan), block.shape))], keep)
    return _kept(ndimage.correlate(block, plan.weights, mode=edge_mode, origin=list(plan.origin)), keep)


def _separable_term(
    block: np.ndarray, term: tuple[np.ndarray, ...], origin: tuple[int, ...], edge_mode: str,
    keep: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """One outer-product term as 1-D passes: leading axes (z) first, then (y, x) with OpenCV.

    In a volume this filters each plane once with OpenCV's SIMD sepFilter2D instead of two
    scipy passes over the whole block. A pass along one axis mixes nothing across the others, so
    each axis is cropped to ``keep`` as soon as its pass is done (or at once, if none filters it):
    a slab read with a halo of slices is filtered in y and x only on the slices it keeps.
    """
    keep = keep or (slice(None),) * block.ndim
    plane_axes = (block.ndim - 2, block.ndim - 1)
    use_opencv = (
        block.ndim >= 3
        and block.dtype.type in CV_DTYPES
        and edge_mode in CV_BORDERS
        and all(term[a].size // 2 + abs(origin[a]) < block.shape[a] for a in plane_axes)
    )
    later = [use_opencv and axis in plane_axes for axis in range(block.ndim)]
    part = block[tuple(wanted if term[axis].size == 1 else slice(None) for axis, wanted in enumerate(keep))]
    for axis, vector in enumerate(term):
        if vector.size > 1 and not later[axis]:
            part = _pass_along(part, vector, axis, origin[axis], edge_mode, keep[axis])
    if not use_opencv or (term[-1].size == 1 and term[-2].size == 1):
        return part
    planar = KernelPlan(
        weights=np.multiply.outer(term[-2], term[-1]).reshape((1,) * (block.ndim - 2) + (term[-2].size, term[-1].size)),
        origin=(0,) * (block.ndim - 2) + origin[-2:],
        strategy="separable",
        engine="opencv",
        factors=(tuple(np.ones(1) for _ in range(block.ndim - 2)) + (term[-2], term[-1]),),
    )
    filtered = _opencv(np.ascontiguousarray(part), planar, edge_mode)
    return filtered[(Ellipsis, *(keep[axis] if later[axis] else slice(None) for axis in plane_axes))]


def _pass_along(
    block: np.ndarray, vector: np.ndarray, axis: int, origin: int, edge_mode: str, wanted: slice
) -> np.ndarray:
    """``correlate1d(block, vector, axis)[wanted along axis]``, computed on the samples it reads only."""
    size = block.shape[axis]
    start, stop, _ = wanted.indices(size)
    before = vector.size // 2 + origin
    low, high = max(0, start - before), min(size, stop + vector.size - 1 - before)
    # A border rule at a real edge must see what it would see on the whole axis: wrap reads the far
    # edge, and the reflecting rules read up to a kernel's length in from the edge.
    if (edge_mode == "wrap" and (low == 0 or high == size)) or high - low < vector.size:
        low, high = 0, size
    sub = block[(slice(None),) * axis + (slice(low, high),)]
    wanted_rows = slice(start - low, stop - low)
    leading = axis < block.ndim - 2  # rows of whole planes: long enough to pay for OpenCV's calls
    if leading and sub.dtype.type in CV_DTYPES and edge_mode in CV_BORDERS and vector.size // 2 + abs(origin) < high - low:
        return _opencv_along(sub, vector, axis, before, edge_mode, wanted_rows)
    filtered = ndimage.correlate1d(sub, vector, axis=axis, mode=edge_mode, origin=origin)
    return filtered[(slice(None),) * axis + (wanted_rows,)]


def _opencv_along(
    block: np.ndarray, vector: np.ndarray, axis: int, anchor: int, edge_mode: str, rows: slice
) -> np.ndarray:
    """A 1-D correlation along ``axis``, its ``rows`` only, as OpenCV column filters.

    The block is seen as matrices (``axis``, everything after it): along z of a C-ordered volume
    each matrix row is a whole slice, and OpenCV's SIMD column filter runs about three times faster
    than ``ndimage.correlate1d``. It goes through bands of columns small enough to stay in cache,
    and only the wanted rows of each band are copied out.
    """
    block = np.ascontiguousarray(block)
    matrices = block.reshape(math.prod(block.shape[:axis]), block.shape[axis], -1)
    kept = range(block.shape[axis])[rows]
    out = np.empty((matrices.shape[0], len(kept), matrices.shape[2]), dtype=block.dtype)
    band = np.empty((matrices.shape[1], min(OPENCV_COLUMNS, matrices.shape[2])), dtype=block.dtype)
    column, row = vector.astype(block.dtype).reshape(-1, 1), np.ones((1, 1), dtype=block.dtype)
    for matrix, target in zip(matrices, out):
        for first in range(0, matrix.shape[1], OPENCV_COLUMNS):
            columns = slice(first, first + OPENCV_COLUMNS)
            width = len(range(matrix.shape[1])[columns])
            cv2.sepFilter2D(matrix[:, columns], -1, row, column, dst=band[:, :width], anchor=(0, anchor),
                            borderType=CV_BORDERS[edge_mode])
            target[:, columns] = band[rows, :width]
    return out.reshape(*block.shape[:axis], len(kept), *block.shape[axis + 1 :])


# numpy.pad's names for scipy.ndimage's boundary modes
NUMPY_PAD_MODES = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}


def _pad(block: np.ndarray, plan: KernelPlan, edge_mode: str) -> np.ndarray:
    """The block extended by the kernel's reach with the boundary rule (zeros for constant)."""
    return np.pad(block, _reach(plan), mode=NUMPY_PAD_MODES[edge_mode])


def _reach(plan: KernelPlan) -> list[tuple[int, int]]:
    """Samples the kernel reads before and after the output sample, per axis."""
    return [(m // 2 + o, m - 1 - (m // 2 + o)) for m, o in zip(plan.weights.shape, plan.origin)]
