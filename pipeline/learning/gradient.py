"""The back-propagation path: loss and gradient of one correlation layer on a tile, and optimizers.

``prediction = activation(z)``, ``z_k = Σ_c correlate_valid(x_c, w[k, c]) + b_k``, and the loss is
``Σ (prediction - y)²`` over the tile's valid positions. With ``g = 2 (prediction - y) ·
activation'(z)`` the gradients are ``∂/∂w[k, c, a] = Σ_p g_k[p] · x_c[p + a]`` (the correlation of
the input with ``g``, kernel-sized) and ``∂/∂b_k = Σ_p g_k[p]``. The forward pass and the weight
gradient both run on the input's spectrum, computed once per tile, with the FFT engine of
``pipeline.learning.correlation`` (the one ``accumulate`` uses); padding to the tile's own extent is
enough, because every needed lag is non-negative and stays inside the tile.

Tiles are read as for the normal equations (``pipeline.learning.tiles``); gradients of disjoint
tiles add up (``+``), so a mini-batch is a sum of tiles. The optimizers follow ``torch.optim``'s
update rules and are deterministic: same seed, same tiles, same order → the same bits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from math import prod, sqrt
from typing import Callable, Sequence

import numpy as np
from scipy.special import expit

from pipeline.learning.correlation import correlate_valid, fft_shape, spectra, window_products
from pipeline.learning.tiles import block_pair, kernel_extent


def _identity(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return z, np.ones_like(z)


def _relu(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.maximum(z, 0.0), (z > 0).astype(np.float64)  # derivative 0 at 0, as PyTorch


def _tanh(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    value = np.tanh(z)
    return value, 1.0 - value**2


def _sigmoid(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    value = expit(z)
    return value, value * (1.0 - value)


# activation name → z ↦ (activation(z), activation'(z))
ACTIVATIONS: dict[str | None, Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]] = {
    None: _identity,
    "relu": _relu,
    "tanh": _tanh,
    "sigmoid": _sigmoid,
}


@dataclass(frozen=True, eq=False)
class LossGradient:
    """The loss of a set of positions and its gradients; those of disjoint tiles add with ``+``."""

    loss: float
    weights: np.ndarray  # (K, C, *kernel)
    bias: np.ndarray | None  # (K,)
    count: int

    def __add__(self, other: LossGradient) -> LossGradient:
        if not isinstance(other, LossGradient):
            return NotImplemented
        if self.weights.shape != other.weights.shape or (self.bias is None) != (other.bias is None):
            raise ValueError("cannot add gradients of different layers: weights "
                             f"{self.weights.shape} and {other.weights.shape}")
        bias = None if self.bias is None else self.bias + other.bias
        return LossGradient(self.loss + other.loss, self.weights + other.weights, bias, self.count + other.count)

    def __radd__(self, other: object) -> LossGradient:
        # sum() starts from 0
        return self if isinstance(other, int) and other == 0 else NotImplemented


def loss_and_gradient(
    x_block: np.ndarray,
    y_block: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray | None,
    *,
    activation: str | None = None,
    valid_region: Sequence[slice] | None = None,
) -> LossGradient:
    """Squared-error loss of one tile and its gradient with respect to the weights and the bias.

    Parameters
    ----------
    x_block : ndarray, (C, *spatial)
        The input samples of the windows of the counted positions (as for ``accumulate``).
    y_block : ndarray, (K, *own region)
        The targets of the tile's own region.
    weights : ndarray, (K, C, *kernel)
        Correlation weights, PyTorch's Conv layout.
    bias : ndarray, (K,), or None
        One constant per output, or no bias.
    activation : {None, "relu", "tanh", "sigmoid"}, optional
        Applied to the correlation plus bias.
    valid_region : sequence of slice, optional
        The positions of ``y_block`` to count (``TileWindow.valid``); all of them by default.

    Returns
    -------
    LossGradient
        ``loss`` = Σ (prediction - y)², gradients shaped like ``weights`` and ``bias``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(5.0)[None]
    >>> step = loss_and_gradient(x, np.zeros((1, 3)), np.ones((1, 1, 3)), None)
    >>> step.loss, step.weights.ravel().tolist()
    (126.0, [48.0, 84.0, 120.0])
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {list(ACTIVATIONS)}, got {activation!r}")
    weights = np.asarray(weights, dtype=np.float64)
    kernel = kernel_extent(weights.shape[2:])
    x, y = block_pair(x_block, y_block, kernel, valid_region)
    expected = (y.shape[0], x.shape[0], *kernel)
    if weights.shape != expected or weights.ndim != x.ndim + 1:
        raise ValueError(f"weights must be (outputs, channels, *kernel) = {expected[:2]} + kernel for inputs "
                         f"{x.shape} and targets {y.shape}, got {weights.shape}")
    if bias is not None and np.shape(bias) != (y.shape[0],):
        raise ValueError(f"bias must have one value per output, shape {(y.shape[0],)}, got {np.shape(bias)}")
    valid = y.shape[1:]
    if min(valid) == 0:
        return LossGradient(0.0, np.zeros_like(weights), None if bias is None else np.zeros(y.shape[0]), 0)
    spatial = tuple(range(1, x.ndim))
    shape = fft_shape(x.shape[1:])
    x_hat = spectra(x, spatial, shape)
    z = correlate_valid(x_hat, weights, shape, valid)
    if bias is not None:
        z += np.asarray(bias, dtype=np.float64).reshape((-1,) + (1,) * len(valid))
    prediction, slope = ACTIVATIONS[activation](z)
    residual = prediction - y
    g = 2.0 * residual * slope
    grad_w = window_products(x_hat, spectra(g, spatial, shape), shape, kernel)
    grad_b = None if bias is None else np.sum(g, axis=spatial)
    return LossGradient(float(np.sum(residual**2)), grad_w, grad_b, prod(valid))


