"""Loss gradients against finite differences; optimizers over mini-batches of tiles reach lstsq."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from scipy import ndimage
from test_normal_equations import design_matrix, photo, whole_image_parts

from pipeline.learning import gradient
from pipeline.learning.gradient import SGD, Adam, init_weights, loss_and_gradient
from pipeline.learning.tiles import tile_window

KERNEL = np.array([[0.5, -1.0, 0.25], [1.0, 2.0, -1.0], [0.0, 0.5, -0.5]])


def finite_difference(x, y, weights, bias, activation, step=1e-5):
    """Central differences of the loss, one parameter at a time (weights, then bias)."""
    params = np.concatenate([weights.ravel(), bias])

    def loss(flat):
        w, b = flat[:weights.size].reshape(weights.shape), flat[weights.size:]
        return loss_and_gradient(x, y, w, b, activation=activation).loss

    grads = np.empty_like(params)
    for i in range(params.size):
        up, down = params.copy(), params.copy()
        up[i] += step
        down[i] -= step
        grads[i] = (loss(up) - loss(down)) / (2 * step)
    return grads[:weights.size].reshape(weights.shape), grads[weights.size:]


@pytest.mark.parametrize(
    "spatial, kernel",
    [((9, 10), (3, 3)), ((17,), (4,)), ((6, 7, 5), (3, 2, 3))],
    ids=["2-D", "1-D", "3-D"],
)
@pytest.mark.parametrize("activation", [None, "relu", "tanh", "sigmoid"])
def test_the_gradient_equals_finite_differences(activation, spatial, kernel):
    rng = np.random.default_rng(40)
    x = rng.normal(size=(2, *spatial))
    y = rng.normal(size=(2, *(n - m + 1 for n, m in zip(spatial, kernel))))
    weights, bias = rng.normal(scale=0.5, size=(2, 2, *kernel)), rng.normal(size=2)
    result = loss_and_gradient(x, y, weights, bias, activation=activation)
    fd_weights, fd_bias = finite_difference(x, y, weights, bias, activation)

    scale = np.abs(fd_weights).max()
    np.testing.assert_allclose(result.weights, fd_weights, rtol=1e-6, atol=1e-6 * scale)
    np.testing.assert_allclose(result.bias, fd_bias, rtol=1e-6, atol=1e-6 * scale)


def test_the_linear_gradient_is_that_of_the_normal_equations():
    """Without activation, ∂loss/∂w = 2 (X^T X w - X^T y): the two paths agree."""
    x = photo((30, 34), channels=3, seed=41)
    y = np.random.default_rng(42).normal(size=(2, 30, 34))
    weights, bias = init_weights((2, 3, 5, 3), seed=43)
    window = tile_window((30, 34), (5, 3), (slice(None), slice(None)))
    result = loss_and_gradient(x[(slice(None), *window.x)], y, weights, bias, valid_region=window.valid)
    parts = whole_image_parts(x, y, (5, 3), bias=True)
    unknowns = np.vstack([weights.reshape(2, -1).T, bias[None]])
    expected = 2 * (parts.gram @ unknowns - parts.cross)
    np.testing.assert_allclose(result.weights.reshape(2, -1).T, expected[:-1], rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    np.testing.assert_allclose(result.bias, expected[-1], rtol=1e-9)
    residual = y[:, 2:-2, 1:-1].reshape(2, -1).T - design_matrix(x, (5, 3), bias=True) @ unknowns
    assert result.loss == pytest.approx(np.sum(residual**2), rel=1e-12)
    assert result.count == 26 * 32


def test_the_gradients_of_tiles_add_up_to_the_whole_image():
    x = photo((25, 23), seed=44)
    y = np.random.default_rng(45).normal(size=(1, 25, 23))
    weights, bias = init_weights((1, 1, 4, 5), seed=46)
    whole = sum(_tile_gradients(x, y, weights, bias, "tanh", size=25))
    tiled = sum(_tile_gradients(x, y, weights, bias, "tanh", size=3))  # tiles smaller than the kernel
    assert tiled.count == whole.count == 22 * 19
    np.testing.assert_allclose(tiled.weights, whole.weights, rtol=1e-10)
    np.testing.assert_allclose(tiled.bias, whole.bias, rtol=1e-10)
    assert tiled.loss == pytest.approx(whole.loss, rel=1e-12)


def _own_regions(shape: tuple[int, ...], size: int) -> list[tuple[slice, ...]]:
    return [(slice(i, i + size), slice(j, j + size)) for i in range(0, shape[0], size) for j in range(0, shape[1], size)]


def _tile_gradients(x, y, weights, bias, activation, *, size, regions=None):
    for own in regions if regions is not None else _own_regions(x.shape[1:], size):
        window = tile_window(x.shape[1:], weights.shape[2:], own)
        yield loss_and_gradient(x[(slice(None), *window.x)], y[(slice(None), *own)], weights, bias,
                                activation=activation, valid_region=window.valid)


def train(x, y, optimizer, *, seed, epochs, lr, decay, activation=None, batch=4, size=12):
    """Mini-batches of ``batch`` tiles in a seeded order each epoch; the learning rate decays per epoch."""
    weights, bias = init_weights((y.shape[0], x.shape[0], *KERNEL.shape), seed)
    regions = _own_regions(x.shape[1:], size)
    order = np.random.default_rng(seed)
    for epoch in range(epochs):
        optimizer.lr = lr * decay**epoch
        shuffled = order.permutation(len(regions))
        for start in range(0, len(regions), batch):
            chosen = [regions[i] for i in shuffled[start:start + batch]]
            step = sum(_tile_gradients(x, y, weights, bias, activation, size=size, regions=chosen))
            weights, bias = optimizer.step([weights, bias], [step.weights, step.bias])
    return weights, bias


def _linear_problem():
    x = photo((48, 48), seed=47, detail=0.3) - 0.5
    noise = np.random.default_rng(48).normal(scale=0.05, size=(1, 48, 48))
    y = ndimage.correlate(x[0], KERNEL)[None] + 0.2 + noise
    expected, *_ = np.linalg.lstsq(design_matrix(x, (3, 3), bias=True), y[0, 1:-1, 1:-1].ravel(), rcond=None)
    return x, y, expected


@pytest.mark.parametrize(
    "optimizer, epochs, lr, decay",
    [(Adam, 400, 0.1, 0.98), (lambda lr: SGD(lr, momentum=0.9), 200, 1e-3, 0.98)],
    ids=["adam", "sgd"],
)
def test_mini_batches_of_tiles_converge_to_the_least_squares_kernel(optimizer, epochs, lr, decay):
    x, y, expected = _linear_problem()
    weights, bias = train(x, y, optimizer(lr), seed=1, epochs=epochs, lr=lr, decay=decay)
    np.testing.assert_allclose(weights.ravel(), expected[:9], rtol=0, atol=1e-3 * np.abs(expected[:9]).max())
    assert bias[0] == pytest.approx(expected[9], abs=1e-3)


def test_a_relu_target_is_recovered():
    x = photo((48, 48), seed=49, detail=0.3) - 0.5
    y = np.maximum(ndimage.correlate(x[0], KERNEL), 0.0)[None]
    weights, bias = train(x, y, Adam(0.1), seed=2, epochs=300, lr=0.1, decay=0.98, activation="relu")
    np.testing.assert_allclose(weights[0, 0], KERNEL, rtol=0, atol=1e-2 * np.abs(KERNEL).max())
    assert abs(bias[0]) < 1e-2


def test_the_same_seed_gives_the_same_bits():
    x, y, _ = _linear_problem()
    runs = [train(x, y, Adam(0.1), seed=seed, epochs=5, lr=0.1, decay=0.98, activation="sigmoid") for seed in (3, 3, 4)]
    assert np.array_equal(runs[0][0], runs[1][0]) and np.array_equal(runs[0][1], runs[1][1])
    assert not np.array_equal(runs[0][0], runs[2][0])


def test_sgd_follows_torchs_momentum_rule():
    sgd = SGD(0.1, momentum=0.5)
    (p,) = sgd.step([np.array([1.0])], [np.array([2.0])])  # v = 2
    (p,) = sgd.step([p], [np.array([2.0])])  # v = 0.5 * 2 + 2 = 3
    assert p[0] == pytest.approx(1.0 - 0.1 * 2 - 0.1 * 3)


def test_adams_first_step_moves_each_parameter_by_lr():
    """Bias-corrected moments make the first step lr · g / (|g| + eps), whatever the gradient's size."""
    (p,) = Adam(0.01).step([np.zeros(3)], [np.array([1e-3, -50.0, 7.0])])
    np.testing.assert_allclose(p, [-0.01, 0.01, -0.01], rtol=1e-4)


