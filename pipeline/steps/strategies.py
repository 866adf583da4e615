"""How one kernel is computed on one in-memory block: direct, separable or FFT, picked by cost.

Every strategy computes the same thing as ``scipy.ndimage.correlate(block, weights, mode, cval,
origin)`` (the oracle), only faster:

* ``direct`` — OpenCV ``filter2D`` for 2-D float blocks (one ``sepFilter2D`` pass for a kernel along
  one axis), ``scipy.ndimage.correlate`` otherwise;
* ``separable`` — the kernel is split into ``r`` outer products of 1-D vectors (the SVD), each one
  1-D pass per axis (OpenCV ``sepFilter2D`` on (y, x) planes, sums of whole rows along the leading
  axes of a float block (``leading_passes``), ``scipy.ndimage.correlate1d`` otherwise), and the
  ``r`` results are summed. A split is accepted when it reproduces the kernel to a few ulp of the
  compute dtype (``separation_tolerance``), not only exactly: a Gaussian pasted as a float32
  matrix is an outer product rounded to float32, of full rank to an exact test, and its separable
  form differs from it by less than float32's own rounding of the weights. A constant kernel (a
  box, typed or built) is split into constant vectors. The residual is recorded in provenance;
* ``fft`` — for large kernels that do not separate: OpenCV's DFT-based ``filter2D`` in 2-D,
  ``scipy.signal.oaconvolve`` (overlap-add) in N-D.

OpenCV only correlates and names its borders differently; the table below maps scipy's names.
``constant`` with a non-zero ``cval`` pads the block with ``cval`` explicitly (a separable pass
would otherwise treat the cval as a sample of the previous pass) and crops the result.

What is byte-reproducible. A job's tiles, slabs and chunks follow ``input.tile`` and the memory
budget, so a sample must not depend on the block it was computed in. ``direct`` and ``separable``
give the same bytes whatever the block's size and position (tested byte for byte against the whole
image), so a job writes the same store with any tiling, budget or scheduler:

* each sample is a sum over the kernel's taps in a fixed order, and the plan depends on the kernel,
  the engine and the dtype only, never on the block. A block that a kernel reaches past goes to
  scipy, but a chunk read with its halo never is one: only an axis shorter than the kernel's reach,
  however it is chunked;
* OpenCV filters a row in SIMD vectors and its last ``width % lanes`` columns in a scalar loop that
  rounds differently: those columns are computed again in a strip that ends on whole vectors
  (``opencv_filters.refilter_tail``);
* OpenCV's ``filter2D`` turns into a DFT from ``opencv_dft_taps`` taps on: the cost model knows it,
  so a plan that says direct (opencv) has fewer taps (a forced ``direct`` with more runs on scipy);
* OpenCV's ``boxFilter`` (running sums in float64: ≈ 7 ms a 2048² float32 plane whatever the size,
  against ≈ 25 ms for a 31-tap ``sepFilter2D``) starts its sums at the block's first row and column,
  so where they round a sample would depend on where its block starts. It runs only where every
  block is one whole image whatever the tiling (``ImageShape.whole``: files never read by tiles or
  slabs), so its sums always start at the image's corner; elsewhere a constant kernel is a rank-1
  ``sepFilter2D``.

``fft`` is not reproducible (``KernelStrategy.reproducible``): the transform's size follows the block's,
and so do its roundings, by a few ulp (OpenCV transforms float32 blocks in float64, which hides it
nearly always). Bytes are those of one machine and OpenCV build: another instruction set (AVX2,
AVX-512, NEON) or library version may round differently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import cv2
import numpy as np

from pipeline.steps.leading_passes import filter_along
from pipeline.steps.opencv_filters import CV_BORDERS, CV_DTYPES, PlaneFilter, opencv_dft_taps, refilter_tail

Strategy = Literal["direct", "separable", "fft", "box"]
STRATEGIES: tuple[str, ...] = ("direct", "separable", "fft")  # what a job may ask for; "box" only by auto

# A separable form may differ from the kernel by this many ulp of the compute dtype (relative sum of
# absolute differences), plus the float64 SVD's own error: the result then moves by less than the
# compute dtype's rounding of the weights (float32: 4.8e-7 of |kernel|·|input|, 20x inside 1e-5).
SEPARATION_ULPS = 4
SVD_ULPS = 32
Engine = Literal["opencv", "scipy"]
# Costs in "direct taps" of each engine, measured with one thread on float32 blocks.
# OpenCV, 2048x2048: ≈ 0.25 ms per tap direct or separable (filter2D 3x3 ≈ 2.7 ms, sepFilter2D
# 15+15 taps ≈ 7.6 ms), its DFT path (from opencv_dft_taps on) ≈ 45 ms whatever the size → 180 taps.
# scipy, 64x256x256: ndimage.correlate ≈ 2.5 ms per tap; correlate1d ≈ 1.5 ms per tap plus ≈ 20 ms
# per pass → 8 taps of overhead per axis; oaconvolve ≈ 250 ms → 100 taps.
FFT_COST_IN_TAPS: dict[str, float] = {"opencv": 180.0, "scipy": 100.0}
# boxFilter, 2048x2048 float32, one thread: 3.5 ms (3x3) to 7.1 ms (31x31), whatever the size, against
# sepFilter2D's 3.4 and 24.9 ms: it wins from about 15x15 on.
BOX_COST_IN_TAPS = 28.0
SEPARABLE_PASS_OVERHEAD: dict[str, float] = {"opencv": 0.0, "scipy": 8.0}
MAX_SEPARABLE_RANK = 4


@dataclass(frozen=True)
class KernelStrategy:
    """A kernel ready for blocks: correlation weights, origin, the chosen strategy and its factors."""

    weights: np.ndarray  # correlation orientation, as many dims as the block
    origin: tuple[int, ...]
    strategy: Strategy
    engine: Engine  # what really computes the strategy: a forced one OpenCV cannot do runs on scipy
    # separable: r terms, each one 1-D vector per axis (length-1 vectors on non-filtered axes)
    factors: tuple[tuple[np.ndarray, ...], ...] = ()
    separation: Separation | None = None  # how well the kernel splits, whatever strategy was chosen

    @property
    def reproducible(self) -> bool:
        """Whether the result's bytes are independent of the block size (tile, slab, memory budget).

        ``direct`` and ``separable`` compute each sample by the same operations wherever it lies in
        whatever block, so tiling a job differently (another ``input.tile`` or memory budget, another
        machine of the same kind) writes the same bytes. ``fft`` does not: the transform's size
        follows the block's, and its roundings (a few ulp) with it. ``box`` depends on where its
        block starts, but is chosen only where every block is one whole image (``ImageShape.whole``).
        """
        return self.strategy != "fft"

    def cost_in_taps(self) -> float:
        """Estimated work per output sample, in kernel taps of the engine."""
        return _cost(self.strategy, self.weights, len(self.factors), self.engine)

    def describe(self) -> str:
        return f"{self.strategy} ({self.engine})"


def _cost(strategy: str, weights: np.ndarray, rank: int, engine: str) -> float:
    if strategy == "box":
        return BOX_COST_IN_TAPS
    if strategy == "direct":
        return float(weights.size)
    if strategy == "separable":
        passes = [m for m in weights.shape if m > 1]
        return rank * (sum(passes) + SEPARABLE_PASS_OVERHEAD[engine] * len(passes))
    return FFT_COST_IN_TAPS[engine]


@dataclass(frozen=True)
class Separation:
    """A kernel's split into outer products, and how far the split is from the kernel."""

    factors: tuple[tuple[np.ndarray, ...], ...]
    residual: float  # sum |kernel - split| / sum |kernel|
    tolerance: float  # the largest residual accepted for the compute dtype
    constant: bool  # every weight the same (a box): split into constant vectors

    def record(self) -> dict[str, Any]:
        """What the store's provenance says of it."""
        return {
            "rank": len(self.factors),
            "constant": self.constant,
            "residual": float(f"{self.residual:.3g}"),
            "tolerance": float(f"{self.tolerance:.3g}"),
        }


