"""The validated ``steps:`` list as Step objects, composed lazily into as few passes as the steps allow.

The chain, not the step, decides fusion. Neighbouring ``neighbourhood`` steps (``same``
convolutions and layers) and ``pointwise`` steps (activations) share ONE overlapped pass whose halo
is the sum of their reaches: each step runs in turn on the haloed block, what its border rule
spoils near an inner block edge lies inside the summed halo, and the halo is trimmed after the
last neighbourhood step (pointwise steps after it run on the trimmed block). Dask pads nothing at
the outer edge: each step's own border rule handles it there, except ``wrap``, which takes real
neighbours from the far side (dask's periodic halo). When an image is one chunk (the default) a
pass needs no halo at all and is one blockwise task per image, which dask fuses with the decode
before it and the write after it.

``resize`` steps (valid/full, strides, pools) and ``whole`` steps (normalize) each end a pass; a
pool whose windows do not overlap joins the pass before it when the pass's blocks lie on its grid
(whole images always do), and a ``same`` layer followed by pointwise steps and such a pool then
runs band by band (banded.py): rows of its result through the activations and the pool as soon
as they are computed, so the K full-size maps of an image never exist, only the pooled ones.

A source that can read its chunks again with a halo (tiles of a huge TIFF, slabs of a volume)
replaces the halo exchange for the first pass: each block is read with its halo, filtered, and only
its own samples are returned, so a task depends on no neighbour's. When the pass's first step
converts raw integers as it reads them (``Step.takes_raw``: a separable kernel along z), a volume's
slabs come in the type their file stores (16-bit: half the bytes, and no converted copy of the slab).
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import dask.array as da
import numpy as np
from dask.array.overlap import ensure_minimum_chunksize

from pipeline.errors import KernelError
from pipeline.steps.banded import banded, bands_into_pool
from pipeline.steps.base import ImageShape, Step, blockwise_chunks
from pipeline.steps.convolve import Convolution, ConvolveStep

if TYPE_CHECKING:
    from pydantic import BaseModel

# Reads the source again with each chunk widened by a halo ({axis: samples}, dask's overlap layout);
# raw=True asks for the pixel type the files store where the compute dtype holds it exactly.
HaloedSource = Callable[..., da.Array]


@dataclass(frozen=True)
class Stage:
    """What one pass of the graph does, for provenance and `pipeline plan`."""

    steps: tuple[int, ...]
    description: str
    halo: tuple[int, ...]  # samples exchanged with (or read from) neighbouring chunks, per axis
    strategies: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    reproducible: bool = True  # False when an FFT makes the bytes depend on the block size
    channels: int = 1  # of each image after the pass
    records: tuple[dict[str, Any], ...] = ()  # per step, what provenance adds to its strategy


@dataclass(frozen=True)
class ChainResult:
    array: da.Array
    image: ImageShape  # one result image's shape and axes
    unit_range: bool
    stages: tuple[Stage, ...]


def build_steps(configs: Sequence[BaseModel]) -> list[Step]:
    """Steps from validated config models, each built by the module its kind names (config.STEP_KINDS)."""
    from pipeline.step_kinds import STEP_KINDS, step_kind

    steps = []
    for cfg in configs:
        kind = step_kind(cfg)
        steps.append(importlib.import_module(STEP_KINDS[kind].module).build(getattr(cfg, kind)))
    return steps


def default_image(array: da.Array, spatial_ndim: int) -> ImageShape:
    """The per-image layout of an (image, [c], spatial…) array: a channel axis when there is one more axis."""
    shape = tuple(array.shape[1:])
    names = ("z", "y", "x")[-spatial_ndim:] if spatial_ndim <= 3 else tuple(f"d{i}" for i in range(spatial_ndim))
    axes = (*(("c",) if len(shape) > spatial_ndim else ()), *names)
    return ImageShape(shape, axes[-len(shape):] if len(axes) >= len(shape) else axes)


def chain(
    array: da.Array, steps: Sequence[Step], *, image: ImageShape | None = None, spatial_ndim: int = 2,
    haloed: HaloedSource | None = None,
) -> ChainResult:
    """Compose the steps lazily, pass by pass, and describe each pass.

    ``image`` is one input image's layout (default: from the array, ``spatial_ndim`` trailing axes
    spatial). ``haloed`` reads the source ``array`` again with a halo; the first pass uses it.
    """
    image = image or default_image(array, spatial_ndim)
    stages: list[Stage] = []
    index = 0
    while index < len(steps):
        first = steps[index]
        if getattr(first, "adds_channels", False) and "c" not in image.axes:
            array, image = array[:, np.newaxis], ImageShape((1, *image.shape), ("c", *image.axes))
            haloed = None if haloed is None else _with_channel_axis(haloed)
        members = _pass_members(steps, index, image) if first.fusion in ("neighbourhood", "pointwise") else (index,)
        if first.fusion in ("neighbourhood", "pointwise"):
            members = _with_pool(array, steps, members, image, haloed if index == 0 else None)
        checked = image
        for member in members:  # each step checked on what it gets, so that an error names its step
            with _named(steps, member):
                steps[member].check(checked)
                steps[member].strategy_of(array.ndim, checked, array.dtype)
            checked = steps[member].output(checked)
        with _named(steps, index):
            if first.fusion in ("neighbourhood", "pointwise"):
                chosen = [steps[i] for i in members]
                halo = _halo_of(array, chosen, image)
                array, out = overlapped_pass(array, chosen, image, haloed=haloed if index == 0 else None)
            else:
                halo = (0,) * array.ndim
                array = first.apply_resize(array, image, overlapped_pass_array) if first.fusion == "resize" else first.apply(array, image)
                out = first.output(image)
        stages.append(_stage(array, members, steps, image, halo, out))
        image, index = out, members[-1] + 1
    return ChainResult(array, image, bool(steps) and steps[-1].unit_range, tuple(stages))


def _with_channel_axis(haloed: HaloedSource) -> HaloedSource:
    def read(depth: dict[int, int], raw: bool = False) -> da.Array:
        return haloed({axis - 1: reach for axis, reach in depth.items() if axis > 1}, raw=raw)[:, np.newaxis]

    return read


def _pass_members(steps: Sequence[Step], index: int, image: ImageShape) -> tuple[int, ...]:
    """The run of steps from ``index`` that shares one pass: neighbourhood and pointwise steps, all
    wrapping or none (a periodic halo serves wrapping steps only), no step adding channels mid-run."""
    members = [index]
    wraps = getattr(steps[index], "wraps", None)
    while members[-1] + 1 < len(steps):
        step = steps[members[-1] + 1]
        if step.fusion not in ("neighbourhood", "pointwise") or getattr(step, "adds_channels", False) and "c" not in image.axes:
            break
        if step.fusion == "neighbourhood":
            if wraps is not None and step.wraps != wraps:
                break
            wraps = step.wraps
        members.append(members[-1] + 1)
    return tuple(members)


def _with_pool(array: da.Array, steps: Sequence[Step], members: tuple[int, ...], image: ImageShape,
               haloed: HaloedSource | None) -> tuple[int, ...]:
    """The members and the pool after them, when the pool can pool the pass's blocks on their own."""
    after = members[-1] + 1
    joins = getattr(steps[after], "joins_pass", None) if after < len(steps) else None
    if joins is None:
        return members
    chunks = _pass_input(array, [steps[i] for i in members], image, haloed)[0].chunks[-2:]
    return (*members, after) if image.spatial_ndim >= 2 and joins(chunks) else members


