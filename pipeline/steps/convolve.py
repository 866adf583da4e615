"""Overlapping-block convolution of Dask arrays: ``same``, ``valid`` ("narrow") and ``full`` ("wide").

The leading axes of the array (image index, channel) are never convolved; the kernel applies to the
trailing ``spatial_ndim`` axes, and a kernel with fewer dimensions than that acts along the last
axes (a 1-D kernel filters rows).

Every mode reduces to a per-block correlation (``strategies.correlate_block``, whose oracle is
``scipy.ndimage.correlate``):

* true convolution is correlation with the flipped kernel, and for ``same`` with an even-sized kernel
  the origin shifts by one sample exactly as ``scipy.ndimage.convolve`` does, so results agree with it;
* ``valid`` keeps the centred correlation where the kernel lies fully inside, i.e. the ``same`` result
  cropped by the kernel's reach; ``full`` is ``valid`` on the image padded with ``m - 1`` zeros,
  which is the seed's definition (values outside the image are 0), as ``scipy.signal.convolve``.

Consecutive ``same`` steps are fused into ONE ``map_overlap`` whose halo is the sum of their reaches:
each kernel runs in turn on the haloed block, and what its border rule spoils near an inner block
edge lies inside the summed halo, which is trimmed. Dask pads nothing at the outer edge
(``boundary="none"``): the block function's own mode handles it there, except ``wrap``, which needs
real neighbours from the far side (dask's ``periodic``). When an image is one chunk (the default),
``valid`` and ``full`` need no halo at all and run as plain ``map_blocks``.

A source that can read its chunks again with a halo (tiles of a huge TIFF, slabs of a volume)
replaces the exchange for the first run of steps: each block is read with its halo, filtered, and
only its own samples are returned, so a task depends on no neighbour's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import dask.array as da
import numpy as np

from pipeline.errors import KernelError
from pipeline.steps.strategies import STRATEGIES, KernelPlan, choose_engine, correlate_block, plan_kernel

Mode = Literal["same", "valid", "full"]
Boundary = Literal["reflect", "nearest", "mirror", "wrap", "constant"]
MODES: tuple[str, ...] = ("same", "valid", "full")
BOUNDARIES: tuple[str, ...] = ("reflect", "nearest", "mirror", "wrap", "constant")


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


@dataclass(frozen=True)
class Convolution:
    """One convolve step as data: the kernel in convolution orientation and how to apply it."""

    weights: np.ndarray
    mode: Mode = "same"
    boundary: Boundary = "reflect"
    cval: float = 0.0
    correlate: bool = False
    strategy: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise KernelError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.boundary not in BOUNDARIES:
            raise KernelError(f"boundary must be one of {', '.join(BOUNDARIES)}; got {self.boundary!r}")
        if self.strategy not in ("auto", *STRATEGIES):
            raise KernelError(f"strategy must be auto or one of {', '.join(STRATEGIES)}; got {self.strategy!r}")


@dataclass(frozen=True)
class PlannedConvolution:
    """A convolution bound to an array's dimensions and dtype: the per-block plan and border rule."""

    convolution: Convolution
    plan: KernelPlan
    edge_mode: str  # the border rule blocks apply; `wrap` is served by dask's periodic halo instead
    cval: float

    @property
    def reach(self) -> tuple[int, ...]:
        return tuple(m // 2 for m in self.plan.weights.shape)


def plan_convolution(
    convolution: Convolution, *, ndim: int, spatial_ndim: int, dtype: np.dtype
) -> PlannedConvolution:
    kernel = _expand_kernel(np.asarray(convolution.weights, dtype=np.float64), ndim, spatial_ndim)
    kernel, origin = _correlation_form(kernel, correlate=convolution.correlate, mode=convolution.mode)
    if convolution.mode == "same" and convolution.boundary != "wrap":
        edge_mode, cval = convolution.boundary, convolution.cval
    else:
        # valid/full crop away every sample a border rule touches, and `wrap` gets real neighbours
        # from dask's periodic halo: any rule will do, so pick the one every engine has.
        edge_mode, cval = "reflect", 0.0
    engine = choose_engine(dtype, kernel, edge_mode)
    plan = plan_kernel(kernel, origin, engine=engine, dtype=dtype, strategy=convolution.strategy)
    return PlannedConvolution(convolution, plan, edge_mode, cval)


def convolve(
    array: da.Array,
    weights: np.ndarray,
    *,
    mode: Mode = "same",
    boundary: Boundary = "reflect",
    cval: float = 0.0,
    correlate: bool = False,
    strategy: str = "auto",
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
    strategy : {"auto", "direct", "separable", "fft"}
        How blocks are computed; ``auto`` picks the cheapest for the kernel.
    spatial_ndim : int
        How many trailing axes are spatial.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> x = da.from_array(np.array([1.0, 2.0, 3.0]), chunks=2)
    >>> convolve(x, np.array([1.0, 1.0]), mode="full", spatial_ndim=1).compute()
    array([1., 3., 5., 3.])
    """
    step = Convolution(weights, mode=mode, boundary=boundary, cval=cval, correlate=correlate, strategy=strategy)
    return convolve_steps(array, [step], spatial_ndim=spatial_ndim)


def convolve_steps(array: da.Array, steps: Sequence[Convolution], *, spatial_ndim: int) -> da.Array:
    """Apply convolutions in order, fusing each run of ``same`` steps into one ``map_overlap``."""
    for group in fusable_groups(array, steps, spatial_ndim=spatial_ndim):
        array = apply_group(array, group, spatial_ndim=spatial_ndim)
    return array


# Reads ``array`` again with each chunk widened by a halo ({axis: samples}, dask's overlap layout).
HaloedSource = Callable[[dict[int, int]], da.Array]


def apply_group(
    array: da.Array, group: Sequence[PlannedConvolution], *, spatial_ndim: int, haloed: HaloedSource | None = None
) -> da.Array:
    """One stage of the graph: a fused run of ``same`` steps, or one ``valid``/``full`` step.

    ``haloed``, when ``array`` is a source that can read its chunks with their halo (tiles, slabs),
    replaces the halo exchange between neighbouring chunks for a ``same`` run.
    """
    if group[0].convolution.mode == "same":
        return _overlap_chain(array, list(group), haloed=haloed)
    return _resize(array, group[0], spatial_ndim)


def fusable_groups(
    array: da.Array, steps: Sequence[Convolution], *, spatial_ndim: int
) -> list[list[PlannedConvolution]]:
    """Plan each step and group runs of ``same`` steps that share one halo exchange."""
    planned = [plan_convolution(step, ndim=array.ndim, spatial_ndim=spatial_ndim, dtype=array.dtype) for step in steps]
    return group_planned(planned)


def group_planned(planned: Sequence[PlannedConvolution]) -> list[list[PlannedConvolution]]:
    """Runs of consecutive ``same`` steps (all wrapping, or none) become one group each."""
    groups: list[list[PlannedConvolution]] = []
    for step in planned:
        last = groups[-1][-1].convolution if groups else None
        current = step.convolution
        if (
            last is not None
            and current.mode == last.mode == "same"
            and (current.boundary == "wrap") == (last.boundary == "wrap")
        ):
            groups[-1].append(step)
        else:
            groups.append([step])
    return groups


def _correlate_chain(
    block: np.ndarray,
    *,
    plans: tuple[KernelPlan, ...],
    edge_modes: tuple[str, ...],
    cvals: tuple[float, ...],
    keep: tuple[slice, ...] | None = None,
) -> np.ndarray:
    """The kernels in turn; only the ``keep`` region of the last one is computed, where it can be."""
    for index, (plan, edge_mode, cval) in enumerate(zip(plans, edge_modes, cvals)):
        last = index == len(plans) - 1
        block = correlate_block(block, plan, edge_mode=edge_mode, cval=cval, keep=keep if last else None)
    return block


def _correlate_haloed(block: np.ndarray, *, halo: dict[int, int], block_info: dict, **options) -> np.ndarray:
    """A block read with its ``halo``: filtered whole, returned without the halo."""
    return _correlate_chain(block, keep=_own_samples(halo, block_info[None]["array-location"]), **options)


def _own_samples(halo: dict[int, int], location: Sequence[tuple[int, int]]) -> tuple[slice, ...]:
    """Where a block's own samples lie in it once widened by ``halo`` (none before the array's start)."""
    keep = []
    for axis, (start, stop) in enumerate(location):
        before = min(start, halo.get(axis, 0))
        keep.append(slice(before, before + stop - start))
    return tuple(keep)


def halo(array: da.Array, group: Sequence[PlannedConvolution]) -> tuple[dict[int, int], dict[int, int]]:
    """The halo each axis exchanges for a fused group, and the axes that must be taken whole.

    The halo is the sum of the kernels' reaches; an axis held in one chunk needs none (the block
    has every neighbour), unless it wraps; a halo longer than the axis takes the axis whole.
    """
    wrap = group[0].convolution.boundary == "wrap"
    depth: dict[int, int] = {}
    whole: dict[int, int] = {}
    for axis in range(array.ndim):
        reach = sum(planned.reach[axis] for planned in group)
        if reach == 0 or (len(array.chunks[axis]) == 1 and not wrap):
            continue
        if reach >= array.shape[axis]:
            whole[axis] = -1
        else:
            depth[axis] = reach
    return depth, whole


def _overlap_chain(array: da.Array, group: list[PlannedConvolution], *, haloed: HaloedSource | None = None) -> da.Array:
    wrap = group[0].convolution.boundary == "wrap"
    depth, whole = halo(array, group)
    if whole:
        array = array.rechunk(whole)
        if wrap:  # no periodic halo along a whole axis: blocks must wrap by themselves
            group = [_with_edge(planned, "wrap", array.dtype) for planned in group]
    options = dict(
        dtype=array.dtype,
        meta=np.empty((0,) * array.ndim, dtype=array.dtype),
        plans=tuple(planned.plan for planned in group),
        edge_modes=tuple(planned.edge_mode for planned in group),
        cvals=tuple(planned.cval for planned in group),
    )
    if not depth:  # every block holds its neighbours (whole images): a plain blockwise task fuses
        return array.map_blocks(_correlate_chain, **options)
    if haloed is not None and not wrap and not whole:
        # Read again with the halo: each task reads, filters and trims its own block, and depends on
        # no neighbour (no halo copies, nothing held for a neighbour, no concatenation).
        return haloed(depth).map_blocks(_correlate_haloed, chunks=array.chunks, halo=depth, **options)
    return array.map_overlap(_correlate_chain, depth=depth, boundary="periodic" if wrap else "none", **options)


def _with_edge(planned: PlannedConvolution, edge_mode: str, dtype: np.dtype) -> PlannedConvolution:
    plan = planned.plan  # OpenCV has no wrap border: scipy computes these blocks
    replanned = plan_kernel(plan.weights, plan.origin, engine="scipy", dtype=dtype, strategy=planned.convolution.strategy)
    return PlannedConvolution(planned.convolution, replanned, edge_mode, planned.cval)


def _resize(array: da.Array, planned: PlannedConvolution, spatial_ndim: int) -> da.Array:
    """``valid`` or ``full``: the centred correlation, zero-padded first for ``full``, then cropped."""
    mode = planned.convolution.mode
    sizes = array.shape[-spatial_ndim:]
    reach = planned.plan.weights.shape[-spatial_ndim:]
    if mode == "valid":
        too_big = [(n, m) for n, m in zip(sizes, reach) if m > n]
        if too_big:
            raise KernelError(
                f"kernel of shape {tuple(reach)} is larger than the image {tuple(sizes)} "
                f"for mode 'valid' (which keeps only positions where the kernel fits); "
                f"use mode 'same' or 'full', or a smaller kernel"
            )
    pad = tuple((m - 1, m - 1) if mode == "full" else (0, 0) for m in reach)
    lead = array.ndim - spatial_ndim
    if all(len(chunks) == 1 for chunks in array.chunks[lead:]):
        out_sizes = tuple(n + sum(p) - m + 1 for n, m, p in zip(sizes, reach, pad))
        return array.map_blocks(
            _resize_block,
            chunks=(*array.chunks[:lead], *((n,) for n in out_sizes)),
            dtype=array.dtype,
            meta=np.empty((0,) * array.ndim, dtype=array.dtype),
            planned=planned,
            pad=((0, 0),) * lead + pad,
        )
    if mode == "full":
        array = da.pad(array, ((0, 0),) * lead + pad, mode="constant", constant_values=0)
        sizes = array.shape[-spatial_ndim:]
    result = _overlap_chain(array, [planned])
    crop = tuple(slice(m // 2, m // 2 + n - m + 1) for n, m in zip(sizes, reach))
    return result[(Ellipsis, *crop)]


def _resize_block(block: np.ndarray, *, planned: PlannedConvolution, pad: tuple[tuple[int, int], ...]) -> np.ndarray:
    if any(before or after for before, after in pad):
        block = np.pad(block, pad)
    same = correlate_block(block, planned.plan, edge_mode=planned.edge_mode, cval=planned.cval)
    crop = tuple(slice(m // 2, m // 2 + n - m + 1) for n, m in zip(block.shape, planned.plan.weights.shape))
    return same[crop]