def separation_tolerance(dtype: np.dtype | str = np.float64) -> float:
    """The largest relative residual a separable form may have for blocks of ``dtype``.

    A few ulp of the compute dtype (integer blocks are computed in float64), plus what the float64
    SVD itself rounds: a float32-rounded outer product (residual ≈ 2e-8) splits for float32 blocks,
    not for float64 ones, where the split would change the result by far more than an ulp.
    """
    kind = np.dtype(dtype)
    compute = kind if kind.kind == "f" and kind.itemsize >= 4 else np.dtype(np.float64)
    return SEPARATION_ULPS * float(np.finfo(compute).eps) + SVD_ULPS * float(np.finfo(np.float64).eps)


def separate(
    weights: np.ndarray, *, dtype: np.dtype | str = np.float64, max_rank: int = MAX_SEPARABLE_RANK
) -> tuple[tuple[np.ndarray, ...], ...] | None:
    """A low-rank split of a kernel into sums of outer products of 1-D vectors, or None.

    Accepted when it reproduces the kernel within ``separation_tolerance(dtype)``; see ``separation``.
    """
    split = separation(weights, dtype=dtype, max_rank=max_rank)
    return split.factors if split is not None and split.residual <= split.tolerance else None


def separation(
    weights: np.ndarray, *, dtype: np.dtype | str = np.float64, max_rank: int = MAX_SEPARABLE_RANK
) -> Separation | None:
    """The best split of at most ``max_rank`` terms and its residual; None if the kernel has fewer than two filtered axes.

    A constant kernel splits into constant vectors. 2-D kernels take the fewest SVD terms that
    reach the tolerance (or ``max_rank``); kernels with more filtered axes split only as a single
    outer product (rank 1 in every unfolding). The split's residual may exceed the tolerance: then
    it does not separate (``separate`` says None), and provenance says how far it was.
    """
    axes = [axis for axis, m in enumerate(weights.shape) if m > 1]
    if len(axes) < 2:
        return None
    tolerance = separation_tolerance(dtype)
    core = np.asarray(weights, dtype=np.float64).reshape([weights.shape[axis] for axis in axes])
    total = float(np.abs(core).sum())
    if total == 0:
        return None
    mean = float(core.mean())
    residual = float(np.abs(core - mean).sum()) / total
    if residual <= tolerance:
        root = abs(mean) ** (1.0 / len(axes))
        vectors = [np.full(m, root * (np.sign(mean) if i == 0 else 1.0)) for i, m in enumerate(core.shape)]
        return Separation((_embed(vectors, axes, weights.ndim),), residual, tolerance, True)
    if len(axes) == 2:
        u, s, vt = np.linalg.svd(core)
        terms: list[tuple[np.ndarray, ...]] = []
        approx = np.zeros_like(core)
        for i in range(min(max_rank, int(np.count_nonzero(s)))):
            terms.append((u[:, i] * np.sqrt(s[i]), vt[i] * np.sqrt(s[i])))
            approx += np.outer(*terms[-1])
            residual = float(np.abs(core - approx).sum()) / total
            if residual <= tolerance:
                break
    else:
        terms = [tuple(_rank_one(core))]
        residual = float(np.abs(core - _outer(terms[0])).sum()) / total
    return Separation(tuple(_embed(term, axes, weights.ndim) for term in terms), residual, tolerance, False)


