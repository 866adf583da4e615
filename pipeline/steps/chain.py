"""Turn the validated ``steps:`` list into plain array → array functions, composed in order."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import dask.array as da

from pipeline.errors import KernelError
from pipeline.steps.convolve import convolve
from pipeline.steps.kernels import build_kernel
from pipeline.steps.normalize import normalize

if TYPE_CHECKING:
    from pipeline.config import ConvolveStep, NormalizeStep


@dataclass(frozen=True)
class Step:
    """One step: a name for logs and errors, the array function, and what provenance records."""

    name: str
    apply: Callable[[da.Array], da.Array] = field(repr=False)
    provenance: dict[str, Any] = field(repr=False)
    # True when the step leaves every image in [0, 1], so an integer output spans its full range.
    unit_range: bool = False


def build_steps(
    configs: Sequence[ConvolveStep | NormalizeStep], *, spatial_ndim: int, image_axes: int
) -> list[Step]:
    return [
        _convolve_step(cfg, spatial_ndim) if hasattr(cfg, "convolve") else _normalize_step(cfg, image_axes)
        for cfg in configs
    ]


def _convolve_step(cfg: ConvolveStep, spatial_ndim: int) -> Step:
    spec = cfg.convolve
    kernel = build_kernel(spec.kernel, spec.params)
    options = dict(mode=spec.mode, boundary=spec.boundary, cval=spec.cval, correlate=spec.correlate)
    return Step(
        name=f"convolve {kernel.source}",
        apply=partial(convolve, weights=kernel.weights, spatial_ndim=spatial_ndim, **options),
        provenance={"step": "convolve", "kernel": kernel.to_provenance(), **options},
    )


def _normalize_step(cfg: NormalizeStep, image_axes: int) -> Step:
    return Step(
        name=f"normalize {cfg.normalize}",
        apply=partial(normalize, how=cfg.normalize, image_axes=image_axes),
        provenance={"step": "normalize", "how": cfg.normalize},
        unit_range=True,
    )


def apply_steps(array: da.Array, steps: Sequence[Step]) -> tuple[da.Array, bool]:
    """Compose the steps lazily; also say whether the result is in [0, 1] (last step normalised)."""
    for index, step in enumerate(steps):
        try:
            array = step.apply(array)
        except KernelError as exc:
            raise KernelError(f"steps.{index} ({step.name}): {exc}") from None
    return array, bool(steps) and steps[-1].unit_range