def init_weights(
    shape: Sequence[int], seed: int, *, bias: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Seeded initial weights (and bias) drawn as PyTorch's Conv layers do by default.

    ``kaiming_uniform_(a=√5)`` reduces to ``U(-1/√fan_in, 1/√fan_in)`` with ``fan_in = C · prod(kernel)``;
    the bias uses the same bound. The generator is NumPy's PCG64, so values differ from PyTorch's.

    Parameters
    ----------
    shape : sequence of int
        ``(K, C, *kernel)``.
    seed : int
        Same seed → the same weights, bit for bit.
    bias : bool, optional
        Whether to draw a bias too.

    Returns
    -------
    tuple
        ``(weights, bias)``; ``bias`` is None when not asked for.

    Examples
    --------
    >>> w, b = init_weights((2, 3, 3, 3), seed=0)
    >>> w.shape, b.shape, bool(np.abs(w).max() <= 1 / 27 ** 0.5)
    ((2, 3, 3, 3), (2,), True)
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) < 3 or min(shape) < 1:
        raise ValueError(f"shape must be (outputs, channels, *kernel) with positive sizes, got {shape}")
    bound = 1.0 / sqrt(prod(shape[1:]))
    rng = np.random.default_rng(seed)
    weights = rng.uniform(-bound, bound, size=shape)
    return weights, (rng.uniform(-bound, bound, size=shape[0]) if bias else None)


class _Optimizer(ABC):
    """Holds one state per parameter array; ``step`` returns updated copies, never edits its inputs."""

    def __init__(self, lr: float) -> None:
        if not (np.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr}")
        self.lr = float(lr)  # public: a schedule may change it between steps
        self.steps = 0
        self._state: list[tuple[np.ndarray, ...]] | None = None

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One update of every parameter array from its gradient; the optimizer keeps its state.

        Parameters
        ----------
        params, grads : sequence of ndarray
            The same arrays, in the same order and shapes, at every step.

        Returns
        -------
        list of ndarray
            The updated parameters, float64.
        """
        params = [np.asarray(p, dtype=np.float64) for p in params]
        grads = [np.asarray(g, dtype=np.float64) for g in grads]
        shapes = [p.shape for p in params]
        if shapes != [g.shape for g in grads]:
            raise ValueError(f"gradients {[g.shape for g in grads]} do not match parameters {shapes}")
        if self._state is None:
            self._state = [self._initial(p) for p in params]
        elif shapes != [state[0].shape for state in self._state]:
            raise ValueError(f"parameters {shapes} differ from those of the first step")
        self.steps += 1
        updated = []
        for i, (param, grad) in enumerate(zip(params, grads)):
            param, self._state[i] = self._update(param, grad, self._state[i])
            updated.append(param)
        return updated

    def _initial(self, param: np.ndarray) -> tuple[np.ndarray, ...]:
        return (np.zeros_like(param),)

    @abstractmethod
    def _update(
        self, param: np.ndarray, grad: np.ndarray, state: tuple[np.ndarray, ...]
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """The updated parameter and its new state."""


class SGD(_Optimizer):
    """Gradient descent with momentum, as ``torch.optim.SGD`` (no dampening, no Nesterov).

    ``v ← momentum · v + g``, ``p ← p - lr · v`` (``v`` starts at 0, so the first step is ``lr · g``).
    """

    def __init__(self, lr: float, momentum: float = 0.0) -> None:
        super().__init__(lr)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)

    def _update(self, param, grad, state):
        velocity = self.momentum * state[0] + grad
        return param - self.lr * velocity, (velocity,)


class Adam(_Optimizer):
    """Adam, as ``torch.optim.Adam`` without weight decay (bias-corrected moments)."""

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8) -> None:
        super().__init__(lr)
        if not (0.0 <= beta1 < 1.0 and 0.0 <= beta2 < 1.0 and eps > 0):
            raise ValueError(f"Adam needs 0 <= beta1, beta2 < 1 and eps > 0, got {beta1}, {beta2}, {eps}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def _initial(self, param):
        return np.zeros_like(param), np.zeros_like(param)

    def _update(self, param, grad, state):
        first = self.beta1 * state[0] + (1.0 - self.beta1) * grad
        second = self.beta2 * state[1] + (1.0 - self.beta2) * grad**2
        first_hat = first / (1.0 - self.beta1**self.steps)
        second_hat = second / (1.0 - self.beta2**self.steps)
        return param - self.lr * first_hat / (np.sqrt(second_hat) + self.eps), (first, second)