def test_optimizers_refuse_changing_parameters():
    adam = Adam()
    adam.step([np.zeros(3)], [np.ones(3)])
    with pytest.raises(ValueError, match="differ from those of the first step"):
        adam.step([np.zeros(4)], [np.ones(4)])
    with pytest.raises(ValueError, match="do not match parameters"):
        adam.step([np.zeros(3)], [np.ones(2)])
    with pytest.raises(ValueError, match="lr must be a positive number"):
        SGD(0.0)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\)"):
        SGD(0.1, momentum=1.0)


def test_initial_weights_are_seeded_and_bounded_like_pytorch():
    weights, bias = init_weights((4, 3, 5, 5), seed=7)
    again, _ = init_weights((4, 3, 5, 5), seed=7)
    bound = 1 / np.sqrt(3 * 25)
    assert np.array_equal(weights, again) and not np.array_equal(weights, init_weights((4, 3, 5, 5), seed=8)[0])
    assert np.abs(weights).max() <= bound and np.abs(weights).max() > 0.9 * bound
    assert bias.shape == (4,) and np.abs(bias).max() <= bound
    assert init_weights((1, 1, 3), seed=0, bias=False)[1] is None


@pytest.mark.parametrize(
    "weights_shape, bias, activation, message",
    [
        ((1, 1, 3, 3), None, "softplus", "activation must be one of"),
        ((1, 2, 3, 3), None, None, r"weights must be \(outputs, channels, \*kernel\)"),
        ((1, 1, 3, 3), np.zeros(2), None, r"bias must have one value per output, shape \(1,\)"),
        ((1, 1, 0, 3), None, None, "kernel_shape must be one or more positive sizes"),
    ],
)
def test_bad_layers_are_refused(weights_shape, bias, activation, message):
    with pytest.raises(ValueError, match=message):
        loss_and_gradient(np.zeros((1, 8, 8)), np.zeros((1, 6, 6)), np.zeros(weights_shape), bias, activation=activation)


def test_a_tile_without_valid_positions_has_no_gradient():
    result = loss_and_gradient(np.zeros((1, 0, 0)), np.zeros((1, 2, 2)), np.ones((1, 1, 3, 3)), np.ones(1),
                               valid_region=(slice(0, 0),) * 2)
    assert result.loss == 0 and result.count == 0 and not result.weights.any() and not result.bias.any()


def test_examples_in_docstrings_hold():
    assert doctest.testmod(gradient).failed == 0
