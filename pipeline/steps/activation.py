"""Pointwise non-linearities between layers: relu, leaky_relu, tanh, sigmoid, abs, clip.

Each is a NumPy block function (block in, block of the same shape and dtype out) and a rule for the
range of its values, so a chain knows what an integer output must hold. Being pointwise, an
activation needs no halo and runs inside its neighbours' pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.steps.base import ImageShape, Step

Function = Literal["relu", "leaky_relu", "tanh", "sigmoid", "abs", "clip"]
FUNCTIONS: tuple[str, ...] = ("relu", "leaky_relu", "tanh", "sigmoid", "abs", "clip")


@dataclass(frozen=True)
class Activation:
    """One activation with its parameters (``slope`` for leaky_relu, ``low``/``high`` for clip)."""

    function: Function
    slope: float = 0.01
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.function not in FUNCTIONS:
            raise ValueError(f"activation must be one of {', '.join(FUNCTIONS)}; got {self.function!r}")
        if self.function == "clip" and self.low is None and self.high is None:
            raise ValueError("activation clip needs min, max or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"activation clip: min {self.low} is above max {self.high}")

    @property
    def name(self) -> str:
        if self.function == "leaky_relu":
            return f"leaky_relu {self.slope:g}"
        if self.function == "clip":
            return f"clip {self.low}..{self.high}"
        return self.function

    @property
    def order_preserving(self) -> bool:
        """Whether ``f(max(x)) == max(f(x))`` to the bit (and for min) when ``x`` holds no -0.0 (a gemm
        layer's result does not), so that f commutes with a max or min pool: f never decreases and
        is a comparison, which neither rounds nor makes a zero of the other sign (leaky_relu's
        product can: a tiny negative times the slope is -0.0)."""
        return self.function in ("relu", "clip")

    def apply(self, block: np.ndarray) -> np.ndarray:
        """The activation of ``block``, in its dtype (in place on a writeable float block; integers become float64)."""
        if block.dtype.kind != "f":
            out = block.astype(np.float64)
        else:
            out = block if block.flags.writeable else block.copy()
        if self.function == "relu":
            return np.maximum(out, 0, out=out)
        if self.function == "leaky_relu":
            return np.where(out >= 0, out, out * out.dtype.type(self.slope)).astype(out.dtype, copy=False)
        if self.function == "tanh":
            return np.tanh(out, out=out)
        if self.function == "sigmoid":
            # 1 / (1 + e^-x), written so that large |x| neither overflows nor loses precision
            return _sigmoid(out)
        if self.function == "abs":
            return np.abs(out, out=out)
        return np.clip(out, self.low, self.high, out=out)

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        """The values the activation gives for inputs in [low, high] (each function is monotone, or |x|)."""
        if self.function == "abs":
            if low <= 0 <= high:
                return 0.0, max(-low, high)
            return min(abs(low), abs(high)), max(abs(low), abs(high))
        if self.function == "clip":
            bottom = -math.inf if self.low is None else self.low
            top = math.inf if self.high is None else self.high
            return min(max(low, bottom), top), max(min(high, top), bottom)
        scalar = {
            "relu": lambda v: max(v, 0.0),
            "leaky_relu": lambda v: v if v >= 0 else v * self.slope,
            "tanh": math.tanh,
            "sigmoid": lambda v: 0.0 if v == -math.inf else 1.0 if v == math.inf else 1.0 / (1.0 + math.exp(-v)),
        }[self.function]
        ends = sorted((scalar(low), scalar(high)))  # leaky_relu with a negative slope reverses the order
        return float(ends[0]), float(ends[1])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    result = np.exp(-np.abs(x))  # e^-|x| never overflows
    positive = x >= 0
    return np.where(positive, 1 / (1 + result), result / (1 + result)).astype(x.dtype, copy=False)


class ActivationStep(Step):
    """``activation``: pointwise, so it runs inside its neighbours' pass."""

    kind = "activation"
    fusion = "pointwise"

    def __init__(self, activation: Activation) -> None:
        self.activation = activation

    @property
    def name(self) -> str:
        return f"activation {self.activation.name}"

    def provenance(self) -> dict[str, Any]:
        record: dict[str, Any] = {"step": "activation", "function": self.activation.function}
        if self.activation.function == "leaky_relu":
            record["slope"] = self.activation.slope
        if self.activation.function == "clip":
            record.update(min=self.activation.low, max=self.activation.high)
        return record

    def value_range(self, low: float, high: float) -> tuple[float, float]:
        return self.activation.value_range(low, high)

    @property
    def order_preserving(self) -> bool:
        return self.activation.order_preserving

    def block(self, block: np.ndarray, image: ImageShape) -> np.ndarray:
        return self.activation.apply(block)


def build(spec: Any) -> ActivationStep:
    """The step of a validated ``activation:`` value (a function name, or a mapping with its parameters)."""
    if isinstance(spec, str):
        return ActivationStep(Activation(spec))
    return ActivationStep(Activation(spec.function, slope=spec.slope, low=spec.min, high=spec.max))