def _rank_one(core: np.ndarray) -> list[np.ndarray]:
    """Vectors whose outer product is nearest ``core`` (any ndim), one unfolding's leading singular pair at a time."""
    if core.ndim == 1:
        return [core.copy()]
    unfolded = core.reshape(core.shape[0], -1)
    u, s, vt = np.linalg.svd(unfolded, full_matrices=False)
    return [u[:, 0], *_rank_one((vt[0] * s[0]).reshape(core.shape[1:]))]


def _outer(vectors: Sequence[np.ndarray]) -> np.ndarray:
    product = vectors[0]
    for vector in vectors[1:]:
        product = np.multiply.outer(product, vector)
    return product


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


def choose_strategy(
    weights: np.ndarray, origin: tuple[int, ...], *, engine: Engine, dtype: np.dtype, strategy: str = "auto",
    whole: bool = False,
) -> KernelStrategy:
    """Pick the cheapest strategy for correlation ``weights`` on ``engine`` (or honour a forced one).

    The choice depends on the kernel, the engine and the blocks' ``dtype``, never on a block's size.
    ``auto`` weighs only what ``engine`` computes itself: where OpenCV cannot (filter2D is a DFT from
    ``opencv_dft_taps`` on, and direct below), scipy's way is dearer than another OpenCV strategy
    (2048² float32: ``ndimage.correlate`` 70 ms for 5x5, filter2D 4 ms; ``oaconvolve`` 280 ms, more
    than 129 direct taps). A forced strategy that OpenCV cannot honour runs on scipy, as the plan says.
    ``whole`` (every block is one whole image) lets ``auto`` pick OpenCV's ``boxFilter`` for a
    constant 2-D kernel.
    """
    split = separation(weights, dtype=dtype)
    factors = split.factors if split is not None and split.residual <= split.tolerance else ()
    engines = {name: _engine_for(name, weights, engine, dtype) for name in STRATEGIES}
    applicable = [
        name for name in STRATEGIES if (name != "separable" or factors) and (name != "fft" or weights.size > 1)
    ]
    filtered = _filtered_axes(weights)
    if strategy == "auto" and whole and engine == "opencv" and split is not None and split.constant and factors \
            and len(filtered) == 2 and filtered[0] >= weights.ndim - 2:
        applicable.append("box")
        engines["box"] = "opencv"
    if strategy == "auto":
        own = [name for name in applicable if engines[name] == engine]
        chosen = min(own, key=lambda name: _cost(name, weights, len(factors), engine))
    elif strategy in applicable:
        chosen = strategy
    else:  # a forced strategy that does not apply (separable for a kernel that does not split)
        chosen = "direct"
    return KernelStrategy(
        weights=weights,
        origin=origin,
        strategy=chosen,
        engine=engines[chosen],
        factors=factors if chosen in ("separable", "box") else (),
        separation=split,
    )