def _reach(steps: Sequence[Step], image: ImageShape) -> tuple[int, ...]:
    spatial = image.spatial_ndim
    total = [0] * spatial
    for step in steps:
        for axis, reach in enumerate(step.reach(spatial)):
            total[axis] += reach
    return tuple(total)


def _depths(array: da.Array, steps: Sequence[Step], image: ImageShape) -> tuple[dict[int, int], dict[int, int], bool]:
    """The halo each axis exchanges for a pass, the axes taken whole, and whether the halo wraps.

    An axis held in one chunk needs none (the block has every neighbour), unless it wraps; a halo
    longer than the axis takes the axis whole.
    """
    wrap = any(getattr(step, "wraps", False) for step in steps)
    lead = array.ndim - image.spatial_ndim
    depth: dict[int, int] = {}
    whole: dict[int, int] = {}
    for offset, reach in enumerate(_reach(steps, image)):
        axis = lead + offset
        if reach == 0 or (len(array.chunks[axis]) == 1 and not wrap):
            continue
        if reach >= array.shape[axis]:
            whole[axis] = -1
        else:
            depth[axis] = reach
    return depth, whole, wrap


def _halo_of(array: da.Array, steps: Sequence[Step], image: ImageShape) -> tuple[int, ...]:
    depth, _, _ = _depths(array, steps, image)
    return tuple(depth.get(axis, 0) for axis in range(array.ndim))


