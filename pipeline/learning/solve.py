"""Solve the accumulated normal equations for the kernel, and say how well it is determined.

``(G + l2 · I) w = X^T y`` is solved after a symmetric diagonal (Jacobi) scaling, so that the
condition number measures the problem and not the units (pixel values in the thousands next to a
bias column of ones would otherwise inflate it). The ridge term ``l2`` applies to the kernel
weights, not to the bias: penalising the bias would make the fit depend on the targets' mean level.

* Cholesky (``scipy.linalg.cho_factor``) when the matrix is positive definite and LAPACK's estimate
  of its condition number (``?pocon``, 1-norm) is below :data:`MAX_CHOLESKY_CONDITION`;
* otherwise the eigen decomposition (``scipy.linalg.eigh``): eigenvalues below
  ``unknowns · eps · λ_max`` are rounding noise and their directions are left out (the
  minimum-norm least-squares solution). A flat image, or fewer positions than unknowns, cannot
  determine every weight: the numerical rank says how many directions the data fixed.

The fit's RMSE and R² come from the parts alone: ``Σ (y - X w)² = Σ y² - 2 w·X^T y + w·G w``.
The terms cancel, so the RMSE has a floor of about ``sqrt(eps · |w|² · mean(x²))`` (~1e-7 for a
photo in [0, 1] and a Laplacian kernel): below it an exact fit reads as noise, not as zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

if TYPE_CHECKING:
    from pipeline.learning.normal_equations import NormalParts

# Beyond this the Cholesky solution has lost half the digits of float64; the eigen solve also
# tells which directions carry no information.
MAX_CHOLESKY_CONDITION = 1e8
VARIANCE_TOLERANCE = 64 * np.finfo(np.float64).eps


@dataclass(frozen=True, eq=False)
class Solution:
    """A fitted kernel (PyTorch layout, correlation) and how well the data determined it.

    ``condition`` is the condition number of the scaled, regularised normal matrix (LAPACK's 1-norm
    estimate on the Cholesky path, ``λ_max / λ_min`` on the eigen path, ``inf`` when singular);
    ``rank`` its numerical rank out of ``unknowns``; ``rmse`` and ``r2`` are per output (K,),
    ``nan`` when undefined (no position, or a constant target for R²).
    """

    weights: np.ndarray  # (K, C, *kernel)
    bias: np.ndarray | None  # (K,)
    condition: float
    rank: int
    unknowns: int
    rmse: np.ndarray
    r2: np.ndarray
    method: Literal["cholesky", "eigh"]

    @property
    def underdetermined(self) -> bool:
        """True when the data fixed fewer directions than there are unknowns."""
        return self.rank < self.unknowns


def solve(parts: NormalParts, *, l2: float = 0.0) -> Solution:
    """The least-squares (ridge, with ``l2 > 0``) kernel of the accumulated normal equations.

    Parameters
    ----------
    parts : NormalParts
        Sums over every tile of the collection (``pipeline.learning.normal_equations.accumulate``).
    l2 : float, optional
        Ridge penalty ``l2 · |w|²`` on the kernel weights (not the bias), in the units of ``Σ y²``.

    Returns
    -------
    Solution
        Weights ``(K, C, *kernel)``, bias ``(K,)`` or None, and the diagnostics.

    Examples
    --------
    >>> import numpy as np
    >>> from pipeline.learning.normal_equations import accumulate
    >>> x = np.random.default_rng(0).normal(size=(1, 40))
    >>> y = np.convolve(x[0], [1.0, -2.0, 0.5], mode="valid")[None]
    >>> fit = solve(accumulate(x, y, (3,), bias=False))
    >>> np.round(fit.weights.ravel(), 6).tolist(), fit.rank, fit.method
    ([0.5, -2.0, 1.0], 3, 'cholesky')
    """
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
    if not (np.all(np.isfinite(parts.gram)) and np.all(np.isfinite(parts.cross))):
        raise ValueError("the normal equations hold NaN or infinity: an input or target has non-finite samples")
    unknowns = parts.unknowns
    matrix = (parts.gram + parts.gram.T) / 2
    penalty = np.full(unknowns, float(l2))
    if parts.bias:
        penalty[-1] = 0.0
    matrix[np.diag_indices(unknowns)] += penalty
    diagonal = np.diag(matrix)
    scale = 1.0 / np.sqrt(np.where(diagonal > 0, diagonal, 1.0))
    scaled = matrix * scale[:, None] * scale[None, :]
    rhs = parts.cross * scale[:, None]
    solved = _cholesky(scaled, rhs) or _eigen(scaled, rhs)
    coefficients, condition, rank, method = solved
    coefficients = coefficients * scale[:, None]  # (P, K)
    rmse, r2 = _fit_quality(parts, coefficients)
    kernel_size = unknowns - int(parts.bias)
    weights = coefficients[:kernel_size].T.reshape(parts.outputs, parts.channels, *parts.kernel_shape)
    bias = coefficients[-1].copy() if parts.bias else None
    return Solution(weights, bias, condition, rank, unknowns, rmse, r2, method)


def _cholesky(matrix: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, float, int, str] | None:
    try:
        factor, lower = scipy.linalg.cho_factor(matrix, check_finite=False)
    except np.linalg.LinAlgError:  # not positive definite
        return None
    rcond, info = lapack.dpocon(factor, np.linalg.norm(matrix, 1), uplo="L" if lower else "U")
    if info != 0 or rcond * MAX_CHOLESKY_CONDITION < 1:
        return None
    solution = scipy.linalg.cho_solve((factor, lower), rhs, check_finite=False)
    return solution, 1.0 / rcond, matrix.shape[0], "cholesky"


def _eigen(matrix: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, float, int, str]:
    values, vectors = scipy.linalg.eigh(matrix, check_finite=False)
    largest = values[-1]
    kept = values > max(largest, 0.0) * matrix.shape[0] * np.finfo(np.float64).eps
    basis = vectors[:, kept]
    solution = basis @ ((basis.T @ rhs) / values[kept][:, None])
    condition = float(largest / values[0]) if values[0] > 0 else float("inf")
    return solution, condition, int(np.count_nonzero(kept)), "eigh"


def _fit_quality(parts: NormalParts, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """RMSE and R² per output from the parts: no second pass over the pixels."""
    if parts.count == 0:
        undefined = np.full(parts.outputs, np.nan)
        return undefined, undefined.copy()
    explained = np.einsum("pk,pk->k", coefficients, parts.cross)
    modelled = np.einsum("pk,pq,qk->k", coefficients, parts.gram, coefficients)
    residual = np.maximum(parts.y_sq - 2 * explained + modelled, 0.0)
    total = parts.y_sq - parts.y_sum**2 / parts.count
    rmse = np.sqrt(residual / parts.count)
    # A spread below the rounding of Σ y² is a constant target: R² is undefined, not huge.
    spread = total > VARIANCE_TOLERANCE * parts.y_sq
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(spread, 1.0 - residual / total, np.nan)
    return rmse, r2