def _engine_for(strategy: str, weights: np.ndarray, engine: Engine, dtype: np.dtype) -> Engine:
    """The engine that computes ``strategy`` truly: OpenCV's filter2D is direct or a DFT by its taps."""
    if engine == "scipy" or strategy == "separable":
        return engine
    by_dft = weights.size >= opencv_dft_taps(dtype)
    if strategy == "fft":
        return engine if by_dft else "scipy"
    # A kernel along one axis is one sepFilter2D pass, which never turns into a DFT.
    return engine if not by_dft or len(_filtered_axes(weights)) == 1 else "scipy"


def correlate_block(
    block: np.ndarray, plan: KernelStrategy, *, edge_mode: str, cval: float, keep: tuple[slice, ...] | None = None,
    dtype: np.dtype | None = None,
) -> np.ndarray:
    """``scipy.ndimage.correlate(block, plan.weights, mode=edge_mode, cval=cval, origin=plan.origin)[keep]``.

    ``keep`` (default: everything) is the region wanted; separable passes along the leading axes
    (z in a volume) compute only the samples it needs, the other strategies crop their result.
    ``dtype`` (default: the block's) is the compute dtype: a block of integers it holds exactly (a
    volume's raw slab, ``takes_raw``) is converted by the passes along z as they read it, which
    gives the bytes of converting it first; any other path converts it first.
    """
    dtype = block.dtype if dtype is None else np.dtype(dtype)
    if block.dtype != dtype and not takes_raw(plan, edge_mode, cval, block.ndim):
        block = block.astype(dtype)
    if plan.weights.size == 1:
        return _kept(block, keep) * block.dtype.type(plan.weights.flat[0])
    if edge_mode == "constant" and cval != 0:
        pads = _reach(plan)
        padded = np.pad(block, pads, mode="constant", constant_values=cval)
        result = correlate_block(padded, plan, edge_mode="constant", cval=0.0)
        return _kept(result[tuple(slice(before, before + n) for (before, _), n in zip(pads, block.shape))], keep)
    if block.dtype != dtype:
        return _scipy(block, plan, edge_mode, keep, dtype)
    if _opencv_can(block, plan, edge_mode):
        return _kept(_opencv(block, plan, edge_mode), keep)
    return _scipy(block, plan, edge_mode, keep, dtype)


