"""The steps of a job file: one pydantic model per step kind, and the one table of step kinds.

``STEP_KINDS`` drives the config models (the ``steps:`` union), ``build_steps`` (each kind names the
module whose ``build(spec)`` makes its step) and so ``validate``, ``plan``, provenance and the
store's axes and chunks. A new step kind is a module under ``steps/`` and a row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from pipeline.steps.convolve import Boundary, Mode
from pipeline.steps.kernels import BUILTINS, KERNEL_FILE_SUFFIXES, build_kernel, check_matrix

PositiveCount = Annotated[int, Field(gt=0, strict=True)]


class Frozen(BaseModel):
    """Every model of a job file: unknown keys refused, values immutable once parsed."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConvolveSpec(Frozen):
    kernel: Union[str, list[Any]] = Field(
        description="built-in name, inline matrix (1-D to 3-D), or a .npy/.csv/.txt file"
    )
    params: dict[str, Union[int, float]] = Field(
        default_factory=dict, description="parameters of a parametric built-in, e.g. {sigma: 2.0}"
    )
    mode: Mode = Field("same", description="same | valid (n-m+1) | full (n+m-1)")
    boundary: Boundary = Field("reflect", description="values beyond the edge, for mode=same")
    cval: float = Field(0.0, description="value beyond the edge for boundary=constant")
    correlate: bool = Field(False, description="cross-correlate (kernel not flipped), as CNN layers do")
    strategy: Literal["auto", "direct", "separable", "fft"] = Field(
        "auto", description="how blocks are computed; auto picks the cheapest for the kernel (see `pipeline plan`)"
    )

    @field_validator("kernel")
    @classmethod
    def _kernel_exists(cls, value: str | list[Any]) -> str | list[Any]:
        if isinstance(value, list):
            check_matrix(value, what="inline kernel")
        elif value not in BUILTINS and not value.lower().endswith(KERNEL_FILE_SUFFIXES):
            build_kernel(value)  # raises the "unknown kernel ... did you mean" message
        return value

    @model_validator(mode="after")
    def _kernel_builds(self) -> ConvolveSpec:
        build_kernel(self.kernel, self.params)
        return self


class ConvolveStep(Frozen):
    convolve: ConvolveSpec


class NormalizeStep(Frozen):
    normalize: Literal["minmax", "max"] = Field(
        description="per image: minmax maps [min, max] to [0, 1]; max divides by the largest |value|"
    )


Pair = Union[PositiveCount, Annotated[list[PositiveCount], Field(min_length=2, max_length=2)]]
# A bound on the work one job file asks for: 1000 steps over a small image still run in seconds.
MAX_STEPS = 1000


class LayerSpec(Frozen):
    weights: Union[str, list[Any]] = Field(
        description="(K, C, kh, kw) bank — or (K, kh, kw) for gray input — as .npy, a named array of an .npz "
        "(see name), an inline matrix, or a built-in bank (sobel, gabor, log, dog)"
    )
    bias: Union[None, str, list[float]] = Field(None, description="(K,) per output channel: .npy or inline; from the .npz with name")
    name: Optional[str] = Field(None, description="in an .npz state dict: the layer whose NAME.weight and NAME.bias to use")
    params: dict[str, Union[int, float, list[float]]] = Field(default_factory=dict, description="parameters of a built-in bank")
    mode: Mode = Field("same", description="same | valid | full, as for convolve")
    boundary: Boundary = Field("reflect", description="values beyond the edge, for mode=same")
    cval: float = Field(0.0, description="value beyond the edge for boundary=constant")
    correlate: bool = Field(True, description="cross-correlate, as CNN layers (and PyTorch's Conv2d) do; false flips")
    stride: Pair = Field(1, description="keep every stride-th output (PyTorch's stride): a number or [y, x]")
    strategy: Literal["auto", "direct", "gemm", "fft"] = Field(
        "auto", description="how a bank is computed; auto picks the cheapest by the cost model (see `pipeline plan`)"
    )


class LayerStep(Frozen):
    layer: LayerSpec


ActivationName = Literal["relu", "leaky_relu", "tanh", "sigmoid", "abs", "clip"]


class ActivationSpec(Frozen):
    function: ActivationName = Field(description="relu | leaky_relu | tanh | sigmoid | abs | clip")
    slope: float = Field(0.01, description="leaky_relu: the slope below 0")
    min: Optional[float] = Field(None, description="clip: the smallest value kept")
    max: Optional[float] = Field(None, description="clip: the largest value kept")

    @model_validator(mode="after")
    def _clip_has_bounds(self) -> ActivationSpec:
        if self.function == "clip" and self.min is None and self.max is None:
            raise ValueError("activation clip needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"activation clip: min {self.min} is above max {self.max}")
        return self


class ActivationStep(Frozen):
    activation: Union[ActivationName, ActivationSpec] = Field(
        description="a function name (relu, tanh, ...) or {function: leaky_relu, slope: 0.01}"
    )


class PoolSpec(Frozen):
    function: Literal["max", "mean", "min", "l2"] = Field("max", description="how each window is reduced")
    size: Pair = Field(2, description="window size: a number or [y, x]")
    stride: Optional[Pair] = Field(None, description="window step; defaults to size (non-overlapping)")
    padding: Literal["valid", "same"] = Field(
        "valid", description="valid drops the ragged edge (as MaxPool2d); same keeps ceil(n / stride) outputs"
    )


class PoolStep(Frozen):
    pool: PoolSpec


@dataclass(frozen=True)
class StepKind:
    """One kind of step: the model of its YAML mapping, and the module whose ``build(spec)`` makes it."""

    model: type[BaseModel]
    module: str


# The one table of step kinds: it drives the config models below, build_steps and so `validate`,
# `plan`, provenance and the store's axes and chunks. A new step is a module and a row.
STEP_KINDS: dict[str, StepKind] = {
    "convolve": StepKind(ConvolveStep, "pipeline.steps.convolve"),
    "layer": StepKind(LayerStep, "pipeline.steps.layer"),
    "activation": StepKind(ActivationStep, "pipeline.steps.activation"),
    "pool": StepKind(PoolStep, "pipeline.steps.pool"),
    "normalize": StepKind(NormalizeStep, "pipeline.steps.normalize"),
}


def step_kind(value: Any) -> str | None:
    """The kind of a step: its mapping's one key, or the model's field."""
    if isinstance(value, dict):
        keys = list(value)
        return keys[0] if len(keys) == 1 and keys[0] in STEP_KINDS else None
    return next((kind for kind in STEP_KINDS if hasattr(value, kind)), None)


StepConfig = Annotated[  # one step of a job file (steps/base.py's Step is what it builds)
    Union[tuple(Annotated[kind.model, Tag(name)] for name, kind in STEP_KINDS.items())],  # type: ignore[valid-type]
    Discriminator(
        step_kind,
        custom_error_type="step_kind",
        custom_error_message="a step is a mapping with exactly one key: " + ", ".join(STEP_KINDS),
    ),
]