def overlapped_pass(
    array: da.Array, steps: Sequence[Step], image: ImageShape, *, haloed: HaloedSource | None = None
) -> tuple[da.Array, ImageShape]:
    """One pass: the steps in turn on every block, with the summed halo; returns the array and its image."""
    out = pooled = image
    for step in steps:
        pooled, out = out, step.output(out)  # pooled: the image a pool ending the pass gets
    array, depth, wrap, periodic, reread = _pass_input(array, steps, image, haloed)
    # spatial sizes are kept by a pass, but for a pool ending it; channels a layer changes are taken whole
    array, chunks = blockwise_chunks(array, image, ImageShape((*out.shape[: len(out.shape) - image.spatial_ndim], *image.shape[len(image.shape) - image.spatial_ndim :]), out.axes))
    if hasattr(steps[-1], "joins_pass"):
        chunks = (*chunks[:-2], *steps[-1].chunks_of(array.chunks[-2:], pooled))
    options = dict(
        chunks=chunks, dtype=array.dtype, meta=np.empty((0,) * array.ndim, dtype=array.dtype),
        steps=tuple(steps), image=image, grid=array.chunks,
    )
    if not depth:  # every block holds its neighbours (whole images): a plain blockwise task fuses
        return array.map_blocks(_pass_block, **options), out
    if reread:  # each task reads, filters and trims its own block: no neighbour's
        raw = steps[0].takes_raw(array.ndim, image, array.dtype) and not bands_into_pool(steps)
        source = haloed(depth, raw=raw)
        if raw:  # the first step converts the blocks as it reads them
            options["compute"] = np.dtype(array.dtype)
    else:
        source = da.overlap.overlap(array, depth=depth, boundary={axis: "periodic" if wrap else "none" for axis in depth})
    return source.map_blocks(_pass_haloed, halo=depth, wrapped=wrap, periodic=periodic, **options), out


def _pass_input(array: da.Array, steps: Sequence[Step], image: ImageShape, haloed: HaloedSource | None
                ) -> tuple[da.Array, dict[int, int], bool, bool, bool]:
    """The array rechunked for a pass, its halo, whether the halo wraps, whether the steps may rely
    on that (no axis taken whole), and whether the source is read again with the halo instead."""
    depth, whole, wrap = _depths(array, steps, image)
    if whole:
        array = array.rechunk(whole)
    reread = haloed is not None and bool(depth) and not wrap and not whole
    if depth and not reread:  # no chunk smaller than its halo (dask's overlap would rechunk otherwise)
        array = array.rechunk({axis: ensure_minimum_chunksize(reach, array.chunks[axis]) for axis, reach in depth.items()})
    return array, depth, wrap, wrap and not whole, reread


def overlapped_pass_array(array: da.Array, steps: Sequence[Step], image: ImageShape) -> da.Array:
    return overlapped_pass(array, steps, image)[0]


def _pass_block(block: np.ndarray, *, steps: tuple[Step, ...], image: ImageShape, keep: tuple[slice, ...] | None = None,
                grid: tuple[tuple[int, ...], ...], periodic: bool = False, origin: tuple[int, ...] | None = None,
                block_info: dict | None = None, compute: np.dtype | None = None) -> np.ndarray:
    """The steps in turn; the last neighbourhood step returns only ``keep``, the rest runs on that.

    ``origin`` is where the block's first sample lies in the image (spatial axes): engines whose
    bytes depend on how their work is cut (BLAS) line it up with the image, whatever the tiling.
    ``compute``: the pass's dtype, when the chain chose to hand the first step its blocks in their
    file's type (``Step.takes_raw``): that step converts them as it reads them.
    """
    raw = {} if compute is None or block.dtype == compute else {"compute": compute}
    if origin is None and block_info is not None:
        origin = tuple(start for start, _ in _location(block_info, grid)[-image.spatial_ndim:])
    last = max((i for i, step in enumerate(steps) if step.fusion == "neighbourhood"), default=-1)
    if last < 0 and keep is not None:
        block = block[keep]
    for index, step in enumerate(steps):
        if index == last and bands_into_pool(steps[index:]):
            return banded(block, step, steps[index + 1 :], image, keep=keep, periodic=periodic, origin=origin)
        if step.fusion == "neighbourhood":
            extra = raw if index == 0 else {}
            block = step.block(block, image, keep=keep if index == last else None, periodic=periodic, origin=origin, **extra)
        else:
            block = step.block(block, image)
        image = step.output(image)
    return block


def _pass_haloed(
    block: np.ndarray, *, halo: dict[int, int], wrapped: bool, periodic: bool, block_info: dict, **options: Any
) -> np.ndarray:
    """A block read (or exchanged) with its ``halo``: filtered whole, returned without the halo.

    ``wrapped``: the halo came from the far side at the array's edges too; ``periodic``: the steps
    may rely on it instead of wrapping by themselves (no axis of the pass was taken whole).
    """
    location = _location(block_info, options["grid"])
    keep = _own_samples(halo, location, wrapped)
    origin = tuple(start - own.start for (start, _), own in zip(location, keep))
    return _pass_block(block, keep=keep, periodic=periodic, origin=origin[-options["image"].spatial_ndim:], **options)