def takes_raw(plan: KernelStrategy, edge_mode: str, cval: float, ndim: int) -> bool:
    """Whether ``correlate_block`` reads a block of raw integers without converting it first: a
    separable kernel whose every term filters along a leading axis (z), whose passes convert as they
    read (``leading_passes.filter_along``)."""
    if plan.strategy != "separable" or plan.weights.size == 1 or (edge_mode == "constant" and cval != 0):
        return False
    return ndim >= 3 and all(any(vector.size > 1 for vector in term[: ndim - 2]) for term in plan.factors)


def _kept(array: np.ndarray, keep: tuple[slice, ...] | None) -> np.ndarray:
    return array if keep is None else array[keep]


def _filtered_axes(weights: np.ndarray) -> list[int]:
    return [axis for axis, m in enumerate(weights.shape) if m > 1]


def _opencv_can(block: np.ndarray, plan: KernelStrategy, edge_mode: str) -> bool:
    return (
        plan.engine == "opencv"
        and block.dtype.type in CV_DTYPES
        and edge_mode in CV_BORDERS
        and _within(_reach(plan), block.shape)
    )


def _within(reach: Sequence[tuple[int, int]], shape: Sequence[int]) -> bool:
    """Whether OpenCV's single reflection serves every reach: a kernel reaching past a whole block goes
    to scipy. A chunk read with its halo (at least each kernel's reach) is longer than that, so only an
    axis shorter than the kernel, however it is chunked, goes there."""
    return all(max(before, after) < n for (before, after), n in zip(reach, shape))


