"""Activations against numpy, and their value ranges."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.steps.activation import Activation

X = np.linspace(-30.0, 30.0, 241)
EXPECTED = {
    "relu": lambda x: np.maximum(x, 0),
    "tanh": np.tanh,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "abs": np.abs,
}


@pytest.mark.parametrize("function", sorted(EXPECTED))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_activations_match_numpy(function: str, dtype) -> None:
    got = Activation(function).apply(X.astype(dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, EXPECTED[function](X.astype(np.float64)), rtol=1e-6, atol=1e-7)


def test_leaky_relu_and_clip() -> None:
    np.testing.assert_allclose(Activation("leaky_relu", slope=0.1).apply(X.copy()), np.where(X >= 0, X, 0.1 * X))
    np.testing.assert_array_equal(Activation("clip", low=-1.0, high=2.0).apply(X.copy()), np.clip(X, -1, 2))
    np.testing.assert_array_equal(Activation("clip", high=2.0).apply(X.copy()), np.minimum(X, 2))


def test_sigmoid_never_overflows() -> None:
    with np.errstate(over="raise"):
        got = Activation("sigmoid").apply(np.array([-1000.0, 0.0, 1000.0], dtype=np.float32))
    np.testing.assert_array_equal(got, [0.0, 0.5, 1.0])


@pytest.mark.parametrize(
    "activation, low, high, expected",
    [
        (Activation("relu"), -5.0, 3.0, (0.0, 3.0)),
        (Activation("relu"), -5.0, -1.0, (0.0, 0.0)),
        (Activation("leaky_relu", slope=0.5), -4.0, 2.0, (-2.0, 2.0)),
        (Activation("tanh"), -math.inf, math.inf, (-1.0, 1.0)),
        (Activation("sigmoid"), -math.inf, math.inf, (0.0, 1.0)),
        (Activation("abs"), -5.0, 3.0, (0.0, 5.0)),
        (Activation("abs"), 2.0, 3.0, (2.0, 3.0)),
        (Activation("clip", low=0.0, high=1.0), -5.0, 3.0, (0.0, 1.0)),
    ],
)
def test_value_ranges(activation: Activation, low: float, high: float, expected) -> None:
    assert activation.value_range(low, high) == pytest.approx(expected)


def test_bad_activations() -> None:
    with pytest.raises(ValueError, match="must be one of"):
        Activation("softmax")
    with pytest.raises(ValueError, match="needs min, max or both"):
        Activation("clip")
    with pytest.raises(ValueError, match="above max"):
        Activation("clip", low=2.0, high=1.0)
