"""Cross-correlations at a few lags by real FFT: the one correlation engine of the learning numerics.

Every sum the learning code needs is a correlation ``r[d] = Σ_q a[q] · b[q + d]`` evaluated at a few
lags ``d`` only: the kernel's offsets for the cross terms and the gradient, the lags between two
kernel offsets for the Gram matrix, the valid positions for the forward pass. From the FFTs of ``a``
and ``b`` zero-padded to ``n`` samples per axis, ``irfft(conj(A) · B)`` is the circular correlation,
equal to the linear one at every lag where no product wraps around: for arrays of ``L`` samples and
lags in ``(-h, h)`` that holds when ``n >= L + h - 1``, so padding by the kernel's reach, not by the
whole image as ``mode="full"`` would, is enough.

Why FFT rather than direct sums: the direct cost grows with the number of lags (``(2m - 1)**D`` for
the Gram matrix of an ``m**D`` kernel), the FFT cost does not (``O(n log n)`` per pair of arrays).
scipy's pocketfft is deterministic for a given input and thread count, so results repeat bit for bit.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft


def fft_shape(lengths: Sequence[int]) -> tuple[int, ...]:
    """The fast FFT size at least as long as each of ``lengths`` (what the caller needs unwrapped)."""
    return tuple(scipy.fft.next_fast_len(int(length), real=True) for length in lengths)


def spectra(array: np.ndarray, axes: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Real FFT of ``array`` zero-padded to ``shape`` along ``axes``; ``array`` itself when no axes."""
    if not axes:
        return array
    return scipy.fft.rfftn(array, s=tuple(shape), axes=tuple(axes))


def at_lags(
    product: np.ndarray, axes: Sequence[int], shape: Sequence[int], lags: Sequence[tuple[int, int]]
) -> np.ndarray:
    """The correlation whose spectrum is ``product`` (``conj(A) · B``), at lags ``lo <= d < hi`` per axis.

    With no ``axes`` the "spectrum" is already the product of the samples and is returned as is.
    """
    if not axes:
        return product
    circular = scipy.fft.irfftn(product, s=tuple(shape), axes=tuple(axes))
    for axis, n, (lo, hi) in zip(axes, shape, lags):
        circular = np.take(circular, np.arange(lo, hi) % n, axis=axis)
    return circular


def window_products(
    x_hat: np.ndarray, t_hat: np.ndarray, shape: Sequence[int], kernel: Sequence[int]
) -> np.ndarray:
    """``r[t, c, a] = Σ_p t[p] · x_c[p + a]`` for every kernel offset ``a``: X^T t of a design matrix.

    ``x_hat`` (C, ...) and ``t_hat`` (T, ...) are the spectra of the inputs and of the per-position
    weights ``t`` (targets, residuals, ones), both padded to ``shape`` (at least the input's extent).
    """
    axes = tuple(range(1, len(kernel) + 1))
    lags = [(0, m) for m in kernel]
    result = np.empty((t_hat.shape[0], x_hat.shape[0], *kernel))
    for c in range(x_hat.shape[0]):  # one channel at a time keeps T full-size arrays, not T·C
        result[:, c] = at_lags(np.conj(t_hat) * x_hat[c], axes, shape, lags)
    return result


def correlate_valid(
    x_hat: np.ndarray, weights: np.ndarray, shape: Sequence[int], valid: Sequence[int]
) -> np.ndarray:
    """``z[k, p] = Σ_c Σ_a w[k, c, a] · x_c[p + a]`` over the ``valid`` positions: the forward pass.

    ``x_hat`` (C, ...) is the spectrum of the input padded to ``shape`` (at least its extent);
    ``weights`` is (K, C, *kernel). The channel sum is taken on the spectra: one inverse FFT per output.
    """
    w_hat = spectra(weights, tuple(range(2, weights.ndim)), shape)
    spatial = tuple(range(len(valid)))
    positions = [(0, v) for v in valid]
    result = np.empty((weights.shape[0], *valid))
    for k in range(weights.shape[0]):
        result[k] = at_lags(np.sum(np.conj(w_hat[k]) * x_hat, axis=0), spatial, shape, positions)
    return result