def _location(block_info: dict, grid: tuple[tuple[int, ...], ...]) -> list[tuple[int, int]]:
    """Where a task's block lies in the pass's input (chunks ``grid``; the output's are pooled when a
    pool ends the pass)."""
    starts = [sum(sizes[:index]) for sizes, index in zip(grid, block_info[None]["chunk-location"])]
    return [(start, start + sizes[index]) for start, sizes, index in zip(starts, grid, block_info[None]["chunk-location"])]


def _own_samples(halo: dict[int, int], location: Sequence[tuple[int, int]], periodic: bool) -> tuple[slice, ...]:
    """Where a block's own samples lie once widened by ``halo`` (none before the array's start, unless periodic)."""
    keep = []
    for axis, (start, stop) in enumerate(location):
        before = halo.get(axis, 0) if periodic else min(start, halo.get(axis, 0))
        keep.append(slice(before, before + stop - start))
    return tuple(keep)


@contextmanager
def _named(steps: Sequence[Step], index: int) -> Iterator[None]:
    try:
        yield
    except KernelError as exc:
        raise KernelError(f"steps.{index} ({steps[index].name}): {exc}") from None
    except ValueError as exc:  # a step's own check (pool larger than the image, channels that do not match)
        raise KernelError(f"steps.{index} ({steps[index].name}): {exc}") from None


def _stage(
    array: da.Array, members: Sequence[int], steps: Sequence[Step], image: ImageShape, halo: tuple[int, ...], out: ImageShape
) -> Stage:
    chosen = [steps[i] for i in members]
    ndim = array.ndim if len(image.shape) + 1 == array.ndim else len(image.shape) + 1
    described = [step.strategy_of(ndim, image, array.dtype) for step in chosen]
    return Stage(
        tuple(members), " + ".join(step.name for step in chosen), halo, tuple(text for text, _ in described),
        tuple(array.shape), tuple(array.chunksize), all(reproducible for _, reproducible in described), out.channels,
        tuple(step.strategy_record(ndim, image, array.dtype) for step in chosen),
    )


def leading_reach(steps: Sequence[Step]) -> tuple[int, ...]:
    """How far the first pass's neighbourhood steps reach, per spatial axis (x last).

    It is the halo a tile or slab must be read with (``wrap`` takes its halo from the far side
    instead; a resize step ends the pass).
    """
    reach: tuple[int, ...] = ()
    for step in steps:
        if step.fusion == "pointwise":
            continue
        if step.fusion != "neighbourhood" or getattr(step, "wraps", False):
            break
        own = tuple(m // 2 for m in step.window)
        width = max(len(reach), len(own))
        reach = tuple(a + b for a, b in zip((0,) * (width - len(reach)) + reach, (0,) * (width - len(own)) + own))
    return reach


def output_range(steps: Sequence[Step], values: tuple[float, float]) -> tuple[float, float]:
    """The values the steps can produce from inputs in ``values`` (low, high), step by step."""
    low, high = values
    for step in steps:
        low, high = step.value_range(low, high)
    return float(low), float(high)


def apply_steps(array: da.Array, steps: Sequence[Step], *, spatial_ndim: int = 2) -> tuple[da.Array, bool]:
    """Compose the steps lazily; also say whether the result is in [0, 1] (last step normalised)."""
    result = chain(array, steps, spatial_ndim=spatial_ndim)
    return result.array, result.unit_range


def convolve(
    array: da.Array, weights: np.ndarray, *, mode: str = "same", boundary: str = "reflect", cval: float = 0.0,
    correlate: bool = False, strategy: str = "auto", spatial_ndim: int = 2,
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
    step = ConvolveStep(Convolution(np.asarray(weights), mode=mode, boundary=boundary, cval=cval, correlate=correlate, strategy=strategy))
    names = ("z", "y", "x")[-spatial_ndim:]
    lead = array.ndim - spatial_ndim
    image = ImageShape(tuple(array.shape[lead:]), names)
    if lead == 0:  # a single signal or image: the chain wants a leading axis of images
        return chain(array[np.newaxis], [step], image=image).array[0]
    if lead > 1:  # several leading axes: every one but the first is a channel-like axis
        image = ImageShape(tuple(array.shape[1:]), (*(f"c{i}" for i in range(lead - 1)), *names))
    return chain(array, [step], image=image).array
