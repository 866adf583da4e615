"""Built-in kernel banks for the ``layer`` step: fixed feature extractors, shaped (K, 1, kh, kw).

Each is a bank of K cross-correlation kernels on one input channel (a layer correlates, as CNN
layers do): ``sobel`` (the x and y derivatives), ``gabor`` (orientations × wavelengths),
``log`` (Laplacians of Gaussians, one per sigma) and ``dog`` (differences of Gaussians). On an
image of C channels a built-in bank sees their mean: its weights are repeated over C and divided
by C.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from pipeline.errors import KernelError
from pipeline.steps.kernels import BuiltinKernel, gaussian

# Correlation orientation: [-1, 0, 1] responds to values rising along the axis (+d/dx).
_SMOOTH = np.array([1.0, 2.0, 1.0])
_RISE = np.array([-1.0, 0.0, 1.0])


def sobel() -> np.ndarray:
    """(2, 1, 3, 3): the derivative along x, then along y."""
    return np.stack([np.outer(_SMOOTH, _RISE), np.outer(_RISE, _SMOOTH)])[:, np.newaxis]


def gabor(*, orientations: int = 4, wavelengths: tuple[float, ...] = (4.0, 8.0), size: int = 0, gamma: float = 0.5) -> np.ndarray:
    """(orientations × wavelengths, 1, m, m): real Gabor filters, zero-mean, unit L1 norm.

    The envelope's sigma is 0.56 × the wavelength (a bandwidth of one octave); ``size`` 0 takes
    the smallest odd size holding 3 sigmas of the largest wavelength.
    """
    if orientations < 1 or not wavelengths or min(wavelengths) <= 0:
        raise KernelError("gabor needs orientations ≥ 1 and positive wavelengths")
    size = size or 2 * math.ceil(3 * 0.56 * max(wavelengths)) + 1
    kernels = []
    for wavelength in wavelengths:
        for index in range(orientations):
            theta = math.pi * index / orientations
            kernel = cv2.getGaborKernel((size, size), 0.56 * wavelength, theta, wavelength, gamma, 0.0, ktype=cv2.CV_64F)
            kernel -= kernel.mean()  # flat regions give 0
            kernels.append(kernel / np.abs(kernel).sum())
    return np.stack(kernels)[:, np.newaxis]


def _sigmas(sigmas: tuple[float, ...]) -> tuple[float, ...]:
    if not sigmas or min(sigmas) <= 0:
        raise KernelError(f"sigmas must be positive numbers; got {list(sigmas)}")
    return tuple(float(s) for s in sigmas)


def _centred(kernels: list[np.ndarray]) -> np.ndarray:
    """Kernels of odd sizes padded with zeros to the largest, centred, as one bank."""
    size = max(k.shape[0] for k in kernels)
    return np.stack([np.pad(k, (size - k.shape[0]) // 2) for k in kernels])[:, np.newaxis]


def log(*, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0)) -> np.ndarray:
    """(len(sigmas), 1, m, m): scale-normalised Laplacians of Gaussians, σ²∇²G, zero-sum."""
    kernels = []
    for sigma in _sigmas(sigmas):
        radius = int(4 * sigma + 0.5)
        y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(np.float64)
        r2 = (x * x + y * y) / (2 * sigma * sigma)
        kernel = (r2 - 1) / (math.pi * sigma**2) * np.exp(-r2)
        kernels.append(kernel - kernel.mean())
    return _centred(kernels)


def dog(*, sigmas: tuple[float, ...] = (1.0, 2.0, 4.0), ratio: float = 1.6) -> np.ndarray:
    """(len(sigmas), 1, m, m): G(σ) − G(ratio·σ), the usual approximation of the LoG (ratio 1.6)."""
    if ratio <= 1:
        raise KernelError(f"dog ratio must be above 1; got {ratio}")
    kernels = []
    for sigma in _sigmas(sigmas):
        narrow, wide = gaussian(sigma=sigma), gaussian(sigma=ratio * sigma)
        kernels.append(np.pad(narrow, (wide.shape[0] - narrow.shape[0]) // 2) - wide)
    return _centred(kernels)


BANKS: dict[str, BuiltinKernel] = {  # a bank is a built-in whose factory makes (K, 1, kh, kw)
    bank.name: bank
    for bank in (
        BuiltinKernel("sobel", "x and y Sobel derivatives (2 channels)", sobel),
        BuiltinKernel("gabor", "real Gabor filters: orientations × wavelengths", gabor),
        BuiltinKernel("log", "Laplacian of Gaussian per sigma", log),
        BuiltinKernel("dog", "difference of Gaussians per sigma", dog),
    )
}


def build_bank(name: str, params: dict[str, Any] | None = None) -> np.ndarray:
    """A built-in bank's (K, 1, kh, kw) weights; unknown names and parameters name what there is."""
    if name not in BANKS:
        raise KernelError(f"unknown bank {name!r}; built-in banks: {', '.join(BANKS)}, or a .npy/.npz file of weights")
    bank = BANKS[name]
    params = dict(params or {})
    unknown = sorted(set(params) - set(bank.defaults))
    if unknown:
        takes = ", ".join(f"{k} (default {v})" for k, v in bank.defaults.items()) or "no parameters"
        raise KernelError(f"bank {name!r} does not take {unknown}; it takes {takes}")
    converted = {key: tuple(value) if isinstance(value, list) else value for key, value in params.items()}
    return bank.factory(**converted)