def _opencv(block: np.ndarray, plan: KernelStrategy, edge_mode: str) -> np.ndarray:
    """Run OpenCV on each (y, x) plane of the block (a 1-D block is one row)."""
    shape2d = (1,) * (2 - block.ndim) + block.shape[-2:]
    weights = plan.weights.reshape((1,) * (2 - plan.weights.ndim) + plan.weights.shape[-2:])
    origin = ((0,) * 2 + plan.origin)[-2:]
    # OpenCV's anchor is the kernel index over the output sample: scipy's centre m//2 plus origin.
    anchor = (weights.shape[1] // 2 + origin[1], weights.shape[0] // 2 + origin[0])
    border = CV_BORDERS[edge_mode]
    filter_plane = _plane_filter(plan, weights, anchor, border, block.dtype)
    planes = np.ascontiguousarray(block).reshape((-1, *shape2d))
    out = np.empty_like(planes)
    for plane, target in zip(planes, out):
        filter_plane(plane, target)
        if plan.strategy != "box":  # a box's block is always the whole image: its tail is always the same
            refilter_tail(filter_plane, plane, target, (anchor[0], weights.shape[1] - 1 - anchor[0]), border)
    return out.reshape(block.shape)


def _plane_filter(
    plan: KernelStrategy, weights: np.ndarray, anchor: tuple[int, int], border: int, dtype: np.dtype
) -> PlaneFilter:
    """The plan's OpenCV calls on one 2-D plane."""
    if plan.strategy == "box":
        return _box_filter(weights, anchor, border)
    if plan.strategy == "separable":
        terms = [(term[-1].astype(dtype), term[-2].astype(dtype)) for term in plan.factors]
    elif plan.strategy == "direct" and 1 in weights.shape:  # along one axis: never filter2D's DFT
        one = np.ones(1, dtype)
        terms = [(weights[0].astype(dtype), one) if weights.shape[0] == 1 else (one, weights[:, 0].astype(dtype))]
    else:
        kernel = weights.astype(dtype)
        return lambda plane, target: cv2.filter2D(plane, -1, kernel, dst=target, anchor=anchor, borderType=border)

    def passes(plane: np.ndarray, target: np.ndarray) -> None:
        cv2.sepFilter2D(plane, -1, *terms[0], dst=target, anchor=anchor, borderType=border)
        for row, column in terms[1:]:
            target += cv2.sepFilter2D(plane, -1, row, column, anchor=anchor, borderType=border)

    return passes


def _box_filter(weights: np.ndarray, anchor: tuple[int, int], border: int) -> PlaneFilter:
    """A constant kernel by OpenCV's running sums: the sum times the kernel's value (one pass when it is a mean)."""
    height, width = weights.shape
    value = float(weights.flat[0])
    if abs(value * width * height - 1.0) < 1e-12:  # a mean (a box of size m: weights 1/m²), normalised in float64 inside
        return lambda plane, target: cv2.boxFilter(plane, -1, (width, height), dst=target, anchor=anchor,
                                                   normalize=True, borderType=border)

    def scaled(plane: np.ndarray, target: np.ndarray) -> None:
        cv2.boxFilter(plane, -1, (width, height), dst=target, anchor=anchor, normalize=False, borderType=border)
        target *= target.dtype.type(value)

    return scaled


def _scipy(
    block: np.ndarray, plan: KernelStrategy, edge_mode: str, keep: tuple[slice, ...] | None, dtype: np.dtype
) -> np.ndarray:
    if plan.strategy == "separable":
        total = None
        for term in plan.factors:
            part = _separable_term(block, term, plan.origin, edge_mode, keep, dtype)
            total = part if total is None else total + part
        return total
    if plan.strategy == "fft":
        from scipy import signal  # 0.4 s to import: only when a job uses it

        flipped = plan.weights[(slice(None, None, -1),) * plan.weights.ndim].astype(block.dtype)
        same = signal.oaconvolve(_pad(block, plan, edge_mode), flipped, mode="valid").astype(block.dtype, copy=False)
        return _kept(same, keep)
    from scipy import ndimage  # imported when a block needs it: 2-D jobs on OpenCV never do (45 ms)

    if any(m // 2 >= n for m, n in zip(plan.weights.shape, block.shape)):
        # scipy.ndimage.correlate misreads `reflect` for kernels far longer than the axis
        # (scipy 1.17): extend the block ourselves, then keep the samples that need no border.
        same = ndimage.correlate(_pad(block, plan, edge_mode), plan.weights, mode="constant", origin=list(plan.origin))
        return _kept(same[tuple(slice(before, before + n) for (before, _), n in zip(_reach(plan), block.shape))], keep)
    return _kept(ndimage.correlate(block, plan.weights, mode=edge_mode, origin=list(plan.origin)), keep)


def _separable_term(
    block: np.ndarray, term: tuple[np.ndarray, ...], origin: tuple[int, ...], edge_mode: str,
    keep: tuple[slice, ...] | None, dtype: np.dtype,
) -> np.ndarray:
    """One outer-product term as 1-D passes: leading axes (z) first, then (y, x) with OpenCV.

    In a volume this filters each plane once with OpenCV's SIMD sepFilter2D instead of two
    scipy passes over the whole block. A pass along one axis mixes nothing across the others, so
    each axis is cropped to ``keep`` as soon as its pass is done (or at once, if none filters it):
    a slab read with a halo of slices is filtered in y and x only on the slices it keeps. A block of
    raw integers (``dtype`` its compute dtype) is converted by the first pass that reads it.
    """
    keep = keep or (slice(None),) * block.ndim
    plane_axes = (block.ndim - 2, block.ndim - 1)
    use_opencv = (
        block.ndim >= 3
        and dtype.type in CV_DTYPES
        and edge_mode in CV_BORDERS
        and _within([_reach_of(term[a].size, origin[a]) for a in plane_axes], [block.shape[a] for a in plane_axes])
    )
    later = [use_opencv and axis in plane_axes for axis in range(block.ndim)]
    part = block[tuple(wanted if term[axis].size == 1 else slice(None) for axis, wanted in enumerate(keep))]
    for axis, vector in enumerate(term):
        if vector.size > 1 and not later[axis]:
            part = _pass_along(part, vector, axis, origin[axis], edge_mode, keep[axis], dtype)
    part = part.astype(dtype, copy=False)  # raw integers no pass has read (a term not filtering z)
    if not use_opencv or (term[-1].size == 1 and term[-2].size == 1):
        return part
    planar = KernelStrategy(
        weights=np.multiply.outer(term[-2], term[-1]).reshape((1,) * (block.ndim - 2) + (term[-2].size, term[-1].size)),
        origin=(0,) * (block.ndim - 2) + origin[-2:],
        strategy="separable",
        engine="opencv",
        factors=(tuple(np.ones(1) for _ in range(block.ndim - 2)) + (term[-2], term[-1]),),
    )
    filtered = _opencv(np.ascontiguousarray(part), planar, edge_mode)
    return filtered[(Ellipsis, *(keep[axis] if later[axis] else slice(None) for axis in plane_axes))]


def _pass_along(
    block: np.ndarray, vector: np.ndarray, axis: int, origin: int, edge_mode: str, wanted: slice, dtype: np.dtype
) -> np.ndarray:
    """``correlate1d(block, vector, axis)[wanted along axis]``, computed on the samples it reads only,
    in ``dtype`` (raw integers are converted as they are read)."""
    size = block.shape[axis]
    start, stop, _ = wanted.indices(size)
    before, after = _reach_of(vector.size, origin)
    low, high = max(0, start - before), min(size, stop + after)
    # A border rule at a real edge must see what it would see on the whole axis: wrap reads the far
    # edge, and the reflecting rules read up to a kernel's length in from the edge.
    if (edge_mode == "wrap" and (low == 0 or high == size)) or high - low < vector.size:
        low, high = 0, size
    sub = block[(slice(None),) * axis + (slice(low, high),)]
    wanted_rows = slice(start - low, stop - low)
    leading = axis < block.ndim - 2  # rows of whole planes: long enough to pay for a call per tap
    if leading and dtype.type in CV_DTYPES and _within([(before, after)], [high - low]):
        return filter_along(sub, vector, axis, before, edge_mode, wanted_rows, dtype)
    from scipy import ndimage

    sub = sub.astype(dtype, copy=False)
    filtered = ndimage.correlate1d(sub, vector, axis=axis, mode=edge_mode, origin=origin)
    return filtered[(slice(None),) * axis + (wanted_rows,)]


# numpy.pad's names for scipy.ndimage's boundary modes
NUMPY_PAD_MODES = {"reflect": "symmetric", "mirror": "reflect", "nearest": "edge", "wrap": "wrap", "constant": "constant"}


def _pad(block: np.ndarray, plan: KernelStrategy, edge_mode: str) -> np.ndarray:
    """The block extended by the kernel's reach with the boundary rule (zeros for constant)."""
    return np.pad(block, _reach(plan), mode=NUMPY_PAD_MODES[edge_mode])


def _reach(plan: KernelStrategy) -> list[tuple[int, int]]:
    """Samples the kernel reads before and after the output sample, per axis."""
    return [_reach_of(m, o) for m, o in zip(plan.weights.shape, plan.origin)]


def _reach_of(size: int, origin: int) -> tuple[int, int]:
    return size // 2 + origin, size - 1 - (size // 2 + origin)
