"""The ``convolve`` step: one kernel over the trailing spatial axes, each channel on its own.

The leading axes of the array (image, channel) are never convolved; the kernel applies to the
trailing spatial axes, and a kernel with fewer dimensions than that acts along the last axes (a
1-D kernel filters rows).

Every mode reduces to a per-block correlation (``strategies.correlate_block``, whose oracle is
``scipy.ndimage.correlate``):

* true convolution is correlation with the flipped kernel, and for ``same`` with an even-sized kernel
  the origin shifts by one sample exactly as ``scipy.ndimage.convolve`` does, so results agree with it;
* ``valid`` keeps the centred correlation where the kernel lies fully inside, i.e. the ``same`` result
  cropped by the kernel's reach; ``full`` is ``valid`` on the image padded with ``m - 1`` zeros,
  which is the seed's definition (values outside the image are 0), as ``scipy.signal.convolve``
  (see windowed.py, shared with ``layer``).

How blocks get their halo (one overlapped pass for a run of steps, tiles and slabs read with
theirs) is the chain's business (chain.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.errors import KernelError
from pipeline.steps.base import ImageShape
from pipeline.steps.kernels import build_kernel
from pipeline.steps.strategies import (
    STRATEGIES, KernelStrategy, choose_engine, choose_strategy, correlate_block, takes_raw,
)
from pipeline.steps.windowed import WindowedStep

if TYPE_CHECKING:
    from pipeline.step_kinds import ConvolveSpec

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
class BoundConvolution:
    """A convolution bound to an array's dimensions and dtype: the kernel's strategy and the border rule."""

    convolution: Convolution
    kernel: KernelStrategy
    edge_mode: str  # the border rule blocks apply; `wrap` is served by dask's periodic halo instead
    cval: float

    @property
    def reach(self) -> tuple[int, ...]:
        return tuple(m // 2 for m in self.kernel.weights.shape)


def bind_convolution(
    convolution: Convolution, *, ndim: int, spatial_ndim: int, dtype: np.dtype, whole: bool = False
) -> BoundConvolution:
    kernel = _expand_kernel(np.asarray(convolution.weights, dtype=np.float64), ndim, spatial_ndim)
    kernel, origin = _correlation_form(kernel, correlate=convolution.correlate, mode=convolution.mode)
    if convolution.mode == "same" and convolution.boundary != "wrap":
        edge_mode, cval = convolution.boundary, convolution.cval
    else:
        # valid/full crop away every sample a border rule touches, and `wrap` gets real neighbours
        # from dask's periodic halo: any rule will do, so pick the one every engine has.
        edge_mode, cval = "reflect", 0.0
    engine = choose_engine(dtype, kernel, edge_mode)
    plan = choose_strategy(kernel, origin, engine=engine, dtype=dtype, strategy=convolution.strategy, whole=whole)
    return BoundConvolution(convolution, plan, edge_mode, cval)


class ConvolveStep(WindowedStep):
    """A convolve step: one kernel, applied to every channel of every image on its own."""

    kind = "convolve"

    def __init__(self, convolution: Convolution, *, source: str = "inline", provenance: dict[str, Any] | None = None) -> None:
        self.convolution = convolution
        self.source = source
        self._provenance = provenance or {"step": "convolve", "kernel": {"source": source, "shape": list(np.shape(convolution.weights))}}
        self.mode, self.boundary, self.cval = convolution.mode, convolution.boundary, convolution.cval
        self.stride = (1,)
        self._plans: dict[tuple[Any, ...], BoundConvolution] = {}  # per block ndim, dtype and halo kind

    @property
    def name(self) -> str:
        return f"convolve {self.source}"

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance)

    @property
    def window(self) -> tuple[int, ...]:
        return tuple(np.shape(self.convolution.weights))

    def bound(self, ndim: int, spatial_ndim: int, dtype: np.dtype, *, periodic: bool = False, whole: bool = False) -> BoundConvolution:
        """The kernel bound for blocks of ``ndim`` axes (``periodic``: a dask halo serves ``wrap``;
        ``whole``: every block is whole images, ``ImageShape.whole``)."""
        key = (ndim, spatial_ndim, np.dtype(dtype).str, periodic, whole)
        if key not in self._plans:
            bound = bind_convolution(self.convolution, ndim=ndim, spatial_ndim=spatial_ndim, dtype=np.dtype(dtype), whole=whole)
            if self.wraps and not periodic:
                # no periodic halo (the axis is whole): blocks wrap by themselves; OpenCV has no wrap border
                plan = choose_strategy(bound.kernel.weights, bound.kernel.origin, engine="scipy", dtype=np.dtype(dtype),
                                   strategy=self.convolution.strategy)
                bound = BoundConvolution(self.convolution, plan, "wrap", self.cval)
            self._plans[key] = bound
        return self._plans[key]

    def strategy_of(self, ndim: int, image: ImageShape, dtype: np.dtype) -> tuple[str, bool]:
        plan = self.bound(ndim, image.spatial_ndim, dtype, periodic=self.wraps, whole=image.whole).kernel
        return plan.describe(), plan.reproducible

    def strategy_record(self, ndim: int, image: ImageShape, dtype: np.dtype) -> dict[str, Any]:
        """How well the kernel splits into 1-D passes for this dtype (whether or not it is run so)."""
        split = self.bound(ndim, image.spatial_ndim, dtype, periodic=self.wraps).kernel.separation
        return {} if split is None else {"separation": split.record()}

    def same_block(self, block: np.ndarray, image: ImageShape, *, keep: tuple[slice, ...] | None = None,
                   periodic: bool = False, origin: tuple[int, ...] | None = None, compute: np.dtype | None = None
                   ) -> np.ndarray:
        dtype = block.dtype if compute is None else np.dtype(compute)
        bound = self.bound(block.ndim, image.spatial_ndim, dtype, periodic=periodic, whole=image.whole)
        return correlate_block(block, bound.kernel, edge_mode=bound.edge_mode, cval=bound.cval, keep=keep, dtype=dtype)

    def takes_raw(self, ndim: int, image: ImageShape, dtype: np.dtype) -> bool:
        """A ``same`` separable kernel along z and more converts a raw slab in its z passes."""
        if self.mode != "same" or self.wraps:
            return False
        bound = self.bound(ndim, image.spatial_ndim, dtype, periodic=False, whole=image.whole)
        return takes_raw(bound.kernel, bound.edge_mode, bound.cval, ndim)

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        outside = {"full": 0.0, "same": self.cval if self.boundary == "constant" else None}.get(self.mode)
        return kernel_range(np.asarray(self.convolution.weights, dtype=np.float64), low, high, outside)


def kernel_range(weights: np.ndarray, low: float, high: float, outside: float | None, bias: float = 0.0) -> tuple[float, float]:
    """The values a correlation with ``weights`` (+ ``bias``) gives for inputs in [low, high].

    Between ``P·low + N·high`` and ``P·high + N·low``, with P and N the sums of the positive and
    negative weights; what the window may see beyond the image (``outside``) joins the input first.
    """
    if outside is not None:
        low, high = min(low, outside), max(high, outside)
    positive, negative = float(weights[weights > 0].sum()), float(weights[weights < 0].sum())
    with np.errstate(invalid="ignore"):  # 0 × inf: a sum that is zero contributes nothing
        bottom = np.nansum([positive * low, negative * high])
        top = np.nansum([positive * high, negative * low])
    return float(bottom + bias), float(top + bias)


def build(spec: ConvolveSpec) -> ConvolveStep:
    """The step of a validated ``convolve:`` mapping."""
    kernel = build_kernel(spec.kernel, spec.params)
    options = dict(mode=spec.mode, boundary=spec.boundary, cval=spec.cval, correlate=spec.correlate)
    convolution = Convolution(kernel.weights, strategy=spec.strategy, **options)
    return ConvolveStep(convolution, source=kernel.source, provenance={"step": "convolve", "kernel": kernel.to_provenance(), **options})
