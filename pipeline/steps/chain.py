"""Turn the validated ``steps:`` list into array → array functions, composed in order.

Runs of consecutive convolve steps are handed to ``convolve_steps`` together, so that ``same``
steps share one halo exchange (one ``map_overlap``) instead of one each.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import dask.array as da
import numpy as np

from pipeline.errors import KernelError
from pipeline.steps.convolve import Convolution, HaloedSource, apply_group, group_planned, halo, plan_convolution
from pipeline.steps.kernels import build_kernel
from pipeline.steps.normalize import normalize

if TYPE_CHECKING:
    from pipeline.config import ConvolveStep, NormalizeStep


@dataclass(frozen=True)
class Step:
    """One step: a name for logs and errors, what it does, and what provenance records."""

    name: str
    provenance: dict[str, Any] = field(repr=False)
    convolution: Convolution | None = field(default=None, repr=False)
    apply: Callable[[da.Array], da.Array] | None = field(default=None, repr=False)
    # True when the step leaves every image in [0, 1], so an integer output spans its full range.
    unit_range: bool = False


@dataclass(frozen=True)
class Stage:
    """What one map_overlap/map_blocks stage of the graph does, for provenance and `pipeline plan`."""

    steps: tuple[int, ...]
    description: str
    halo: tuple[int, ...]  # samples exchanged with neighbouring chunks, per axis
    strategies: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]


@dataclass(frozen=True)
class ChainResult:
    array: da.Array
    unit_range: bool
    stages: tuple[Stage, ...]


def build_steps(configs: Sequence[ConvolveStep | NormalizeStep], *, image_axes: int = 1) -> list[Step]:
    """Steps from the validated config; convolutions learn the spatial axes from their array."""
    return [_convolve_step(cfg) if hasattr(cfg, "convolve") else _normalize_step(cfg, image_axes) for cfg in configs]


def _convolve_step(cfg: ConvolveStep) -> Step:
    spec = cfg.convolve
    kernel = build_kernel(spec.kernel, spec.params)
    options = dict(mode=spec.mode, boundary=spec.boundary, cval=spec.cval, correlate=spec.correlate)
    return Step(
        name=f"convolve {kernel.source}",
        convolution=Convolution(kernel.weights, strategy=spec.strategy, **options),
        provenance={"step": "convolve", "kernel": kernel.to_provenance(), **options},
    )


def _normalize_step(cfg: NormalizeStep, image_axes: int) -> Step:
    return Step(
        name=f"normalize {cfg.normalize}",
        apply=partial(normalize, how=cfg.normalize, image_axes=image_axes),
        provenance={"step": "normalize", "how": cfg.normalize},
        unit_range=True,
    )


def chain(
    array: da.Array, steps: Sequence[Step], *, spatial_ndim: int, haloed: HaloedSource | None = None
) -> ChainResult:
    """Compose the steps lazily and describe each stage of the resulting graph.

    ``haloed`` reads the source ``array`` again with a halo; the first stage uses it, if it is a
    run of ``same`` convolutions, instead of exchanging halos between chunks.
    """
    stages: list[Stage] = []
    index = 0
    while index < len(steps):
        step = steps[index]
        if step.convolution is None:
            array = step.apply(array)
            stages.append(_stage(array, (index,), step.name, (0,) * array.ndim, ()))
            index += 1
            continue
        run = [index]
        while run[-1] + 1 < len(steps) and steps[run[-1] + 1].convolution is not None:
            run.append(run[-1] + 1)
        array = _convolve_run(array, steps, run, spatial_ndim, stages, haloed if index == 0 else None)
        index = run[-1] + 1
    return ChainResult(array, bool(steps) and steps[-1].unit_range, tuple(stages))


def _convolve_run(
    array: da.Array, steps: Sequence[Step], run: list[int], spatial_ndim: int, stages: list[Stage],
    haloed: HaloedSource | None,
) -> da.Array:
    planned = []
    for index in run:  # planned one by one, so that an error names its step
        with _named(steps, index):
            planned.append(
                plan_convolution(steps[index].convolution, ndim=array.ndim, spatial_ndim=spatial_ndim, dtype=array.dtype)
            )
    groups = group_planned(planned)
    position = 0
    for number, group in enumerate(groups):
        members = tuple(run[position : position + len(group)])
        position += len(group)
        depth = halo(array, group)[0] if group[0].convolution.mode == "same" else {}
        with _named(steps, members[0]):
            array = apply_group(array, group, spatial_ndim=spatial_ndim, haloed=haloed if number == 0 else None)
        exchanged = tuple(depth.get(axis, 0) for axis in range(array.ndim))
        strategies = tuple(planned.plan.describe() for planned in group)
        stages.append(_stage(array, members, " + ".join(steps[i].name for i in members), exchanged, strategies))
    return array


@contextmanager
def _named(steps: Sequence[Step], index: int) -> Iterator[None]:
    try:
        yield
    except KernelError as exc:
        raise KernelError(f"steps.{index} ({steps[index].name}): {exc}") from None


def _stage(array: da.Array, members: tuple[int, ...], name: str, halo: tuple[int, ...], strategies: tuple[str, ...]) -> Stage:
    return Stage(members, name, halo, strategies, tuple(array.shape), tuple(array.chunksize))


def leading_reach(steps: Sequence[Step]) -> tuple[int, ...]:
    """How far the run of ``same`` convolutions the steps start with reaches, per spatial axis (x last).

    It is the halo a tile or slab must be read with (``wrap`` takes its halo from the far side
    instead, and other steps start no run).
    """
    reach: tuple[int, ...] = ()
    for step in steps:
        convolution = step.convolution
        if convolution is None or convolution.mode != "same" or convolution.boundary == "wrap":
            break
        own = tuple(m // 2 for m in np.shape(convolution.weights))
        width = max(len(reach), len(own))
        reach = tuple(a + b for a, b in zip((0,) * (width - len(reach)) + reach, (0,) * (width - len(own)) + own))
    return reach


def output_range(steps: Sequence[Step], values: tuple[float, float]) -> tuple[float, float]:
    """The values the steps can produce from inputs in ``values`` (low, high).

    A convolution's output lies between ``P·low + N·high`` and ``P·high + N·low``, with P and N the
    sums of its positive and negative weights; the samples it may see beyond the image (``cval``,
    the zeros of ``full``) join the input's range first. A blur keeps the input's range, an edge
    kernel widens it. ``normalize`` gives [0, 1].
    """
    low, high = values
    for step in steps:
        if step.unit_range:
            low, high = 0.0, 1.0
            continue
        convolution = step.convolution
        if convolution is None:
            continue
        outside = {"full": 0.0, "same": convolution.cval if convolution.boundary == "constant" else None}.get(convolution.mode)
        if outside is not None:
            low, high = min(low, outside), max(high, outside)
        weights = np.asarray(convolution.weights, dtype=np.float64)
        positive, negative = float(weights[weights > 0].sum()), float(weights[weights < 0].sum())
        with np.errstate(invalid="ignore"):  # 0 × inf: a sum that is zero contributes nothing
            low, high = (
                np.nansum([positive * low, negative * high]),
                np.nansum([positive * high, negative * low]),
            )
    return float(low), float(high)


def apply_steps(array: da.Array, steps: Sequence[Step], *, spatial_ndim: int = 2) -> tuple[da.Array, bool]:
    """Compose the steps lazily; also say whether the result is in [0, 1] (last step normalised)."""
    result = chain(array, steps, spatial_ndim=spatial_ndim)
    return result.array, result.unit_range
